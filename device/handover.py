"""Hand-over: the device's ``localhost:5000`` keeps answering while the model version switches.

Without it a switch is a gap in service: the old pod is stopped, then the new one starts,
loads its model and passes its self-test, and for that second every request to
``localhost:5000`` is refused (measured: 9,325 of 68,030 back-to-back requests failed
over 6 switches, 0.8-1.0 s each). With it, as balena's ``hand-over`` update strategy:

1. the new version starts BESIDE the old one, on a port of its own (the pod template's
   ``port`` variable: the version's hostPort on 127.0.0.1);
2. the agent's health gate waits until it passes its self-test (readiness probe);
3. :meth:`HandoverProxy.switch` points new connections at it, atomically; connections
   already open stay with the old version until they finish;
4. the old version is stopped once its connections are drained (:meth:`drained`).

A rollback is the same hand-over in reverse: the previous version keeps serving until the
new one is ready, and if it never becomes ready the proxy never switched at all.

Why a device-local TCP proxy (in the sync agent's process) rather than the alternatives:
an iptables/nftables redirect needs NET_ADMIN in the sync pod and differs between
kernels and firewalls on customer devices; handing the listening socket to the next
server (SCM_RIGHTS, like nginx's binary upgrade) needs the model server and every
third-party workload to speak that protocol; SO_REUSEPORT drops the connections queued
on a listener that closes. A proxy needs nothing from the workloads, works with the
kubelet and with podman, and costs one loopback hop per connection (~0.25 ms of CPU per
connection on this 2-core host, see bench/bench_handover.py). It forwards bytes only
(TCP), so it works for any protocol and never parses a request. The loop is plain
epoll (selectors), not asyncio: a third less CPU per connection, measured.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from device.health import Probe, check_probe, probes_for
from device.runtime import PlayingRuntime, PodStatus
from edgefleet.core import layout
from edgefleet.core.errors import EdgefleetError, one_line
from edgefleet.core.fsutil import atomic_write
from edgefleet.core.logs import fields

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # bytes read at once; a side is not read again until they are written
READS_PER_EVENT = 16


@dataclass
class BackendStats:
    open: int = 0
    served: int = 0
    failed: int = 0  # connections the backend refused (the client's connection is closed)


@dataclass
class _State:
    backend: int | None = None
    stats: dict[int, BackendStats] = field(default_factory=dict)

    def of(self, port: int) -> BackendStats:
        return self.stats.setdefault(port, BackendStats())


class _Pipe:
    """One direction of a relayed connection: bytes read from ``src`` not yet written to
    ``dst`` (bounded: reading stops while it is full)."""

    __slots__ = ("dst", "eof", "pending", "src")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.pending = b""
        self.eof = False


class _Conn:
    """A client connection and its connection to the backend it was accepted for."""

    __slots__ = ("client", "connected", "down", "port", "up", "upstream")

    def __init__(self, client: socket.socket, upstream: socket.socket, port: int) -> None:
        self.client = client
        self.upstream = upstream
        self.port = port
        self.connected = False
        self.up = _Pipe(client, upstream)  # client -> backend
        self.down = _Pipe(upstream, client)  # backend -> client


class HandoverProxy:
    """Listens on ``127.0.0.1:listen_port``; forwards each connection to the backend port
    current when it was accepted. One thread, one epoll loop (no per-connection tasks or
    threads: on a small board a connection costs a few syscalls, not an event-loop
    round of futures)."""

    def __init__(self, listen_port: int, *, host: str = "127.0.0.1") -> None:
        self.listen_port = listen_port
        self.host = host
        self._state = _State()
        self._lock = threading.Lock()
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = -1, -1

    # -- lifecycle --------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._thread is not None

    def start(self) -> HandoverProxy:
        """Listen (idempotent); raises OSError naming the port when it is taken."""
        if self._thread is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.listen_port))
            listener.listen(1024)
        except OSError as exc:
            listener.close()
            raise OSError(
                f"hand-over proxy cannot listen on {self.host}:{self.listen_port}: {exc}"
            ) from exc
        listener.setblocking(False)
        self._listener = listener
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._stop_r, self._stop_w = os.pipe()
        self._selector.register(self._stop_r, selectors.EVENT_READ, "stop")
        self._thread = threading.Thread(target=self._loop, name="handover-proxy", daemon=True)
        self._thread.start()
        log.info("hand-over proxy listening", extra=fields(port=self.listen_port))
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=10)
        self._thread = None
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)

    def __enter__(self) -> HandoverProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- hand-over ----------------------------------------------------------------------

    @property
    def backend(self) -> int | None:
        return self._state.backend

    def switch(self, port: int | None) -> int | None:
        """Send new connections to ``127.0.0.1:port`` (None: refuse them); returns the
        previous backend, whose open connections carry on until they end."""
        with self._lock:
            previous, self._state.backend = self._state.backend, port
        if previous != port:
            log.info("hand-over", extra=fields(port=self.listen_port, old=previous, new=port))
        return previous

    def open_connections(self, port: int) -> int:
        return self._state.of(port).open

    def stats(self, port: int) -> BackendStats:
        return self._state.of(port)

    def drained(
        self,
        port: int,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> bool:
        """Wait until no connection to ``port`` is open (True) or ``timeout`` (False)."""
        deadline = clock() + timeout
        while self.open_connections(port) > 0:
            if clock() >= deadline:
                return False
            sleep(0.01)
        return True

    # -- the loop (proxy thread only) ----------------------------------------------------

    def _loop(self) -> None:
        sel = self._selector
        assert sel is not None and self._listener is not None
        conns: set[_Conn] = set()
        try:
            while True:
                for key, events in sel.select():
                    if key.data == "stop":
                        return
                    if key.data is None:
                        self._accept(conns)
                    else:
                        self._event(key.fileobj, key.data, events, conns)  # type: ignore[arg-type]
        finally:
            for conn in list(conns):
                self._close(conn, conns)
            sel.close()
            self._listener.close()

    def _accept(self, conns: set[_Conn]) -> None:
        assert self._listener is not None and self._selector is not None
        for _ in range(64):
            try:
                client, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: the client is refused, the loop carries on
            port = self._state.backend
            if port is None:
                client.close()  # nothing to serve: refused, as a closed port would be
                continue
            client.setblocking(False)
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setblocking(False)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client, upstream, port)
            self._state.of(port).open += 1
            conns.add(conn)
            err = upstream.connect_ex(("127.0.0.1", port))
            if err in (0, errno.EINPROGRESS):
                conn.connected = err == 0
                self._selector.register(client, selectors.EVENT_READ, conn)
                mask = selectors.EVENT_READ if conn.connected else selectors.EVENT_WRITE
                self._selector.register(upstream, mask, conn)
            else:
                self._state.of(port).failed += 1
                self._close(conn, conns)

    def _event(self, sock: socket.socket, conn: _Conn, events: int, conns: set[_Conn]) -> None:
        if sock is conn.upstream and not conn.connected:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                self._state.of(conn.port).failed += 1
                self._close(conn, conns)
                return
            conn.connected = True
        elif events & selectors.EVENT_READ:
            pipe = conn.up if sock is conn.client else conn.down
            for _ in range(READS_PER_EVENT):  # a large body: read-write without a select
                if pipe.pending or pipe.eof:
                    break
                try:
                    data = sock.recv(CHUNK)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    self._close(conn, conns)
                    return
                if data == b"":
                    pipe.eof = True
                    break
                pipe.pending = data
                if not self._flush(pipe, conn, conns):
                    return
                if len(data) < CHUNK:
                    break
        if not (self._flush(conn.up, conn, conns) and self._flush(conn.down, conn, conns)):
            return
        # The server is done (it never half-closes and keeps reading in HTTP): close both
        # once everything it sent reached the client. A client may half-close and wait.
        if conn.down.eof and not conn.down.pending:
            self._close(conn, conns)
            return
        self._update(conn)

    def _flush(self, pipe: _Pipe, conn: _Conn, conns: set[_Conn]) -> bool:
        """Write what ``pipe`` holds; False when the connection was closed."""
        if pipe is conn.up and not conn.connected:
            return True
        if pipe.pending:
            try:
                sent = pipe.dst.send(pipe.pending)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn, conns)
                return False
            pipe.pending = pipe.pending[sent:]
        if pipe.eof and not pipe.pending and pipe is conn.up:
            with contextlib.suppress(OSError):
                pipe.dst.shutdown(socket.SHUT_WR)
        return True

    def _update(self, conn: _Conn) -> None:
        """Read from a side only when its pipe is empty; write to a side while it holds
        bytes for it."""
        assert self._selector is not None
        for sock, inbound, outbound in (
            (conn.client, conn.up, conn.down),
            (conn.upstream, conn.down, conn.up),
        ):
            mask = 0
            if not inbound.pending and not inbound.eof:
                mask |= selectors.EVENT_READ
            if outbound.pending and (sock is conn.client or conn.connected):
                mask |= selectors.EVENT_WRITE
            if sock is conn.upstream and not conn.connected:
                mask = selectors.EVENT_WRITE
            try:
                if mask:
                    self._selector.modify(sock, mask, conn)
                else:
                    self._selector.unregister(sock)
            except KeyError:
                if mask:
                    self._selector.register(sock, mask, conn)
            except (ValueError, OSError):
                pass

    def _close(self, conn: _Conn, conns: set[_Conn]) -> None:
        if conn not in conns:
            return
        conns.discard(conn)
        assert self._selector is not None
        for sock in (conn.client, conn.upstream):
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(sock)
            sock.close()
        stats = self._state.of(conn.port)
        stats.open -= 1
        stats.served += 1


# -- the runtime side: two slots per handed-over pod ------------------------------------

SLOT_BASE = 20000
SLOTS = ("a", "b")
SLOTS_FILE = "slots.json"
PROBE_INTERVAL = 0.05  # s between readiness probes of a starting version
PODS_INTERVAL = 0.5  # s between runtime listings while a version without probes starts


def slot_port(served: int, slot: str) -> int:
    """The loopback port slot ``slot`` of a pod serving ``served`` listens on: 20000-29999,
    below Linux's ephemeral range (32768-60999), so no outgoing connection's local port
    can hold it when a slot starts (5000 -> 20000 and 20001)."""
    return SLOT_BASE + 2 * (served % 5000) + SLOTS.index(slot)


def served_ports(pod: Mapping[str, Any], handed: Collection[int]) -> list[int]:
    """The loopback hostPorts of ``pod`` that are handed over (in ``handed``)."""
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        return []  # the server binds the port itself: it cannot run twice (see docs)
    out = []
    for c in spec.get("containers") or []:
        for p in c.get("ports") or []:
            host_port = p.get("hostPort")
            if host_port in handed and p.get("hostIP", "127.0.0.1") in ("127.0.0.1", "localhost"):
                out.append(int(host_port))
    return out


def in_slot(
    pod: Mapping[str, Any], name: str, slot: str, handed: Collection[int]
) -> dict[str, Any]:
    """``pod`` as it runs in ``slot``: named ``NAME-SLOT``, its served hostPorts moved to the
    slot's ports. The container and everything else is unchanged."""
    out = copy.deepcopy(dict(pod))
    out.setdefault("metadata", {})["name"] = slot_pod_name(name, slot)
    for c in (out.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("hostPort") in handed:
                p["hostPort"] = slot_port(int(p["hostPort"]), slot)
    return out


def slot_pod_name(name: str, slot: str) -> str:
    return f"{name[: 63 - len(slot) - 1]}-{slot}"


@dataclass
class Slot:
    slot: str
    sha256: str  # of the manifest text the slot runs


class HandoverRuntime:
    """Wraps a runtime (podman) so that pods serving a handed-over loopback port are
    switched by hand-over (module doc) instead of stop-then-start.

    The inner runtime plays a folder this wrapper writes (``STATE_DIR/runtime/handover/
    pods``): the other pods unchanged, each handed-over pod as ``NAME-a`` or ``NAME-b``
    on its slot's ports. :meth:`reconcile` returns once the new version serves through
    the proxy (or raises, leaving the old one serving), so the agent's health gate, which
    probes the served port, judges what clients now reach. Which slot is live survives a
    restart (``slots.json``)."""

    def __init__(
        self,
        inner: PlayingRuntime,
        proxies: Mapping[int, HandoverProxy],
        state_dir: Path,
        *,
        ready_timeout: float = 120.0,
        drain_timeout: float = 10.0,
        probe: Callable[[Probe], bool] = check_probe,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "runtime")
        self.proxies = dict(proxies)
        self.dir = state_dir / "runtime" / "handover"
        self.play_dir = self.dir / "pods"
        self.ready_timeout = ready_timeout
        self.drain_timeout = drain_timeout
        self.probe = probe
        self.clock = clock
        self.sleep = sleep
        self.slots: dict[str, Slot] = self._load_slots()
        for name, slot in self.slots.items():
            self._route(name, slot.slot, self._served_of_played(name, slot.slot))

    # -- Runtime protocol -----------------------------------------------------------

    def prefetch(self, pods: Mapping[str, Mapping[str, Any]]) -> None:
        self.inner.prefetch(pods)

    def reconcile(self, folder: Path) -> list[str]:
        desired = _manifests(folder)
        handed = {n: t for n, t in desired.items() if served_ports(_yaml(t), self.proxies)}
        play = {n: t for n, t in desired.items() if n not in handed}
        for name, slot in self.slots.items():
            if name in handed:
                play[slot_pod_name(name, slot.slot)] = self._played(name, slot.slot)
        started: list[str] = []
        for name, text in sorted(handed.items()):
            live = self.slots.get(name)
            if live is not None and live.sha256 == _sha(text):
                continue
            started += self._hand_over(name, text, live, play)
            started.append(name)
        self._release([n for n in self.slots if n not in handed])
        self._write_play(play)
        # After a switch nothing waits for this pass (the new version already serves):
        # its `podman ps` and the old slot's removal yield the CPU to what still starts.
        started += self.inner.reconcile(self.play_dir, background=bool(started))
        self._save_slots()
        return sorted(set(_base_name(n, self.slots) for n in started))

    def _release(self, names: list[str]) -> None:
        """Pods no longer handed over (removed, or now binding the port themselves):
        their ports are given up before the inner runtime plays what replaces them."""
        for name in names:
            for port in self._served_of(name):
                self.proxies[port].switch(None)
                if not any(port in self._served_of(n) for n in self.slots if n not in names):
                    self.proxies[port].stop()
            del self.slots[name]

    def pods(self) -> dict[str, PodStatus] | None:
        """What runs, by base name. Asked by the health gate and the status, after any
        switch is done, so at low CPU priority (:meth:`_running` is on the path)."""
        pods = self.inner.pods(background=True)
        if pods is None:
            return None
        live = {slot_pod_name(n, s.slot): n for n, s in self.slots.items()}
        out = {}
        for name, status in pods.items():
            if name in live:
                out[live[name]] = replace(status, name=live[name])
            elif not any(name == slot_pod_name(n, s) for n in self.slots for s in SLOTS):
                out[name] = status
        return out

    # -- one hand-over -----------------------------------------------------------------

    def _hand_over(
        self, name: str, text: str, live: Slot | None, play: dict[str, str]
    ) -> list[str]:
        """Start ``text`` in the free slot, wait until ready, switch, drain the old one;
        returns what the inner runtime started on the way. A switch starts only the new
        slot's pod (the rest of the set is reconciled after it). Raises, keeping the old
        one serving, when the new one never gets ready."""
        slot = SLOTS[1] if live is not None and live.slot == SLOTS[0] else SLOTS[0]
        pod = in_slot(_yaml(text), name, slot, self.proxies)
        new_name = slot_pod_name(name, slot)
        play[new_name] = yaml.safe_dump(pod, sort_keys=False)
        self._write_play(play)
        log.info(
            "hand-over: starting the new version beside the old", extra=fields(pod=name, slot=slot)
        )
        started: list[str] = []
        try:
            if live is None:
                # The pod's first hand-over: what ran under its name (a pod binding the
                # port itself, say) must go before the proxy can listen, so the whole
                # folder is reconciled. Later switches start only the new slot's pod.
                started = self.inner.reconcile(self.play_dir)
            else:
                self.inner.play(new_name, play[new_name])
            ready = self._wait_ready(new_name, pod)
        except Exception:
            self._undo(play, new_name)
            raise
        if not ready:
            why = self._not_ready_because(new_name, pod)
            self._undo(play, new_name)
            raise HandoverFailed(
                f"{name}: the new version was not ready on slot {slot} within "
                f"{self.ready_timeout:g} s ({why}); the running version kept serving"
            )
        old_ports = self._served_of(name) if live is not None else []
        served = served_ports(_yaml(text), self.proxies)
        self._route(name, slot, served)
        self.slots[name] = Slot(slot, _sha(text))
        self._save_slots()
        for port, proxy in ((p, self.proxies[p]) for p in old_ports):
            old = slot_port(port, live.slot) if live else None
            if old is not None and not proxy.drained(old, self.drain_timeout, sleep=self.sleep):
                log.warning("hand-over: old connections cut after the drain timeout",
                            extra=fields(pod=name, port=old))  # fmt: skip
        if live is not None:
            play.pop(slot_pod_name(name, live.slot), None)
        return [n for n in started if n != new_name]

    def _undo(self, play: dict[str, str], new_name: str) -> None:
        play.pop(new_name, None)
        self._write_play(play)
        with contextlib.suppress(Exception):
            self.inner.reconcile(self.play_dir)

    def _wait_ready(self, pod_name: str, pod: Mapping[str, Any]) -> bool:
        """Ready: the pod's probes pass on its slot's ports (only this slot's pod listens
        there, so an answer is the new version's) and, unless every container has a probe,
        the runtime says the pod runs. The probes (one loopback request each) are asked
        every 50 ms; the runtime (a ``podman ps``: ~0.1 s of CPU) once they pass, or every
        0.5 s for a pod without probes, so the wait leaves the CPU to the starting version."""
        probes = probes_for(pod)
        every_container = len(probes) >= len((pod.get("spec") or {}).get("containers") or [])
        deadline = self.clock() + self.ready_timeout
        next_ask = self.clock()
        while True:
            if probes:
                ready = all(self.probe(p) for p in probes) and (
                    every_container or self._running(pod_name)
                )
            elif self.clock() >= next_ask:
                ready = self._running(pod_name)
                next_ask = self.clock() + PODS_INTERVAL
            else:
                ready = False
            if ready:
                return True
            if self.clock() >= deadline:
                return False
            self.sleep(PROBE_INTERVAL)

    def _not_ready_because(self, pod_name: str, pod: Mapping[str, Any]) -> str:
        """What an operator needs to see in the status's error to tell why a new version
        never got ready: the probes that still fail and what the runtime runs of it."""
        parts = [f"failing: {p.describe()}" for p in probes_for(pod) if not self.probe(p)]
        try:
            statuses = self.inner.pods()
        except EdgefleetError as exc:
            parts.append(f"the runtime cannot say what runs: {one_line(exc, 200)}")
        else:
            if statuses is not None:  # None: the runtime has no view of its pods
                parts.append(_describe_pod(pod_name, statuses.get(pod_name)))
        return "; ".join(parts) or "probes pass now"

    def _running(self, pod_name: str) -> bool:
        statuses = self.inner.pods()
        return statuses is None or (pod_name in statuses and statuses[pod_name].running)

    def _route(self, name: str, slot: str, served: list[int]) -> None:
        """Point the served ports at ``slot``. The proxy listens from the first pod that
        is handed over: until then (a hostNetwork pod binding the port itself, say) the
        port stays free for it."""
        for port in served:
            self.proxies[port].switch(slot_port(port, slot))
            self.proxies[port].start()

    # -- bookkeeping -------------------------------------------------------------------

    def _played(self, name: str, slot: str) -> str:
        return (self.play_dir / layout.manifest_file_name(slot_pod_name(name, slot))).read_text()

    def _served_of_played(self, name: str, slot: str) -> list[int]:
        try:
            pod = _yaml(self._played(name, slot))
        except (OSError, yaml.YAMLError):
            return []
        ports = {slot_port(p, slot): p for p in self.proxies}
        return [
            ports[p["hostPort"]]
            for c in (pod.get("spec") or {}).get("containers") or []
            for p in c.get("ports") or []
            if p.get("hostPort") in ports
        ]

    def _served_of(self, name: str) -> list[int]:
        slot = self.slots.get(name)
        return self._served_of_played(name, slot.slot) if slot else []

    def _write_play(self, play: Mapping[str, str]) -> None:
        self.play_dir.mkdir(parents=True, exist_ok=True)
        wanted = {layout.manifest_file_name(n): t for n, t in play.items()}
        for path in self.play_dir.iterdir():
            if path.name not in wanted:
                path.unlink()
        for file_name, text in wanted.items():
            path = self.play_dir / file_name
            if not path.is_file() or path.read_text() != text:
                atomic_write(path, text.encode())

    def _load_slots(self) -> dict[str, Slot]:
        try:
            raw = json.loads((self.dir / SLOTS_FILE).read_text())
            return {
                n: Slot(v["slot"], v["sha256"])
                for n, v in raw.items()
                if v.get("slot") in SLOTS and isinstance(v.get("sha256"), str)
            }
        except (OSError, ValueError, AttributeError, TypeError, KeyError):
            return {}

    def _save_slots(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        doc = {n: {"slot": s.slot, "sha256": s.sha256} for n, s in self.slots.items()}
        atomic_write(self.dir / SLOTS_FILE, json.dumps(doc, sort_keys=True).encode())


class HandoverFailed(EdgefleetError):
    """The new version never became ready in its slot; the old one kept serving."""


def _manifests(folder: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if not folder.is_dir():
        return out
    for entry in folder.iterdir():
        if layout.is_manifest_file_name(entry.name):
            name = entry.name[: -len(layout.MANIFEST_SUFFIX)]
            if name != layout.SYNC_POD_NAME:
                out[name] = entry.read_text()
    return out


def _yaml(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    return doc if isinstance(doc, dict) else {}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _base_name(played: str, slots: Mapping[str, Slot]) -> str:
    for name, slot in slots.items():
        if played == slot_pod_name(name, slot.slot):
            return name
    return played


def _describe_pod(name: str, status: PodStatus | None) -> str:
    """One pod as the runtime sees it, for an error message."""
    if status is None:
        return f"pod {name} is not running at all"
    states = ", ".join(f"{c.name} {c.state}" for c in status.containers)
    running = "running" if status.running else "not running"
    return f"pod {name} {running}" + (f": {states}" if states else "")

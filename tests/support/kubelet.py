"""Stand-in for kubelet's static-pod file source and its node API ``GET /pods`` (no kubelet
can be installed here: not packaged in Debian 12, no Go module proxy).

What it reproduces, read from kubernetes/kubernetes and fsnotify:

- ``pkg/kubelet/config/file.go``: ``NewSourceFile`` trims a trailing "/" from the path;
  ``sourceFile.run`` lists the path at once, then every ``period`` (``fileCheckFrequency``)
  and consumes watch events, both in ONE loop (never concurrently). ``listConfig`` stats
  the path (following a symlink); for a directory ``extractFromDir`` globs ``[^.]*``,
  sorts, stats each entry and opens each file again THROUGH THE PATH
  (``extractFromFile``, at most ``maxConfigLength`` = 10 MiB read), then replaces the
  whole store (``replaceStore``); a file that does not parse is left out of the
  replacement (kubelet then stops that pod); an empty directory sends an empty update
  without replacing the store.
- ``pkg/kubelet/config/file_linux.go``: ``doWatch`` creates an fsnotify watcher and
  ``Add``s the path once; ``produceWatchEvent`` ignores names starting with "." and maps
  Create -> podAdd, Write/Chmod -> podModify, Remove/Rename -> podDelete;
  ``consumeWatchEvent`` re-reads the named file and ``store.Add``s it, or deletes the pod
  that file had produced (``fileKeyMapping``).
- fsnotify ``backend_inotify.go``: ``Watcher.Add`` is ``inotify_add_watch(path,
  IN_MOVED_TO|IN_MOVED_FROM|IN_CREATE|IN_ATTRIB|IN_MODIFY|IN_MOVE_SELF|IN_DELETE|
  IN_DELETE_SELF)`` without IN_DONT_FOLLOW, so a symlink is resolved once, when the watch
  is added; ``newEvent`` maps IN_CREATE/IN_MOVED_TO -> Create, IN_DELETE(_SELF) -> Remove,
  IN_MODIFY -> Write, IN_MOVE_SELF/IN_MOVED_FROM -> Rename, IN_ATTRIB -> Chmod, and names
  the event WATCHED PATH + "/" + name. A watched directory that is deleted gets
  IN_IGNORED: the watch is gone and kubelet's ``doWatch`` does not notice (no error).
- ``pkg/kubelet/config/common.go`` ``applyDefaults``: the pod is named ``NAME-NODENAME``,
  gets namespace "default", ``spec.nodeName``, a UID hashed from node, file and content,
  and the annotations ``kubernetes.io/config.source: file``, ``kubernetes.io/config.hash``.
- ``pkg/kubelet/server/server.go`` ``getPods``/``encodePods``: ``GET /pods`` answers a
  ``v1.PodList`` (``{"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items":
  [...]}``) of ``Kubelet.GetPods()`` with the static pods' status merged in
  (``kubelet_getters.go``); with ``authentication.anonymous.enabled: false`` and x509
  client authentication a request without a certificate from ``clientCAFile`` is 401.

What it does NOT do: run containers. A pod "runs" from the moment kubelet's store holds
it: it is Pending for ``start_delay`` seconds, then Running and Ready, unless one of its
images is in ``never_ready`` (then it stays waiting). ``imageID`` is the pinned image.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import http.server
import json
import os
import select
import ssl
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# inotify(7)
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
FSNOTIFY_ADD_MASK = (
    IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_ATTRIB | IN_MODIFY
    | IN_MOVE_SELF | IN_DELETE | IN_DELETE_SELF
)  # fmt: skip
_EVENT = struct.Struct("iIII")

# fsnotify.Op
CREATE, WRITE, REMOVE, RENAME, CHMOD = 1, 2, 4, 8, 16
MAX_CONFIG_LENGTH = 10 * 1 << 20
RETRY_PERIOD = 1.0  # file_linux.go retryPeriod: a missing path is watched again after it


def fsnotify_op(mask: int) -> int:
    op = 0
    if mask & (IN_CREATE | IN_MOVED_TO):
        op |= CREATE
    if mask & (IN_DELETE_SELF | IN_DELETE):
        op |= REMOVE
    if mask & IN_MODIFY:
        op |= WRITE
    if mask & (IN_MOVE_SELF | IN_MOVED_FROM):
        op |= RENAME
    if mask & IN_ATTRIB:
        op |= CHMOD
    return op


class Inotify:
    """inotify through libc (what fsnotify does through golang.org/x/sys/unix)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd
        self.paths: dict[int, str] = {}

    def add(self, path: str) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), FSNOTIFY_ADD_MASK)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.paths[wd] = path

    def events(self) -> list[tuple[str, int]]:
        """(fsnotify Event.Name, inotify mask) for what is queued now."""
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return []
        out = []
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
            offset += _EVENT.size + length
            name = raw.split(b"\0", 1)[0].decode()
            if mask & IN_IGNORED:
                self.paths.pop(wd, None)  # the watch is gone (its directory was deleted)
                continue
            base = self.paths.get(wd)
            if base is None:
                continue
            out.append((f"{base}/{name}" if name else base, mask))
        return out

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class PodRecord:
    """A pod in kubelet's store, as ``applyDefaults`` leaves it."""

    file: str
    manifest_name: str
    pod: dict[str, Any]
    sha256: str  # of the file bytes read


@dataclass
class Update:
    """One update the file source sent (a full SET of pods), and what caused it."""

    at: float
    cause: str  # "list" or "watch:add" / "watch:delete"
    pods: dict[str, str]  # manifest name -> sha256 of the file bytes read


@dataclass
class KubeletStandIn:
    path: str
    node_name: str = "edge-node-1"
    period: float = 20.0
    start_delay: float = 0.2
    never_ready: set[str] = field(default_factory=set)
    updates: list[Update] = field(default_factory=list)
    read_errors: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = self.path.rstrip("/")
        self._store: dict[str, PodRecord] = {}  # the file source's UndeltaStore
        self._pods: dict[str, PodRecord] = {}  # the last full SET it sent: what kubelet runs
        self._file_keys: dict[str, str] = {}
        self._started: dict[str, float] = {}  # uid -> when the pod (this version) started
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inotify: Inotify | None = None
        self._server: http.server.ThreadingHTTPServer | None = None

    # -- the file source -----------------------------------------------------------------

    def start(self) -> KubeletStandIn:
        self._thread = threading.Thread(target=self._run, name="kubelet-file-source", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _run(self) -> None:
        self._list_config()
        next_list = time.monotonic() + self.period
        next_watch = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if self._inotify is None and now >= next_watch:
                self._start_watch()
                next_watch = now + RETRY_PERIOD
            if now >= next_list:
                self._list_config()
                next_list = now + self.period
            timeout = max(0.0, min(next_list - now, 0.05))
            if self._inotify is None:
                self._stop.wait(timeout)
                continue
            ready, _, _ = select.select([self._inotify.fd], [], [], timeout)
            if ready:
                for name, mask in self._inotify.events():
                    self._watch_event(name, fsnotify_op(mask))
        if self._inotify is not None:
            self._inotify.close()

    def _start_watch(self) -> None:
        """doWatch: a missing path sends an empty update and is retried later."""
        if not os.path.exists(self.path):
            self._send("list", {})
            return
        watcher = Inotify()
        watcher.add(self.path)
        self._inotify = watcher

    def _list_config(self) -> None:
        if not os.path.isdir(self.path):
            self._send("list", {})
            return
        pods: list[PodRecord] = []
        for entry in sorted(str(p) for p in Path(self.path).glob("[!.]*")):
            if os.path.isfile(entry):  # os.Stat follows symlinks, like kubelet's
                record = self._extract(entry)
                if record is not None:
                    pods.append(record)
        if not pods:
            self._send("list", {})
            return
        with self._lock:
            self._store = {r.pod["metadata"]["name"]: r for r in pods}
        self._send_store("list")

    def _watch_event(self, name: str, op: int) -> None:
        if os.path.basename(name).startswith("."):
            return
        if op & CREATE:
            kind = "add"
        elif op & (WRITE | CHMOD):
            kind = "modify"
        elif op & (REMOVE | RENAME):
            kind = "delete"
        else:
            return
        if kind in ("add", "modify"):
            record = self._extract(name)
            if record is None:
                return
            with self._lock:
                self._store[record.pod["metadata"]["name"]] = record
        else:
            key = self._file_keys.pop(name, None)
            if key is None:
                return
            with self._lock:
                self._store.pop(key, None)
        self._send_store(f"watch:{kind}")

    def _extract(self, file: str) -> PodRecord | None:
        try:
            with open(file, "rb") as fh:
                data = fh.read(MAX_CONFIG_LENGTH)
            pod = yaml.safe_load(data)
            if not isinstance(pod, dict) or pod.get("kind") != "Pod":
                raise ValueError("couldn't parse as pod")
            name = str(pod["metadata"]["name"])
        except FileNotFoundError:
            return None  # extractFromDir: IsNotExist is not even logged
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
            self.read_errors.append((file, f"{type(exc).__name__}: {exc}"))
            return None
        uid = hashlib.md5(f"host:{self.node_name}file:{file}".encode() + data).hexdigest()
        meta = pod.setdefault("metadata", {})
        meta["name"] = f"{name}-{self.node_name}"
        meta.setdefault("namespace", "default")
        meta["uid"] = uid
        meta.setdefault("annotations", {}).update(
            {"kubernetes.io/config.source": "file", "kubernetes.io/config.hash": uid}
        )
        pod.setdefault("spec", {})["nodeName"] = self.node_name
        record = PodRecord(file, name, pod, hashlib.sha256(data).hexdigest())
        self._file_keys[file] = meta["name"]
        return record

    def _send_store(self, cause: str) -> None:
        """UndeltaStore: every change of the store sends the whole store as a SET."""
        with self._lock:
            records = dict(self._store)
        self._send(cause, records)

    def _send(self, cause: str, records: dict[str, PodRecord]) -> None:
        now = time.monotonic()
        with self._lock:
            self._pods = records
            for r in records.values():
                self._started.setdefault(self._uid(r), now)
        pods = {r.manifest_name: r.sha256 for r in records.values()}
        self.updates.append(Update(now, cause, pods))

    @staticmethod
    def _uid(record: PodRecord) -> str:
        return str(record.pod["metadata"]["uid"])

    # -- what tests look at --------------------------------------------------------------

    def running(self) -> dict[str, str]:
        """Manifest name -> sha256 of the file bytes of the version kubelet runs."""
        with self._lock:
            return {r.manifest_name: r.sha256 for r in self._pods.values()}

    def ready_at(self, manifest_name: str, file_sha256: str) -> float | None:
        """When that version of the pod became Ready (monotonic), or None."""
        with self._lock:
            for r in self._pods.values():
                if r.manifest_name == manifest_name and r.sha256 == file_sha256:
                    started = self._started.get(self._uid(r))
                    if started is None or self._never(r):
                        return None
                    return started + self.start_delay
        return None

    def _never(self, record: PodRecord) -> bool:
        images = {str(c.get("image")) for c in record.pod["spec"].get("containers") or []}
        return bool(images & self.never_ready)

    # -- GET /pods -----------------------------------------------------------------------

    def pod_list(self) -> dict[str, Any]:
        with self._lock:
            records = list(self._pods.values())
            started = dict(self._started)
        now = time.monotonic()
        items = [self._api_pod(r, started.get(self._uid(r)), now) for r in records]
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def _api_pod(self, record: PodRecord, started: float | None, now: float) -> dict[str, Any]:
        pod = json.loads(json.dumps(record.pod, default=str))
        up = started is not None and now - started >= self.start_delay and not self._never(record)
        containers = pod["spec"].get("containers") or []
        statuses = [
            {
                "name": c.get("name"),
                "state": {"running": {"startedAt": _rfc3339()}}
                if up
                else {
                    "waiting": {
                        "reason": "ErrImagePull" if self._never(record) else "ContainerCreating"
                    }
                },
                "lastState": {},
                "ready": up,
                "restartCount": 0,
                "image": c.get("image"),
                "imageID": c.get("image") if up else "",
                "containerID": f"containerd://{hashlib.sha256(str(c).encode()).hexdigest()}"
                if up
                else None,
                "started": up,
            }
            for c in containers
        ]
        flag = "True" if up else "False"
        pod["status"] = {
            "phase": "Running" if up else "Pending",
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": flag},
                {"type": "ContainersReady", "status": flag},
                {"type": "PodScheduled", "status": "True"},
            ],
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": _rfc3339(),
            "containerStatuses": [{k: v for k, v in s.items() if v is not None} for s in statuses],
            "qosClass": "Burstable",
        }
        return pod

    def serve(self, port: int, *, cert: Path, key: Path, client_ca: Path) -> str:
        """Serve ``GET /pods`` over TLS (``tlsCertFile``/``tlsPrivateKeyFile``) with x509
        client authentication (``clientCAFile``) and anonymous requests refused (401), as
        the provisioned KubeletConfiguration asks."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL  # kubelet: tls.RequestClientCert + authn
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                cert = self.connection.getpeercert()  # type: ignore[attr-defined]
                if not cert:
                    self._send(401, b"Unauthorized")
                elif self.path.split("?")[0] in ("/pods", "/pods/"):
                    self._send(200, json.dumps(standin.pod_list()).encode(), "application/json")
                else:
                    self._send(404, b"404 page not found")

            def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return f"https://127.0.0.1:{port}"


def versions(texts: Iterable[str]) -> set[str]:
    """sha256 of manifest files as written, to compare with :meth:`KubeletStandIn.running`."""
    return {hashlib.sha256(t.encode()).hexdigest() for t in texts}


def written(text: str) -> str:
    """The file a device writes for a manifest: its canonical JSON (see
    :func:`edgefleet.core.policy.canonical`), what kubelet then reads."""
    from edgefleet.core import policy, strict_yaml

    return policy.canonical(strict_yaml.load(text)).decode()


def _rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

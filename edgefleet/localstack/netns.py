"""Simulated devices' networks: one Linux network namespace per device.

``create_device(id)`` makes namespace ``ef-ID`` with loopback up and a veth pair to the
host (host side ``efh-ID`` = 10.213.a.b+1/30, device side ``eth0`` = +2/30, default route
via the host side), so each device has its own ``localhost:5000``.

Host services (emulators, registry) listen on 127.0.0.1 only. Each device gets a TCP
forwarder (:mod:`edgefleet.localstack.netns_forward`) that listens inside the namespace on
the same 127.0.0.1 ports and connects to the host's, so a device uses the very addresses
the host uses -- including the registry host inside digest-pinned image references. The
veth link is the device's network switch (:func:`set_online`).

Commands run inside with ``nsenter --net=/run/netns/NAME`` (``ip netns exec`` remounts
/sys and breaks podman). Teardown removes exactly what the record names.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgefleet.core.errors import InvalidInput
from edgefleet.localstack import process as proc
from edgefleet.localstack.process import ManagedProcess, MissingTool, StackError

PREFIX = "ef-"
HOST_IF_PREFIX = "efh-"
POOL = ipaddress.ip_network("10.213.0.0/16")  # private, only on this machine
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,10}$")  # efh-ID must fit IFNAMSIZ (15)
_LOCK = Path("/run/edgefleet-netns.lock")


def check_id(device_id: str) -> str:
    if not _ID_RE.match(device_id or ""):
        raise InvalidInput(
            f"device id {device_id!r}: 1-11 lowercase letters, digits or '-', "
            "starting with a letter or digit"
        )
    return device_id


def _tools() -> tuple[str, str]:
    ip, nsenter = shutil.which("ip"), shutil.which("nsenter")
    if ip is None:
        raise MissingTool("ip is missing (apt iproute2); run 'make install'")
    if nsenter is None:
        raise MissingTool("nsenter is missing (apt util-linux); run 'make install'")
    if os.geteuid() != 0:
        raise StackError("simulated devices need root (network namespaces, veth pairs)")
    return ip, nsenter


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StackError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def ns_command(name: str, argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped to run inside namespace ``name`` (nsenter, not ``ip netns exec``)."""
    _, nsenter = _tools()
    return [nsenter, f"--net=/run/netns/{name}", "--", *argv]


def run_in(name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a command inside the device namespace (kwargs go to subprocess.run)."""
    return subprocess.run(ns_command(name, argv), **kwargs)


def dnat_rules(name: str) -> list[str]:
    """The DNAT rules of namespace ``name``'s nat table (``iptables -S`` lines): where
    CNI's port mapping puts a pod's published ports. A device's rules must name only its
    running pods (a stale one shadows the next pod on that port: docs/operations.md,
    troubleshooting)."""
    iptables = shutil.which("iptables")
    if iptables is None:
        raise MissingTool("iptables is missing (apt iptables); run 'make install'")
    done = run_in(name, [iptables, "-t", "nat", "-S"], capture_output=True, text=True)
    if done.returncode != 0:
        raise StackError(f"iptables -t nat -S in {name} failed: {done.stderr.strip()}")
    return [line for line in done.stdout.splitlines() if "-j DNAT" in line]


def _used_subnets(ip: str) -> set[ipaddress.IPv4Network]:
    out = _run([ip, "-o", "-4", "addr", "show"])
    used = set()
    for match in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)", out):
        net = ipaddress.ip_interface(f"{match[1]}/{match[2]}").network
        if net.prefixlen >= POOL.prefixlen and net.subnet_of(POOL):
            used.add(ipaddress.ip_network(f"{match[1]}/30", strict=False))
    return used


def _free_subnet(ip: str) -> ipaddress.IPv4Network:
    used = _used_subnets(ip)
    for net in POOL.subnets(new_prefix=30):
        if net not in used:
            return net
    raise StackError(f"no free /30 left in {POOL} for another device")


def teardown_recorded(record: Mapping[str, Any]) -> None:
    """Remove what :func:`create_device` recorded (idempotent, ignores what is gone)."""
    for key in ("agent", "forwarder"):
        if record.get(key):
            proc.stop_recorded(record[key])
    if record.get("device_dir"):
        from edgefleet.localstack.devices import teardown_storage

        teardown_storage(record)  # the pods the device's agent started, its storage
    ip = shutil.which("ip") or "ip"
    host_if = record.get("host_if")
    if host_if and Path(f"/sys/class/net/{host_if}").exists():
        subprocess.run([ip, "link", "del", host_if], capture_output=True, check=False)
    name = record.get("name")
    if name and name.startswith(PREFIX) and Path(f"/run/netns/{name}").exists():
        subprocess.run([ip, "netns", "del", name], capture_output=True, check=False)


def _refuse_leftovers(name: str, host_if: str) -> None:
    """Refuse a device whose namespace or host link exists already. Either belongs to
    another running stack, or a run that was killed (SIGKILL: no teardown) left it
    behind; which one cannot be told from here, so nothing is removed, and the message
    says how to remove them when no other stack runs."""
    found = [
        what
        for what, path in (
            (f"network namespace {name}", Path(f"/run/netns/{name}")),
            (f"link {host_if}", Path(f"/sys/class/net/{host_if}")),
        )
        if path.exists()
    ]
    if found:
        raise StackError(
            f"{' and '.join(found)} already exist{'s' if len(found) == 1 else ''}: another "
            "local stack uses this device id, or an interrupted run left them behind. "
            f"If no other stack runs, remove them with 'ip netns del {name}; "
            f"ip link del {host_if}' and start again; otherwise pick another device id"
        )


def create_device(
    device_id: str, *, workdir: str | os.PathLike[str], forward_ports: Iterable[int] = ()
) -> dict[str, Any]:
    """Create namespace ``ef-ID`` with its veth link and forwarder; returns the record.

    Fails when the namespace already exists (it may belong to another stack).
    """
    ip, _ = _tools()
    check_id(device_id)
    name, host_if = f"{PREFIX}{device_id}", f"{HOST_IF_PREFIX}{device_id}"
    _refuse_leftovers(name, host_if)
    record: dict[str, Any] = {"id": device_id, "name": name, "host_if": None}
    _LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _run([ip, "netns", "add", name])
            subnet = _free_subnet(ip)
            host_addr, ns_addr = (f"{h}/30" for h in list(subnet.hosts())[:2])
            tmp_peer = f"efd-{device_id}"
            _run([ip, "link", "add", host_if, "type", "veth", "peer", "name", tmp_peer])
            record["host_if"] = host_if
            _run([ip, "addr", "add", host_addr, "dev", host_if])
            _run([ip, "link", "set", tmp_peer, "netns", name])
        except BaseException:
            teardown_recorded(record)
            raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        _run([ip, "link", "set", host_if, "up"])
        inside = [ip, "-n", name]
        _run([*inside, "link", "set", "lo", "up"])
        _run([*inside, "link", "set", tmp_peer, "name", "eth0"])
        _run([*inside, "addr", "add", ns_addr, "dev", "eth0"])
        _run([*inside, "link", "set", "eth0", "up"])
        _run([*inside, "route", "add", "default", "via", host_addr.split("/")[0]])
        record.update(host_addr=host_addr, ns_addr=ns_addr, ports=sorted(set(forward_ports)))
        if record["ports"]:
            ports = [a for p in record["ports"] for a in ("--port", str(p))]
            argv = [sys.executable, "-m", "edgefleet.localstack.netns_forward"]
            argv += ["--netns", name, "--link", host_if, *ports]
            fwd = ManagedProcess(f"forward-{name}", argv, workdir=workdir).start()
            record["forwarder"] = fwd.record()
            fwd.wait_ready(lambda: "ready" in fwd.log_tail(), timeout=15, what=f"{name} forwarder")
    except BaseException:
        teardown_recorded(record)
        raise
    return record


def set_online(record: Mapping[str, Any], online: bool) -> None:
    """Connect or disconnect a device (host side of its veth up/down)."""
    ip, _ = _tools()
    _run([ip, "link", "set", str(record["host_if"]), "up" if online else "down"])


def start_in_device(
    record: dict[str, Any],
    argv: Sequence[str],
    *,
    workdir: str | os.PathLike[str],
    env: Mapping[str, str],
    name: str = "agent",
) -> ManagedProcess:
    """Start a long-running process inside the device's namespace (recorded in ``record``
    under ``name`` so teardown stops it)."""
    full_env = dict(os.environ)
    full_env.update(env)
    p = ManagedProcess(
        f"{name}-{record['name']}", ns_command(record["name"], argv), workdir=workdir, env=full_env
    ).start()
    record[name] = p.record()
    return p


def start_device_agent(
    record: dict[str, Any],
    *,
    workdir: str | os.PathLike[str],
    env: Mapping[str, str],
) -> ManagedProcess:
    """Start the sync agent (``python -m sync_pod``) inside the device namespace.

    ``env`` carries the agent's configuration (BUCKET, ARCH, CHANNEL, RUNTIME=podman,
    DEVICE_ID, MANIFEST_DIR, STATE_DIR, STORAGE_EMULATOR_HOST, ALLOWED_REGISTRIES, …);
    the emulator and registry addresses are the host's, thanks to the forwarder.
    """
    env = {"DEVICE_ID": str(record["id"]), **env}
    return start_in_device(
        record, [sys.executable, "-m", "sync_pod"], workdir=workdir, env=env, name="agent"
    )

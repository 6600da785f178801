"""The health gate: after an apply, the changed pods must run the new images, ready, in time.

When the runtime says what it runs (kubelet's ``/pods``, podman's ``ps``), a pod passes
only if the runtime runs it with the images (digests) of the new manifest: a probe on a
port could be answered by the OLD pod, still serving while the new one starts. Readiness
is the runtime's own verdict when it has one (kubelet's Ready condition: it ran the pod's
readiness probes against the new pod); otherwise (podman) it is judged like kubelet
would: the container's ``readinessProbe`` (httpGet or tcpSocket), else an HTTP GET on
the first declared ``containerPort``; a pod with neither only has to be running. Probes
go to 127.0.0.1, which is the pod for hostNetwork pods; other pods are probed through a
declared ``hostPort``. A runtime that cannot answer right now (kubelet restarting) is
asked again until the deadline.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from device.runtime import PodStatus, Runtime, spec_fingerprint
from edgefleet.core import refs
from edgefleet.core.errors import EdgefleetError, InvalidReference

POLL_INTERVAL = 0.5
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Probe:
    kind: str  # "http" or "tcp"
    port: int
    path: str = "/"
    scheme: str = "HTTP"
    host: str = "127.0.0.1"

    def describe(self) -> str:
        if self.kind == "tcp":
            return f"tcp {self.host}:{self.port}"
        return f"{self.scheme.lower()}://{self.host}:{self.port}{self.path}"


def probes_for(pod: Mapping[str, Any]) -> list[Probe]:
    """The readiness checks a pod's manifest asks for (pure)."""
    spec = pod.get("spec") or {}
    host_network = bool(spec.get("hostNetwork"))
    out: list[Probe] = []
    for c in spec.get("containers") or []:
        ports = c.get("ports") or []
        named = {p.get("name"): p for p in ports if p.get("name")}
        probe = c.get("readinessProbe") or {}
        if probe.get("httpGet"):
            get = probe["httpGet"]
            port = _resolve_port(get.get("port"), named, host_network)
            if port:
                path = str(get.get("path") or "/")
                scheme = str(get.get("scheme") or "HTTP").upper()
                out.append(
                    Probe("http", port, path if path.startswith("/") else "/" + path, scheme)
                )
        elif probe.get("tcpSocket"):
            port = _resolve_port(probe["tcpSocket"].get("port"), named, host_network)
            if port:
                out.append(Probe("tcp", port))
        elif ports:
            port = _reachable_port(ports[0], host_network)
            if port:
                out.append(Probe("http", port))
    return out


def _resolve_port(value: Any, named: Mapping[Any, Any], host_network: bool) -> int | None:
    if isinstance(value, str) and not value.isdigit():
        declared = named.get(value)
        return _reachable_port(declared, host_network) if declared else None
    try:
        port = int(value)
    except (TypeError, ValueError):
        return None
    if host_network:
        return port
    for declared in named.values():
        if declared.get("containerPort") == port and declared.get("hostPort"):
            return int(declared["hostPort"])
    return None


def _reachable_port(declared: Mapping[str, Any], host_network: bool) -> int | None:
    if host_network:
        return int(declared.get("containerPort") or 0) or None
    return int(declared.get("hostPort") or 0) or None


def check_probe(probe: Probe, timeout: float = PROBE_TIMEOUT) -> bool:
    """One readiness check: HTTP 200-399, or a TCP connect."""
    try:
        if probe.kind == "tcp":
            with socket.create_connection((probe.host, probe.port), timeout=timeout):
                return True
        cls = http.client.HTTPSConnection if probe.scheme == "HTTPS" else http.client.HTTPConnection
        conn = cls(probe.host, probe.port, timeout=timeout)
        try:
            conn.request("GET", probe.path, headers={"User-Agent": "edgefleet-health"})
            status = conn.getresponse().status
        finally:
            conn.close()
        return 200 <= status < 400
    except (OSError, http.client.HTTPException):
        return False


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    detail: dict[str, str]

    def summary(self) -> str:
        bad = [f"{n}: {d}" for n, d in sorted(self.detail.items()) if d != "ready"]
        return "; ".join(bad) if bad else "all ready"


def wait_healthy(
    pods: Mapping[str, Mapping[str, Any]],
    runtime: Runtime,
    deadline: float,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    probe: Callable[[Probe], bool] = check_probe,
) -> HealthResult:
    """Wait until every pod in ``pods`` (name -> manifest) is running and ready, or until
    ``deadline`` (epoch seconds) passes."""
    pending = dict(pods)
    detail = {name: "not checked" for name in pods}
    while True:
        statuses: dict[str, PodStatus] | None = None
        unavailable = ""
        if pending:
            try:
                statuses = runtime.pods()
            except EdgefleetError as exc:
                unavailable = f"runtime not answering: {exc}"
        for name in list(pending):
            reason = unavailable or _pod_problem(name, pending[name], statuses, probe)
            if reason is None:
                detail[name] = "ready"
                del pending[name]
            else:
                detail[name] = reason
        if not pending:
            return HealthResult(True, detail)
        if clock() >= deadline:
            return HealthResult(False, detail)
        sleep(min(POLL_INTERVAL, max(0.0, deadline - clock())))


def _pod_problem(
    name: str,
    manifest: Mapping[str, Any],
    statuses: dict[str, PodStatus] | None,
    probe: Callable[[Probe], bool],
) -> str | None:
    if statuses is not None:
        status = statuses.get(name)
        if status is None:
            return "not running (no such pod)"
        if status.fingerprint and status.fingerprint != spec_fingerprint(
            manifest.get("spec") or {}
        ):
            return "runs another version of the pod (the old one, not yet replaced?)"
        other = _other_images(manifest, status)
        if other:
            return f"runs other images than the new manifest ({other}): the old pod?"
        if not status.running:
            states = ", ".join(f"{c.name}={c.state}" for c in status.containers)
            return f"not running ({states or 'no containers'})"
        if status.ready is not None:
            return None if status.ready else "not ready (the runtime's readiness probes)"
    failed = [p.describe() for p in probes_for(manifest) if not probe(p)]
    if failed:
        return "not ready: " + ", ".join(failed)
    return None


def manifest_digests(manifest: Mapping[str, Any]) -> set[str]:
    """The image digests a pod's (non-init) containers are pinned to (pure)."""
    spec = manifest.get("spec") or {}
    return {d for c in spec.get("containers") or [] if (d := _digest(str(c.get("image") or "")))}


def _other_images(manifest: Mapping[str, Any], status: PodStatus) -> str:
    """ "" when the runtime runs the manifest's digests (or reports none to compare)."""
    running = {c.image_digest or _digest(c.image) for c in status.containers}
    running.discard("")
    wanted = manifest_digests(manifest)
    if not running or not wanted or running == wanted:
        return ""
    return ", ".join(sorted(d[:19] for d in running))


def _digest(image: str) -> str:
    try:
        return refs.parse(image).digest or ""
    except InvalidReference:
        return ""

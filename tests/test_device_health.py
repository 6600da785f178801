"""Health gate: which probes a manifest asks for, and waiting on real HTTP servers."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
import yaml
from support.sync import FAKE_DIGEST, pod_yaml

from device.health import Probe, check_probe, probes_for, wait_healthy
from device.runtime import ContainerStatus, PodStatus
from edgefleet.localstack.process import free_port

IMAGE = f"127.0.0.1:5999/x/web@{FAKE_DIGEST}"


def test_probes_from_readiness_probe_or_declared_port() -> None:
    with_probe = yaml.safe_load(pod_yaml("a", IMAGE, port=8080, readiness_path="/readyz"))
    assert probes_for(with_probe) == [Probe("http", 8080, "/readyz")]
    port_only = yaml.safe_load(pod_yaml("b", IMAGE, port=8081))
    assert probes_for(port_only) == [Probe("http", 8081, "/")]
    assert probes_for(yaml.safe_load(pod_yaml("c", IMAGE))) == []
    named = yaml.safe_load(pod_yaml("d", IMAGE, port=9000))
    named["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": "http"}}
    assert probes_for(named) == [Probe("tcp", 9000)]
    # A pod on its own network is reachable only through a hostPort.
    bridged = yaml.safe_load(pod_yaml("e", IMAGE, port=80, host_network=False))
    assert probes_for(bridged) == []
    bridged["spec"]["containers"][0]["ports"][0]["hostPort"] = 18080
    assert probes_for(bridged) == [Probe("http", 18080, "/")]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


def test_check_probe_on_a_real_server(server: int) -> None:
    assert check_probe(Probe("http", server, "/ok"))
    assert not check_probe(Probe("http", server, "/not-ready"))
    assert check_probe(Probe("tcp", server))
    assert not check_probe(Probe("http", free_port(), "/ok"), timeout=0.5)


class _Runtime:
    name = "fake-state"

    def __init__(self, running: dict[str, bool] | None) -> None:
        self.running = running

    def prefetch(self, pods):  # type: ignore[no-untyped-def]
        return None

    def reconcile(self, folder):  # type: ignore[no-untyped-def]
        return []

    def pods(self):  # type: ignore[no-untyped-def]
        if self.running is None:
            return None
        return {
            n: PodStatus(n, r, (ContainerStatus("main", IMAGE, FAKE_DIGEST, "running"),))
            for n, r in self.running.items()
        }


def test_wait_healthy_needs_running_and_ready(server: int) -> None:
    import time

    ready = yaml.safe_load(pod_yaml("a", IMAGE, port=server, readiness_path="/ok"))
    unready = yaml.safe_load(pod_yaml("b", IMAGE, port=server, readiness_path="/nope"))
    soon = time.time() + 0.6
    assert wait_healthy({"a": ready}, _Runtime({"a": True}), soon).healthy
    result = wait_healthy({"a": ready, "b": unready}, _Runtime(None), time.time() + 0.6)
    assert not result.healthy and result.detail["a"] == "ready"
    assert "not ready" in result.detail["b"]
    stopped = wait_healthy({"a": ready}, _Runtime({"a": False}), time.time() + 0.6)
    assert not stopped.healthy and "not running" in stopped.detail["a"]
    missing = wait_healthy({"a": ready}, _Runtime({}), time.time() + 0.3)
    assert "no such pod" in missing.detail["a"]


class _Reports:
    """A runtime that reports the given statuses, or fails like an unreachable kubelet."""

    name = "reports"

    def __init__(self, statuses: dict[str, PodStatus] | Exception) -> None:
        self.statuses = statuses

    def pods(self):  # type: ignore[no-untyped-def]
        if isinstance(self.statuses, Exception):
            raise self.statuses
        return self.statuses


def test_a_pod_passes_only_in_its_new_version_and_by_the_runtimes_readiness(server: int) -> None:
    import time

    from device.runtime import spec_fingerprint
    from edgefleet.core.errors import EdgefleetError

    new = yaml.safe_load(pod_yaml("a", IMAGE, port=server, readiness_path="/ok", command=["v2"]))
    old = yaml.safe_load(pod_yaml("a", IMAGE, port=server, readiness_path="/ok", command=["v1"]))
    running = (ContainerStatus("main", IMAGE, FAKE_DIGEST, "running"),)

    def gate(status: PodStatus | Exception) -> str:
        reports = _Reports(status if isinstance(status, Exception) else {"a": status})
        result = wait_healthy({"a": new}, reports, time.time() + 0.3)  # type: ignore[arg-type]
        return "ready" if result.healthy else result.detail["a"]

    fp_new, fp_old = spec_fingerprint(new["spec"]), spec_fingerprint(old["spec"])
    assert fp_new != fp_old
    # The old version, Ready, answering the same port: not the new pod.
    assert "another version" in gate(PodStatus("a", True, running, True, fp_old))
    other = (ContainerStatus("main", IMAGE, "sha256:" + "cd" * 32, "running"),)
    assert "other images" in gate(PodStatus("a", True, other, True, fp_new))
    # The runtime's readiness verdict wins over a port probe (the port is answered here).
    assert gate(PodStatus("a", True, running, True, fp_new)) == "ready"
    assert "not ready" in gate(PodStatus("a", True, running, False, fp_new))
    # No verdict (podman): the probe decides.
    assert gate(PodStatus("a", True, running, None, "")) == "ready"
    assert "runtime not answering" in gate(EdgefleetError("kubelet down"))

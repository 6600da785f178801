"""Hand-over (device.handover): the served port keeps answering while versions switch.

The proxy is driven with real TCP servers; the runtime with the real model server per
version, played by the process stand-in (tests/support/process_runtime.py).
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.process_runtime import BackToBack, ProcessRuntime, model_server_pod

from device.handover import (
    HandoverFailed,
    HandoverProxy,
    HandoverRuntime,
    in_slot,
    served_ports,
    slot_port,
)
from edgefleet.localstack.process import free_port

DIGESTS = {1: "sha256:" + "1" * 64, 2: "sha256:" + "2" * 64}


class _Named(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(1.0)
        body = self.server.label.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def backend(label: str) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Named)
    server.label = label  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def get(port: int, path: str = "/") -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_proxy_switch_moves_new_connections_and_lets_open_ones_finish() -> None:
    old, new = backend("old"), backend("new")
    with HandoverProxy(free_port()) as proxy:
        with pytest.raises(OSError):  # no backend yet: refused like a closed port
            get(proxy.listen_port)
        proxy.switch(old.server_port)
        assert get(proxy.listen_port) == "old"
        # Let the proxy close that first connection, so the count below is the slow one's.
        proxy.drained(old.server_port, 5)
        slow: list[str] = []
        t = threading.Thread(target=lambda: slow.append(get(proxy.listen_port, "/slow")))
        t.start()
        deadline = time.monotonic() + 5
        while proxy.open_connections(old.server_port) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.switch(new.server_port) == old.server_port
        assert get(proxy.listen_port) == "new"
        assert not proxy.drained(old.server_port, 0.05)  # the slow request is still open
        assert proxy.drained(old.server_port, 5)
        t.join()
        assert slow == ["old"]
        assert proxy.stats(old.server_port).served == 2
    for s in (old, new):
        s.shutdown()


def test_proxy_refuses_a_port_in_use_with_a_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="hand-over proxy cannot listen"):
            HandoverProxy(port).start()


def pod(version: int, port: int, **kwargs: Any) -> dict[str, Any]:
    return model_server_pod(DIGESTS[version], port, **kwargs)


def test_slot_rewrite_renames_and_moves_only_the_served_port() -> None:
    p = pod(1, 5000)
    assert served_ports(p, {5000}) == [5000]
    assert served_ports(p, {6000}) == []
    assert served_ports(pod(1, 5000, host_network=True), {5000}) == []
    slotted = in_slot(p, "model-server", "b", {5000})
    assert slotted["metadata"]["name"] == "model-server-b"
    assert slotted["spec"]["containers"][0]["ports"][0]["hostPort"] == slot_port(5000, "b")
    assert slot_port(5000, "a") != slot_port(5000, "b")
    assert p["metadata"]["name"] == "model-server"  # the input is not modified


def folder(root: Path, manifest: dict) -> Path:
    d = root / f"set-{time.monotonic_ns()}"
    d.mkdir()
    (d / "model-server-pod.yaml").write_text(yaml.safe_dump(manifest))
    return d


def version_of(port: int) -> str:
    return json.loads(get(port, "/version/"))["version"]


@pytest.fixture
def device(tmp_path):  # type: ignore[no-untyped-def]
    served = free_port()
    proxy = HandoverProxy(served)  # listens once the first pod is handed over
    inner = ProcessRuntime(tmp_path / "logs")
    runtime = HandoverRuntime(inner, {served: proxy}, tmp_path / "state", ready_timeout=90)
    yield served, proxy, inner, runtime
    inner.stop_all()
    proxy.stop()


@pytest.mark.slow
def test_switch_and_rollback_drop_no_request(device, tmp_path) -> None:
    served, _proxy, inner, runtime = device
    assert runtime.reconcile(folder(tmp_path, pod(1, served))) == ["model-server"]
    assert version_of(served) == DIGESTS[1]
    assert set(runtime.pods()) == {"model-server"}
    with BackToBack(lambda: version_of(served)) as traffic:
        runtime.reconcile(folder(tmp_path, pod(2, served)))  # promote
        assert version_of(served) == DIGESTS[2]
        runtime.reconcile(folder(tmp_path, pod(1, served)))  # roll back: same hand-over
        assert version_of(served) == DIGESTS[1]
    failures, answers = traffic.failures, traffic.answers
    assert failures == []
    assert DIGESTS[2] in answers and answers[-1] == DIGESTS[1]
    assert sorted(inner.pods()) == ["model-server-" + runtime.slots["model-server"].slot]


@pytest.mark.slow
def test_a_version_that_never_gets_ready_is_never_switched_to(device, tmp_path) -> None:
    served, proxy, inner, runtime = device
    runtime.reconcile(folder(tmp_path, pod(1, served)))
    before = proxy.backend
    runtime.ready_timeout = 5
    with pytest.raises(HandoverFailed, match="kept serving") as failed:
        runtime.reconcile(folder(tmp_path, pod(2, served, ready_path="/no-such-probe")))
    # The error (the device status's lastError) says why: the probe and the pod's state.
    assert re.search(
        r"within 5 s \(failing: http://127\.0\.0\.1:\d+/no-such-probe; "
        r"pod model-server-[ab] running\)",
        str(failed.value),
    )
    assert proxy.backend == before
    assert version_of(served) == DIGESTS[1]
    assert len(inner.pods()) == 1  # the failed slot was taken down
    # A restarted agent finds the live slot again (slots.json) and routes to it.
    spare = HandoverProxy(free_port())
    try:
        again = HandoverRuntime(inner, {served: spare}, tmp_path / "state")
        assert again.slots["model-server"].slot == runtime.slots["model-server"].slot
        assert spare.listening and spare.backend == before
    finally:
        spare.stop()


@pytest.mark.slow
def test_the_port_stays_free_until_a_pod_is_handed_over(tmp_path) -> None:
    """A hostNetwork pod binds the served port itself: the proxy must not take it."""
    served = free_port()
    proxy = HandoverProxy(served)
    inner = ProcessRuntime(tmp_path / "logs")
    runtime = HandoverRuntime(inner, {served: proxy}, tmp_path / "state", ready_timeout=90)

    def serves_itself(version: int) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                assert version_of(served) == DIGESTS[version]  # the server's own socket
                return
            except OSError:
                time.sleep(0.2)
        pytest.fail("the hostNetwork server never answered on its port")

    try:
        runtime.reconcile(folder(tmp_path, pod(1, served, host_network=True)))
        assert not proxy.listening
        serves_itself(1)
        runtime.reconcile(folder(tmp_path, pod(2, served)))  # a hostPort pod: handed over
        assert proxy.listening and version_of(served) == DIGESTS[2]
        runtime.reconcile(folder(tmp_path, pod(1, served, host_network=True)))  # and back
        assert not proxy.listening and runtime.slots == {}
        serves_itself(1)
    finally:
        inner.stop_all()
        proxy.stop()


def test_handover_ports_are_validated_and_need_podman(tmp_path) -> None:
    from support.sync import agent_env

    from edgefleet.core.errors import ConfigError
    from sync_pod.config import from_env

    base = agent_env("b", tmp_path)
    assert from_env(base).handover_ports == ()
    podman = {**base, "RUNTIME": "podman"}
    assert from_env({**podman, "HANDOVER_PORTS": "5000, 5000,8080"}).handover_ports == (5000, 8080)
    with pytest.raises(ConfigError, match="RUNTIME=podman"):
        from_env({**base, "HANDOVER_PORTS": "5000"})
    with pytest.raises(ConfigError, match="not a TCP port"):
        from_env({**podman, "HANDOVER_PORTS": "70000"})

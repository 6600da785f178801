"""Hand-over with real podman: pods on a hostPort (127.0.0.1), switched without a failed
request. busybox httpd serves /www/v1 or /www/v2 from the pod's own network namespace."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.process_runtime import BackToBack
from support.sync import pod_yaml
from test_device_podman import QUICK_STOP, busybox_image, device_registry, podman_env  # noqa: F401

from device.handover import HandoverProxy, HandoverRuntime, slot_pod_name
from device.podman import PodmanRuntime
from edgefleet.localstack.process import free_port

pytestmark = [pytest.mark.podman, pytest.mark.stack, pytest.mark.slow]


def httpd_pod(image: str, served: int, page: str) -> str:
    """A bridged pod publishing its server on 127.0.0.1:served, as the template does."""
    cmd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", f"/www/{page}"]
    pod = yaml.safe_load(pod_yaml("web", image, command=cmd, port=8080, readiness_path="/",
                                  host_network=False, extra_spec=QUICK_STOP))  # fmt: skip
    port = pod["spec"]["containers"][0]["ports"][0]
    port.update(hostPort=served, hostIP="127.0.0.1")
    return yaml.safe_dump(pod, sort_keys=False)


def get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        return resp.read().decode().strip()


def test_podman_pods_switch_by_hand_over(busybox_image, device_registry, podman_env, tmp_path):  # noqa: F811
    served = free_port()
    proxy = HandoverProxy(served)
    inner = PodmanRuntime(
        tmp_path / "state", env=podman_env, insecure_registries=[device_registry.host]
    )
    runtime = HandoverRuntime(inner, {served: proxy}, tmp_path / "state", ready_timeout=120)

    def apply(page: str) -> None:
        folder = tmp_path / f"set-{time.monotonic_ns()}"
        folder.mkdir()
        (folder / "web-pod.yaml").write_text(httpd_pod(busybox_image, served, page))
        runtime.reconcile(folder)

    try:
        apply("v1")
        assert get(served) == "v1"
        assert set(runtime.pods() or {}) == {"web"}
        commands: list[str] = []  # podman sub-commands, in order (the real podman runs)
        run = inner._run

        def recorded(args: list[str], *rest: Any, **kwargs: Any) -> Any:
            commands.append(("nice " if kwargs.get("nice") else "") + " ".join(args[:2]))
            return run(args, *rest, **kwargs)

        inner._run = recorded  # type: ignore[method-assign]
        with BackToBack(lambda: get(served)) as traffic:
            apply("v2")
            assert get(served) == "v2"
            # A switch plays the new slot's pod first (no `podman ps` on the path to it);
            # what follows the switch runs at low CPU priority: the query, then the old
            # slot's stop and removal.
            assert commands == ["kube play", "nice ps -a", "nice pod stop", "nice pod rm"]
            apply("v1")  # a rollback is the same hand-over
            assert get(served) == "v1"
        failures, answers = traffic.failures, traffic.answers
        assert failures == [], failures[:3]
        assert "v2" in answers
        live = slot_pod_name("web", runtime.slots["web"].slot)
        assert set(inner.pods() or {}) == {live}
    finally:
        empty = tmp_path / "empty"
        empty.mkdir(exist_ok=True)
        runtime.reconcile(empty)
        proxy.stop()
    played = Path(tmp_path / "state" / "runtime" / "handover" / "pods")
    assert not any(played.iterdir())  # the empty set took both slots down

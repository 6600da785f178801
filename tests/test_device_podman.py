"""A podman device on the real stack: fake-gcs-server read through the device's adapter
(device.gcs_json, as `python -m sync_pod` does), docker-registry, podman kube play.

Images are Debian's busybox-static imported with podman and pushed to the local registry,
then run pinned by digest. Kept to few tests: every `kube play` costs about a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from google.api_core.retry import Retry
from podman_images import push_busybox
from support.sync import ManualClock, SetPublisher, entries, pod_yaml, wait_for

from device import gcs_json
from device.podman import PodmanRuntime, adapt_for_podman
from edgefleet.cloud import storage
from edgefleet.core import layout, policy
from edgefleet.localstack.process import free_port
from sync_pod.agent import APPLIED, BACKING_OFF, FAILED, OFFLINE, ROLLED_BACK, Agent
from sync_pod.config import from_env

# busybox as PID 1 ignores SIGTERM: without this every replace/down waits 10 s.
QUICK_STOP = {"terminationGracePeriodSeconds": 1}

pytestmark = [pytest.mark.podman, pytest.mark.stack]


def test_host_network_ports_are_dropped_for_podman() -> None:
    text = pod_yaml(
        "w", "127.0.0.1:1/x@sha256:" + "a" * 64, port=80, readiness_path="/", host_network=True
    )
    adapted = adapt_for_podman(text.encode()).decode()
    assert "containerPort" not in adapted and "readinessProbe" in adapted
    bridged = pod_yaml("w", "127.0.0.1:1/x@sha256:" + "a" * 64, port=80, host_network=False)
    assert adapt_for_podman(bridged.encode()) == bridged.encode()


@pytest.fixture(scope="module")
def device_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from edgefleet.localstack.registry import Registry

    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def podman_env(device_registry, tmp_path_factory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    from edgefleet.localstack.podman import PodmanEnv

    return {
        **os.environ,
        **PodmanEnv(tmp_path_factory.mktemp("podman"), [device_registry.host]).env(),
    }


@pytest.fixture(scope="module")
def busybox_image(device_registry, podman_env, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A busybox image with /www/v1 and /www/v2, pushed; yields the digest-pinned ref and
    removes what the agents pulled of it afterwards (the storage outlives the test)."""
    workdir = tmp_path_factory.mktemp("bbroot")
    try:
        pinned = push_busybox(
            device_registry.host, f"edgefleet/bb-{uuid.uuid4().hex[:8]}", workdir=workdir,
            env=podman_env,
        )  # fmt: skip
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield pinned
    subprocess.run(["podman", "rmi", "-f", pinned], env=podman_env, capture_output=True, timeout=60)


def _httpd(name: str, image: str, port: int, version: str) -> str:
    # The pod has its own network namespace: httpd listens on the pod's interfaces and is
    # published on the device's loopback only (hostPort + hostIP 127.0.0.1).
    cmd = ["/bin/busybox", "httpd", "-f", "-p", str(port), "-h", f"/www/{version}"]
    return pod_yaml(name, image, command=cmd, port=port, readiness_path="/", extra_spec=QUICK_STOP)


def _get(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return None


def _pods(env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(
        ["podman", "pod", "ps", "--format", "json"], env=env, capture_output=True, text=True
    )
    return {p["Name"]: p["Status"] for p in json.loads(out.stdout or "[]")}


@pytest.fixture
def names(podman_env) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    made: list[str] = []
    yield made
    for name in made:
        subprocess.run(
            ["podman", "pod", "rm", "-f", "-t", "0", "--ignore", name], env=podman_env, timeout=60
        )


def _device_bucket(name: str, env: dict[str, str], retry: float = 5.0) -> gcs_json.JsonBucket:
    return gcs_json.connect(name, timeout=2.0, retry=gcs_json.Retry(timeout=retry), env=env)


def _agent(bucket, tmp_path, registry_host, podman_env, *, clock=None, **extra) -> Agent:  # type: ignore[no-untyped-def]
    config = from_env(
        {
            "BUCKET": bucket.name,
            "ARCH": "x86_64",
            "CHANNEL": "beta",
            "DEVICE_ID": "podman-dev",
            "RUNTIME": "podman",
            "MANIFEST_DIR": str(tmp_path / "device" / "pods"),
            "STATE_DIR": str(tmp_path / "state"),
            "ALLOWED_REGISTRIES": registry_host,
            "INSECURE_REGISTRIES": registry_host,
            "HEALTH_TIMEOUT": "20",
            "STATUS_SECONDS": "3600",
            "EDGEFLEET_INSECURE_ALLOW_UNSIGNED": "1",  # unsigned sets in these tests
            **extra,
        }
    )

    runtime = PodmanRuntime(
        config.state_dir, insecure_registries=config.insecure_registries, env=podman_env
    )
    timing = {} if clock is None else {"clock": clock, "sleep": clock.sleep}
    return Agent(config, bucket, runtime, **timing)


def test_podman_device_converges_and_survives_an_outage(
    device_registry, podman_env, busybox_image, names, tmp_path, monkeypatch
) -> None:
    from edgefleet.localstack.gcs import GcsEmulator

    suffix = uuid.uuid4().hex[:6]
    a, b = f"web-a-{suffix}", f"web-b-{suffix}"
    names += [a, b]
    pa, pb = free_port(), free_port()
    emulator = GcsEmulator(tmp_path / "gcs").start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.endpoint)
        emulator.create_bucket("podman-dev")
        bucket = storage.Bucket(
            storage.make_client(), "podman-dev", timeout=2, retry=Retry(timeout=0.5)
        )
        pub = SetPublisher(bucket, "x86_64", "beta")
        device = _device_bucket("podman-dev", emulator.env(), retry=0.5)
        agent = _agent(device, tmp_path, device_registry.host, podman_env)
        agent.recover()

        pub.publish(entries({a: _httpd(a, busybox_image, pa, "v1")}))
        assert agent.poll_once() == APPLIED
        assert _get(pa) == "v1"

        # Change a, add b: both (re)played, both ready.
        pub.publish(
            entries({a: _httpd(a, busybox_image, pa, "v2"), b: _httpd(b, busybox_image, pb, "v1")})
        )
        assert agent.poll_once() == APPLIED
        assert (_get(pa), _get(pb)) == ("v2", "v1")

        # a disappears from the channel: taken down; b untouched.
        pub.publish(entries({b: _httpd(b, busybox_image, pb, "v1")}))
        assert agent.poll_once() == APPLIED
        assert a not in _pods(podman_env) and _get(pa) is None
        assert _get(pb) == "v1"
        agent.report(force=True)
        status = json.loads(bucket.read(layout.status_object("podman-dev")).data)
        [pod] = [p for p in status["pods"] if p["name"] == b]
        assert pod["running"] is True
        assert pod["containers"][0]["imageDigest"] == busybox_image.split("@")[1]
        assert status["health"] == "healthy"
    finally:
        emulator.stop()
    # Bucket gone: the pods keep running and the status says offline.
    assert agent.poll_once() == OFFLINE
    agent.report()
    local = json.loads((tmp_path / "state" / "status.json").read_text())["status"]
    assert local["offline"] is True and local["lastError"]["reason"] == "offline"
    time.sleep(1)
    assert _get(pb) == "v1" and _pods(podman_env).get(b) == "Running"


def test_unready_image_is_rolled_back(
    device_registry, podman_env, busybox_image, names, bucket, gcs, tmp_path
) -> None:
    name = f"web-{uuid.uuid4().hex[:6]}"
    names.append(name)
    port = free_port()
    pub = SetPublisher(bucket, "x86_64", "beta")
    device = _device_bucket(bucket.name, gcs.env())
    agent = _agent(device, tmp_path, device_registry.host, podman_env, HEALTH_TIMEOUT="4")
    agent.recover()
    pub.publish(entries({name: _httpd(name, busybox_image, port, "v1")}))
    assert agent.poll_once() == APPLIED
    # The new version runs but never listens: not ready before the deadline.
    never = pod_yaml(
        name,
        busybox_image,
        command=["/bin/busybox", "sleep", "3600"],
        port=port,
        readiness_path="/",
        extra_spec=QUICK_STOP,
    )
    bad = pub.publish(entries({name: never}))
    assert agent.poll_once() == ROLLED_BACK
    assert _get(port) == "v1"
    assert bad.digest() in agent.state.bad_digests
    agent.report(force=True)
    status = json.loads(bucket.read(layout.status_object("podman-dev")).data)
    assert status["lastRejection"]["reason"] == "unhealthy"
    assert status["health"] == "healthy"


class _Counting:
    """Counts calls of a real callable (the runtime's prefetch, the model check)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.calls = 0

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_image_gone_for_good_backs_off_instead_of_repulling_every_poll(
    device_registry, podman_env, bucket, gcs, tmp_path
) -> None:
    """A set whose image digest is gone from the registry: each retry is a real pull that
    fails; between retries the agent neither downloads the set, nor re-checks it, nor
    pulls; the delay doubles; a different set starts over."""
    repo = f"{device_registry.host}/edgefleet/gone-{uuid.uuid4().hex[:6]}"
    gone = lambda n: f"{repo}@sha256:{n * 64}"  # noqa: E731
    pub = SetPublisher(bucket, "x86_64", "beta")
    clock = ManualClock()
    agent = _agent(
        _device_bucket(bucket.name, gcs.env()), tmp_path, device_registry.host, podman_env,
        clock=clock, POLL_SECONDS="10",
    )  # fmt: skip
    pull = _Counting(agent.runtime.prefetch)
    check = _Counting(policy.model_errors)
    agent.runtime.prefetch = pull  # type: ignore[method-assign]
    agent.model_check = check
    agent.recover()
    first = pub.publish(entries({"web": pod_yaml("web", gone("0"))}))
    assert agent.poll_once() == FAILED
    assert agent.last_error is not None and agent.last_error["reason"] == "runtime-failed"
    assert (pull.calls, check.calls) == (1, 1)
    for failures in (1, 2, 3):
        backoff = agent.state.backoff
        assert backoff is not None and backoff.digest == first.digest()
        assert backoff.failures == failures and backoff.until - clock.now == 10 * 2 ** (
            failures - 1
        )
        mark = gcs.mark()
        clock.now = backoff.until - 1
        assert agent.poll_once() == BACKING_OFF
        assert [r.method for r in gcs.requests(mark)] == ["GET"]  # the generation only
        assert pull.calls == failures
        clock.now = backoff.until
        assert agent.poll_once() == FAILED  # retried: pulled again, not re-checked
        assert (pull.calls, check.calls) == (failures + 1, 1)
    second = pub.publish(entries({"web": pod_yaml("web", gone("1"))}))
    assert agent.poll_once() == FAILED
    assert agent.state.backoff is not None and agent.state.backoff.digest == second.digest()
    assert agent.state.backoff.failures == 1 and check.calls == 2
    assert agent.state.applied is None


def test_a_pod_taken_down_behind_the_agents_back_is_replayed(
    device_registry, podman_env, busybox_image, names, bucket, gcs, tmp_path
) -> None:
    """podman does not restart a pod someone removed or stopped; the agent looks every
    HEAL_SECONDS, replays the applied set's pods that are down (removed: web; stopped:
    api), leaves the running ones alone, and says so in its status."""
    suffix = uuid.uuid4().hex[:6]
    web, api = f"web-h-{suffix}", f"api-h-{suffix}"
    names += [web, api]
    pw, pa = free_port(), free_port()
    pub = SetPublisher(bucket, "x86_64", "beta")
    clock = ManualClock()
    agent = _agent(
        _device_bucket(bucket.name, gcs.env()), tmp_path, device_registry.host, podman_env,
        clock=clock, HEAL_SECONDS="30",
    )  # fmt: skip
    agent.recover()
    pub.publish(
        entries(
            {web: _httpd(web, busybox_image, pw, "v1"), api: _httpd(api, busybox_image, pa, "v2")}
        )
    )
    assert agent.poll_once() == APPLIED
    assert (_get(pw), _get(pa)) == ("v1", "v2")
    assert agent.heal() == []  # not due: the first look is one interval after start-up
    clock.now += 30
    assert agent.heal() == [] and agent.healer.heals == 0  # due, nothing down
    before = _container_ids(podman_env, (web, api))

    rm = ["podman", "pod", "rm", "-f", "-t", "0", web]
    stop = ["podman", "pod", "stop", "-t", "0", api]
    for argv in (rm, stop):
        subprocess.run(argv, env=podman_env, capture_output=True, timeout=60, check=True)
    assert (_get(pw), _get(pa)) == (None, None)
    clock.now += 29
    assert agent.heal() == []  # not yet due
    clock.now += 1
    assert agent.heal() == sorted([api, web])
    assert wait_for(lambda: (_get(pw), _get(pa)) == ("v1", "v2"), 30), "not replayed"

    agent.report(force=True)
    status = json.loads(bucket.read(layout.status_object("podman-dev")).data)
    assert status["health"] == "healthy"
    assert status["heal"]["heals"] == 1 and status["heal"]["last"]["pods"] == sorted([api, web])
    replayed = _container_ids(podman_env, (web, api))
    assert all(set(replayed[n]).isdisjoint(before[n]) for n in (web, api)), "not new pods"
    clock.now += 30
    assert agent.heal() == []  # both run again: nothing is replayed twice
    assert _container_ids(podman_env, (web, api)) == replayed


def _container_ids(env: dict[str, str], pods: tuple[str, ...]) -> dict[str, list[str]]:
    out = subprocess.run(
        ["podman", "ps", "-a", "--format", "json"], env=env, capture_output=True, text=True
    )
    by_pod: dict[str, list[str]] = {name: [] for name in pods}
    for c in json.loads(out.stdout or "[]"):
        if c.get("PodName") in by_pod:
            by_pod[c["PodName"]].append(c["Id"])
    return {name: sorted(ids) for name, ids in by_pod.items()}

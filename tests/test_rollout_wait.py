"""``edgefleet rollout wait`` fails fast with the device's reason, and the demo's build wait
with model_done_watcher's.

The stack test runs a real podman device (``python -m sync_pod``, RUNTIME=podman) on the
GCS emulator and the local registry, publishes a set whose image never becomes ready,
and runs the real CLI: it must exit with EXIT_REFUSED (not the timeout's code) within
one poll + the health gate's deadline (+ the rollback's own gate and fixed costs), naming
the device, the reason and the runtime's message on one line.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from podman_images import push_busybox
from support.sync import SetPublisher, entries, pod_yaml

from edgefleet.core import logs, signing
from edgefleet.localstack.process import free_port
from edgefleet.operator import fleet
from edgefleet.operator.commands.fleet import EXIT_REFUSED, EXIT_TIMEOUT

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
SET_NEW = "1" * 64
SET_OLD = "2" * 64


def _report(device: str, *, digest: str, health: str, rejections: list[dict[str, str]]) -> bytes:
    doc = {
        "deviceId": device,
        "arch": "x86_64",
        "channel": "beta",
        "health": health,
        "reportedAt": datetime.now(UTC).isoformat(),
        "pods": [{"name": "m", "containers": [{"image": f"r/m@{digest}"}]}],
        "rejections": rejections,
    }
    return json.dumps(doc).encode()


def _rejection(set_digest: str, detail: str = "m: not ready") -> dict[str, str]:
    return {
        "reason": "unhealthy",
        "detail": detail,
        "at": "2026-01-01T00:00:00Z",
        "digest": set_digest,
    }


def test_refusal_counts_only_for_the_set_that_carries_the_digest() -> None:
    rows = [
        fleet.parse_report(_report("d1", digest=DIGEST_A, health="healthy",
                                   rejections=[_rejection(SET_NEW)]), "status/d1.json"),
        fleet.parse_report(_report("d2", digest=DIGEST_A, health="healthy",
                                   rejections=[_rejection(SET_OLD)]), "status/d2.json"),
        fleet.parse_report(_report("d3", digest=DIGEST_B, health="healthy",
                                   rejections=[_rejection(SET_NEW)]), "status/d3.json"),
    ]  # fmt: skip
    refused = fleet.rollout_refusals(rows, "beta", DIGEST_B, {"x86_64": SET_NEW})
    # d1 refused the set carrying B; d2 refused an older set (it will retry the new one);
    # d3 runs B healthily, whatever it refused before.
    assert [r.device_id for r in refused] == ["d1"]
    assert refused[0].line() == f"device d1 refused set {SET_NEW[:12]} (unhealthy): m: not ready"
    assert fleet.rollout_refusals(rows, "stable", DIGEST_B, {"x86_64": SET_NEW}) == []
    assert fleet.rollout_refusals(rows, "beta", DIGEST_B, {}) == []


def test_refusal_line_is_one_bounded_line_without_control_characters() -> None:
    detail = "runtime: podman failed\n\x1b[31mError\x1b[0m: boom\r\n" + "x" * 2000
    rejections = [_rejection(SET_NEW, detail)]
    report = _report("d1", digest=DIGEST_A, health="healthy", rejections=rejections)
    row = fleet.parse_report(report, "status/d1.json")
    [refusal] = fleet.rollout_refusals([row], "beta", DIGEST_B, {"x86_64": SET_NEW})
    line = refusal.line()
    assert "\n" not in line and "\x1b" not in line and "\r" not in line
    assert "runtime: podman failed [31mError [0m: boom" in line
    assert len(line) < fleet.MAX_TEXT + 80


# -- model_done_watcher's reason for the demo ---------------------------------------------


def test_build_failure_names_model_done_watchers_reason(bucket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A TRAINER-DONE over a package without labels.txt: the real watcher (podman builder
    config) rejects it and logs why; the demo's build wait reads that reason."""
    from cloudevents.http import CloudEvent

    from edgefleet.cloud.control import ModelDoneConfig, ModelDoneWatcher
    from edgefleet.localstack.harness import build_failure

    version = f"mobilenet_1_{int(time.time())}"
    prefix = f"mobilenet/{version}/"
    bucket.write(prefix + "model.tflite", b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    bucket.write(prefix + "metadata.json", b'{"name": "mobilenet", "task": "image"}')
    bucket.write(prefix + "TRAINER-DONE", b"")
    log_path = tmp_path / "function-model_done_watcher.log"
    env = {
        **os.environ,
        "BUILDER": "podman",
        "IMAGE_REPOSITORY": "127.0.0.1:9/edgefleet",
        "PODMAN_SOCKET": f"unix://{tmp_path}/unused.sock",  # the package fails first
    }
    watcher = ModelDoneWatcher(ModelDoneConfig.from_env(env))
    event = CloudEvent(
        {"type": "google.cloud.storage.object.v1.finalized", "source": "//storage/test"},
        {"bucket": bucket.name, "name": prefix + "TRAINER-DONE"},
    )
    assert build_failure(log_path, version) is None
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    with log_path.open("w") as stream:
        logs.configure("model_done_watcher", stream=stream)
        try:
            assert watcher.handle_cloud_event(event) is None
        finally:
            root.handlers[:], level = saved
            root.setLevel(level)
    reason = build_failure(log_path, version)
    assert reason is not None, log_path.read_text()
    assert reason.startswith(f"model_done_watcher rejected {version}: ")
    assert "labels.txt" in reason
    assert build_failure(log_path, f"mobilenet_2_{int(time.time())}") is None


# -- a real device rolls back; the real CLI stops at once ---------------------------------

POLL = 1.0
HEALTH = 4.0
# Besides one poll and the health gate: the set check (~1 s child), the pull, two kube
# plays, the rollback's own gate on the restored pods and the report upload.
FIXED_COSTS = 20.0
TIMEOUT = 180.0


@pytest.fixture(scope="module")
def device_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from edgefleet.localstack.registry import Registry

    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture
def images(device_registry, tmp_path_factory) -> Iterator[tuple[dict[str, str], str, str]]:  # type: ignore[no-untyped-def]
    """The podman env, a good busybox image (serves /www/v1) and another one (a new digest)
    that the bad set runs; what the device pulled is removed afterwards."""
    from edgefleet.localstack.podman import PodmanEnv

    env = {
        **os.environ,
        **PodmanEnv(tmp_path_factory.mktemp("podman"), [device_registry.host]).env(),
    }
    repo = f"edgefleet/wait-{uuid.uuid4().hex[:8]}"
    good = push_busybox(
        device_registry.host, repo, workdir=tmp_path_factory.mktemp("good"), env=env,
        pages=("v1",),
    )  # fmt: skip
    bad = push_busybox(
        device_registry.host, repo, workdir=tmp_path_factory.mktemp("bad"), env=env,
        pages=("never",),
    )  # fmt: skip
    yield env, good, bad
    subprocess.run(["podman", "rmi", "-f", good, bad], env=env, capture_output=True, timeout=60)


def _cli(env: dict[str, str], *args: str, timeout: float) -> tuple[int, str, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "edgefleet.operator.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started


@pytest.mark.podman
@pytest.mark.stack
@pytest.mark.slow
def test_rollout_wait_stops_with_the_device_reason_when_it_rolls_back(
    bucket, device_registry, images, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env, good, bad = images
    key = signing.generate(tmp_path / "signing.pem")
    device = f"wait-{uuid.uuid4().hex[:6]}"
    name = f"web-{uuid.uuid4().hex[:6]}"
    port = free_port()
    agent_env = {
        **env,
        "BUCKET": bucket.name,
        "ARCH": "x86_64",
        "CHANNEL": "beta",
        "DEVICE_ID": device,
        "RUNTIME": "podman",
        "MANIFEST_DIR": str(tmp_path / "device" / "pods"),
        "STATE_DIR": str(tmp_path / "state"),
        "ALLOWED_REGISTRIES": device_registry.host,
        "INSECURE_REGISTRIES": device_registry.host,
        "TRUSTED_KEYS": str(tmp_path / "signing.pem.pub"),
        "POLL_SECONDS": f"{POLL:g}",
        "HEALTH_TIMEOUT": f"{HEALTH:g}",
        "STATUS_SECONDS": "3600",
    }
    pub = SetPublisher(bucket, "x86_64", "beta", signers=[key])
    # The pod has its own network: httpd listens on its interfaces, published on loopback.
    serve = ["/bin/busybox", "httpd", "-f", "-p", str(port), "-h", "/www/v1"]
    quick = {"terminationGracePeriodSeconds": 1}
    pub.publish(
        entries({name: pod_yaml(name, good, command=serve, port=port, readiness_path="/",
                                extra_spec=quick)})
    )  # fmt: skip
    log = (tmp_path / "agent.log").open("w")
    agent = subprocess.Popen(
        [sys.executable, "-m", "sync_pod"], env=agent_env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait = ["rollout", "wait", "--bucket", bucket.name, "--channel", "beta"]
        code, out, err, _ = _cli(env, *wait, "--digest", good.split("@")[1], "--timeout", "120",
                                 timeout=120)  # fmt: skip
        assert code == 0, err + (tmp_path / "agent.log").read_text()[-3000:]
        assert "complete: 1 devices" in out

        # The new image runs but never listens: not ready before the health deadline.
        never = ["/bin/busybox", "sleep", "3600"]
        pub.publish(
            entries({name: pod_yaml(name, bad, command=never, port=port, readiness_path="/",
                                    extra_spec=quick)})
        )  # fmt: skip
        code, out, err, took = _cli(
            env, *wait, "--digest", bad.split("@")[1], "--timeout", f"{TIMEOUT:g}", timeout=TIMEOUT
        )
    finally:
        agent.terminate()
        agent.wait(timeout=60)
        log.close()
        rm = ["podman", "pod", "rm", "-f", "-t", "0", "--ignore", name]
        subprocess.run(rm, env=env, capture_output=True, timeout=60)
    agent_log = (tmp_path / "agent.log").read_text()[-3000:]
    assert code == EXIT_REFUSED != EXIT_TIMEOUT, err + agent_log
    assert took < POLL + HEALTH + HEALTH + FIXED_COSTS, f"took {took:.1f} s\n{err}"
    [line] = [x for x in err.splitlines() if x.startswith("edgefleet: ")]
    assert f"device {device} refused set " in line
    assert "(unhealthy)" in line
    assert f"{name}: " in line  # the runtime's message about the pod that never got ready
    print(f"rollout wait exited {code} after {took:.1f} s: {line}")


# -- a multi-arch index: each arch waits for its own image -----------------------------------


def test_an_index_digest_waits_for_each_archs_own_image(bucket) -> None:  # type: ignore[no-untyped-def]
    """`edgefleet promote` prints the index's digest; devices report their arch's image.
    tag_monitor annotates each arch's manifest with the index it came from, so
    `rollout wait --digest INDEX` waits for every arch's own image, and a refusal of the
    set carrying it still fails fast."""
    from edgefleet.cloud import render
    from edgefleet.cloud.set_store import SetStore
    from edgefleet.core import policy, refs
    from edgefleet.operator import watch

    index = "sha256:" + "1" * 64
    images = {"x86_64": "sha256:" + "8" * 64, "aarch64": "sha256:" + "9" * 64}
    repo = refs.parse("127.0.0.1:5999/edgefleet/mobilenet")
    store = SetStore(bucket)
    templates = render.Templates([render.PackagedTemplates()])
    allow = policy.Policy(allowed_registries=("127.0.0.1:5999",))
    for arch, image in images.items():
        out = render.render_workload(
            templates, repo, "beta", arch, image, allow, source_digest=index
        )
        store.update(arch, "beta", lambda s, e=out.entry: (e,))

    def report(device: str, arch: str, digest: str, rejections: list[dict[str, str]]) -> None:
        doc = json.loads(_report(device, digest=digest, health="healthy", rejections=rejections))
        bucket.write(f"status/{device}.json", json.dumps({**doc, "arch": arch}).encode())

    report("x1", "x86_64", images["x86_64"], [])
    report("a1", "aarch64", DIGEST_A, [])
    seen = watch.look(bucket, "beta", index)
    assert (seen.progress.done, seen.progress.pending) == (("x1",), ("a1",))
    assert seen.refusals == []
    report("a1", "aarch64", images["aarch64"], [])
    assert watch.look(bucket, "beta", index).progress.complete
    # The arm64 device refuses the set that carries the index: fail fast, naming it.
    arm_set = watch.sets_carrying(bucket, "beta", ["aarch64"], index)["aarch64"]
    report("a1", "aarch64", DIGEST_A, [_rejection(arm_set.set_digest)])
    seen = watch.look(bucket, "beta", index)
    assert [r.device_id for r in seen.refusals] == ["a1"]
    # A single-arch digest still means itself.
    assert watch.look(bucket, "beta", images["x86_64"], "x86_64").progress.complete

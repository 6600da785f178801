"""End to end on the real local stack: TRAINER-DONE -> model_done_watcher builds and pushes
-> tag_monitor writes signed sets -> two simulated devices (own namespace, own podman
storage, podman runtime) converge -> promote -> /version/ changes -> roll back -> status
-> teardown leaves nothing behind. Uses the harness steps the demo tells its story with
(edgefleet.localstack.harness).

One story, in order, on one module-scoped fleet: two image builds dominate its time.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.sync import wait_for

from device.handover import slot_pod_name
from edgefleet.cloud import storage
from edgefleet.core import layout, manifest_set, refs
from edgefleet.localstack import devices as dev
from edgefleet.localstack import harness, netns
from edgefleet.localstack.arm64 import platform_digests

pytestmark = [pytest.mark.stack, pytest.mark.podman, pytest.mark.slow]

POLL = 1.0
HEAL = 3  # HEAL_SECONDS: how often a device looks for its pods gone down (default 60)


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[harness.Fleet, Path]]:
    data = harness.data_dir()  # fails loudly, naming the fix, when the data is missing
    workdir = tmp_path_factory.mktemp("e2e") / "stack"
    fleet = harness.start(
        workdir,
        devices=2,
        channels=("latest", "stable"),
        poll_seconds=POLL,
        say=lambda _m: None,
        prefix="e2e",
        device_env={"HEAL_SECONDS": str(HEAL)},
    )
    try:
        harness.ensure_base(fleet, say=lambda _m: None)
        yield fleet, data
    finally:
        harness.stop(fleet, workdir)


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _device_pods(record: dict) -> list[str]:
    paths = dev.DevicePaths(Path(record["device_dir"]))
    out = dev.run_podman(paths, ["pod", "ps", "--format", "{{.Name}}"])
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _container_ips(record: dict) -> set[str]:
    paths = dev.DevicePaths(Path(record["device_dir"]))
    ids = dev.run_podman(paths, ["ps", "-q"]).stdout.split()
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
    out = dev.run_podman(paths, ["inspect", "--format", fmt, *ids])
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_promote_converge_rollback(story: tuple[harness.Fleet, Path]) -> None:
    fleet, data = story
    image = (data / harness.IMAGE).read_bytes()
    [latest] = fleet.on("latest")
    [stable] = fleet.on("stable")

    def own(digest: str) -> str:
        """The host arch's image of an index digest: what an x86_64 device runs."""
        return platform_digests(fleet, digest).get(dev.host_arch(), digest)

    # v1 trained: the builder pushes :VERSION and :latest; only the latest device runs it.
    d1 = harness.wait_built(fleet, harness.train(fleet, 1, data=data), say=lambda _m: None)
    harness.wait_serving(fleet, [latest], d1, since=time.monotonic())
    assert harness.version_of(latest)["version"] == own(d1)
    assert harness.predict_of(latest, image)["label"].startswith("academic gown")
    assert harness.version_of(stable) is None  # nothing on stable yet: its own localhost:5000

    # The set the device applied is signed with the stack's key and pins the digest.
    deploy = storage.Bucket(storage.make_client(), fleet.stack.config.deploy_bucket)
    blob = deploy.read(layout.set_object(dev.host_arch(), "latest"))
    signed = manifest_set.decode(blob.data)
    assert signed.signatures, "the local stack signs its sets"
    assert any(own(d1) in e.yaml for e in signed.manifest_set.effective().values())

    # Each device has its own podman storage: both run a pod named after the model, in
    # the first hand-over slot (localhost:5000 is the agent's hand-over proxy).
    t = harness.promote(fleet, d1, "stable")
    harness.wait_serving(fleet, [stable], d1, since=t)
    assert _device_pods(latest) == _device_pods(stable) == [slot_pod_name("mobilenet", "a")]

    # v2: latest moves by itself (the build retags latest); stable stays on v1.
    d2 = harness.wait_built(fleet, harness.train(fleet, 2, data=data), say=lambda _m: None)
    assert d2 != d1
    harness.wait_serving(fleet, [latest], d2, since=time.monotonic())
    assert harness.predict_of(latest, image)["label"] == "military uniform"
    assert harness.version_of(stable)["version"] == own(d1)

    # Promote v2 to stable, then roll back.
    t = harness.promote(fleet, d2, "stable")
    harness.wait_serving(fleet, [stable], d2, since=t)
    assert harness.predict_of(stable, image)["label"] == "military uniform"
    t = harness.promote(fleet, d1, "stable")
    harness.wait_serving(fleet, [stable], d1, since=t)
    assert harness.version_of(stable)["model_version"].startswith("mobilenet_1_")
    assert harness.version_of(latest)["version"] == own(d2)

    # The devices' reports agree (what `edgefleet status` and `rollout wait` read).
    harness.wait_reported(fleet, "stable", d1, timeout=60)
    harness.wait_reported(fleet, "latest", d2, timeout=60)
    report = json.loads(deploy.read(layout.status_object(stable["id"])).data)
    assert report["health"] == "healthy" and report["channel"] == "stable"
    # Three switches later: the old versions were handed over and removed, one pod runs.
    assert len(_device_pods(stable)) == 1


def test_a_wiped_device_heals_itself_and_leaves_no_port_rule(
    story: tuple[harness.Fleet, Path],
) -> None:
    """Continues the story (stable runs v1). Every pod and image removed from a running
    device (``dev.wipe_device``, podman inside its namespace): within HEAL_SECONDS its
    agent sees the applied set's model pod down and replays it, pulling the whole image,
    and the device serves v1 again with no promotion; its status says so. The model pod
    publishes its hand-over slot port through CNI's port mapping, a DNAT rule in the
    device's own namespace: afterwards each rule names a live container, none is left by
    the removed pod (a stale one would shadow the replayed pod's port)."""
    fleet, _data = story
    [stable] = fleet.on("stable")
    v1 = fleet.registry().resolve(refs.parse(f"{fleet.repo}:stable"))
    assert harness.version_of(stable) is not None, "runs after test_promote_converge_rollback"
    assert any("--to-destination" in rule for rule in netns.dnat_rules(str(stable["name"])))

    t = time.monotonic()
    dev.wipe_device(stable)
    harness.wait_serving(fleet, [stable], v1, since=t, timeout=180)
    deploy = fleet.bucket(fleet.stack.config.deploy_bucket)

    def reported() -> dict:
        return json.loads(deploy.read(layout.status_object(stable["id"])).data)

    assert wait_for(lambda: (reported().get("heal") or {}).get("heals"), 60, 0.5)
    report = reported()
    assert report["heal"]["heals"] >= 1, report.get("heal")
    assert report["heal"]["last"]["pods"] == ["mobilenet"]
    rules = netns.dnat_rules(str(stable["name"]))
    targets = {r.split("--to-destination ")[1].split(":")[0] for r in rules}
    assert rules and targets <= _container_ips(stable), rules  # each names a live container


def test_teardown_removes_what_up_started(tmp_path: Path) -> None:
    """A separate small fleet (no functions): down removes agents, pods, storage, netns."""
    from edgefleet.localstack.stack import down, read_state

    stack = dev.launch(
        tmp_path / "stack", devices=1, functions=False, channels=("beta",), prefix="e2etd"
    )
    [record] = stack.devices
    name, device_dir = record["name"], Path(record["device_dir"])
    try:
        assert name in _netns()
        env = json.loads((tmp_path / "stack" / "stack.json").read_text())["devices"][0]
        assert env["channel"] == "beta" and env["agent"]["pid"]
        # A pod in the device's storage, as its agent would have played it.
        paths = dev.DevicePaths(device_dir)
        made = dev.run_podman(paths, ["pod", "create", "--infra=false", "--name", "mobilenet"])
        assert made.returncode == 0, made.stderr
        assert _device_pods(record) == ["mobilenet"]
    finally:
        stopped = down(tmp_path / "stack")
    assert f"device {name}" in stopped
    assert name not in _netns()
    assert not device_dir.exists()
    assert read_state(tmp_path / "stack") is None

"""An emulated arm64 device on the real local stack.

TRAINER-DONE -> model_done_watcher builds the model server for linux/amd64 and linux/arm64
and pushes one OCI index -> the tag moves to beta -> tag_monitor writes the ``x86_64`` and
``aarch64`` sets, each pinned to its platform's image -> an x86_64 device and an arm64
device (``ARCH=aarch64``; its podman runs the arm64 image under qemu) on beta apply their
sets -> the arm64 server answers the golden image correctly and reports the arm64 digest,
the x86_64 one reports its own.

What runs under qemu is only the arm64 model server (pull, start, golden self-test, one
/predict/); the agents are the host's Python. The test prints how long that takes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.cloud import storage
from edgefleet.core import layout, manifest_set
from edgefleet.localstack import arm64, harness
from edgefleet.localstack import devices as dev

pytestmark = [pytest.mark.stack, pytest.mark.podman, pytest.mark.slow]

POLL = 1.0
CHANNEL = "beta"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Fleet]:
    workdir = tmp_path_factory.mktemp("arm64") / "stack"
    fleet = harness.start(
        workdir,
        devices=1,
        channels=(CHANNEL,),
        poll_seconds=POLL,
        say=lambda _m: None,
        prefix="a64x",
    )
    try:
        records = dev.start_devices(
            fleet.stack,
            1,
            channels=(CHANNEL,),
            poll_seconds=POLL,
            trusted_keys=str(dev.ensure_signing_key(workdir)[1]),
            prefix="a64a",
            arch=dev.ARM64,
            board=arm64.BOARD,
        )
        fleet.devices.extend(records)
        yield fleet
    finally:
        harness.stop(fleet, workdir)


def test_arm64_device_applies_its_set_and_answers_the_golden_image(
    fleet: harness.Fleet,
) -> None:
    data = harness.data_dir()
    image = (data / harness.IMAGE).read_bytes()
    [x86] = [d for d in fleet.on(CHANNEL) if d["arch"] == "x86_64"]
    [board] = [d for d in fleet.on(CHANNEL) if d["arch"] == "aarch64"]

    t0 = time.monotonic()
    digest = harness.wait_built(fleet, harness.train(fleet, 2, data=data), say=lambda _m: None)
    built = time.monotonic() - t0
    per_arch = arm64.platform_digests(fleet, digest)
    assert set(per_arch) == {"x86_64", "aarch64"}  # one index, both platforms
    assert per_arch["x86_64"] != per_arch["aarch64"]

    moved = harness.promote(fleet, digest, CHANNEL)
    times = harness.wait_serving(fleet, [x86, board], digest, since=moved, timeout=600)

    # Each arch's signed set pins its own platform's image.
    deploy = storage.Bucket(storage.make_client(), fleet.stack.config.deploy_bucket)
    for arch in ("x86_64", "aarch64"):
        signed = manifest_set.decode(deploy.read(layout.set_object(arch, CHANNEL)).data)
        yamls = [e.yaml for e in signed.manifest_set.effective().values()]
        assert any(per_arch[arch] in y for y in yamls), arch
        other = per_arch["x86_64" if arch == "aarch64" else "aarch64"]
        assert not any(other in y for y in yamls), arch

    # The arm64 agent applied the aarch64 set: its manifest folder pins the arm64 image.
    folder = Path(board["device_dir"]) / "pods"
    applied = "".join(p.read_text() for p in folder.iterdir())
    assert per_arch["aarch64"] in applied and per_arch["x86_64"] not in applied

    assert harness.version_of(board)["version"] == per_arch["aarch64"]
    assert harness.version_of(x86)["version"] == per_arch["x86_64"]
    t1 = time.monotonic()
    answer = harness.predict_of(board, image)
    emulated_predict = time.monotonic() - t1
    assert answer is not None
    assert answer["index"] == 653 and answer["label"] == "military uniform"
    assert harness.predict_of(x86, image)["label"] == "military uniform"

    harness.wait_reported(fleet, CHANNEL, digest, timeout=120)
    status = json.loads(deploy.read(layout.status_object(board["id"])).data)
    assert status["arch"] == "aarch64"
    print(
        f"\nbuild (both arches) {built:.0f} s; tag move -> serving: x86_64 "
        f"{times[x86['id']]:.1f} s, arm64 under qemu {times[board['id']]:.1f} s; "
        f"emulated /predict/ {emulated_predict:.2f} s"
    )

"""arm64 in the local stack: which digest each arch's devices run, and the demo's emulated
"Coral Dev Board".

Every model version is one OCI index (linux/amd64 + linux/arm64). tag_monitor pins each
arch's set to that arch's image, so a device's ``/version/`` reports its platform's digest,
never the index digest a tag points at: :func:`platform_digests` maps one to the others.

:func:`coral_board_step` is the demo's arm64 piece: it adds an emulated arm64 device on a
channel (``ARCH=aarch64``: its podman runs the arm64 image under qemu), waits until it
serves the channel's version and shows that it answers the golden image from its arm64
image while the x86_64 devices of the channel report their own digest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from edgefleet.cloud import platforms
from edgefleet.core import refs
from edgefleet.localstack import devices as dev

BOARD = "Coral Dev Board"
# Emulated start: podman pulls ~40 MB, then python imports numpy/LiteRT and the golden
# self-test runs, all under qemu.
SERVE_TIMEOUT = 600.0


def platform_digests(fleet: Any, digest: str) -> dict[str, str]:
    """Device arch -> digest of its image for ``REPO@digest`` (empty: not an index, every
    arch runs ``digest`` itself)."""
    manifest = fleet.registry().get_manifest(refs.parse(f"{fleet.repo}@{digest}"))
    return platforms.index_arches(manifest.doc) if manifest.is_index else {}


def expected_digest(device: Mapping[str, Any], digests: Mapping[str, str], digest: str) -> str:
    """What ``device``'s ``/version/`` reports when it runs ``digest``."""
    return digests.get(str(device.get("arch")), digest)


def coral_board_step(
    fleet: Any,
    channel: str,
    digest: str,
    image: bytes,
    *,
    wait_serving: Callable[..., dict[str, float]],
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Add an emulated arm64 "Coral Dev Board" on ``channel`` (running ``digest``) and show
    what each device of the channel reports; returns the board's device record."""
    from edgefleet.localstack.harness import predict_of, version_of

    dev.check_emulation(dev.ARM64)
    signed = bool(fleet.stack.config.function_env.get("SIGNING_KEY"))
    poll = [float(d.get("poll_seconds", dev.DEFAULT_POLL_SECONDS)) for d in fleet.devices]
    records = dev.start_devices(
        fleet.stack,
        1,
        channels=(channel,),
        poll_seconds=poll[0] if poll else dev.DEFAULT_POLL_SECONDS,
        trusted_keys=str(dev.ensure_signing_key(fleet.stack.workdir)[1]) if signed else "",
        prefix="coral",
        arch=dev.ARM64,
        board=BOARD,
    )
    board = records[0]
    fleet.devices.append(board)
    digests = platform_digests(fleet, digest)
    say(
        f"  {board['id']} ({BOARD}, emulated arm64) in netns {board['name']} on {channel}: "
        f"pulls {digests.get(dev.ARM64, digest)[:19]}…, runs it under qemu"
    )
    started = time.monotonic()
    took = wait_serving(fleet, [board], digest, since=started, timeout=SERVE_TIMEOUT)
    say(f"  {board['id']} serves after {took[board['id']]:.0f} s (pull + start under qemu)")
    for device in fleet.on(channel):
        info = version_of(device) or {}
        t0 = time.monotonic()
        answer = predict_of(device, image) or {}
        say(
            f"  {device['id']:8} {device.get('arch', '-'):7} /version/ "
            f"{str(info.get('version', '-'))[:19]}… /predict/ {answer.get('label', '-')} "
            f"({float(answer.get('score', 0) or 0):.2f}) in {time.monotonic() - t0:.2f} s"
        )
    return board

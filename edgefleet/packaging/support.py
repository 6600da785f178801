"""Which device arches edgefleet's images are built for, and why not the others.

x86_64 and aarch64 (arm64: Raspberry Pi 4/5 on a 64-bit OS, Coral Dev Board, most gateways)
get a model-server image and a sync agent image for every build, as one OCI index. armv7l
(32-bit Raspberry Pi OS) gets none: the model server needs LiteRT (``ai-edge-litert``) or
ONNX Runtime, and the package index has no wheel of either for linux armv7l. Builds leave
it out and say why; provisioning an armv7l device is refused with the same reason and the
fix (docs/device.md, "armv7 (32-bit Raspberry Pi OS)").
"""

from __future__ import annotations

from collections.abc import Sequence

from edgefleet.core import layout
from edgefleet.core.errors import ConfigError

IMAGE_ARCHES: tuple[str, ...] = ("x86_64", "aarch64")
UNSUPPORTED: dict[str, str] = {
    "armv7l": (
        "no image for armv7l: the package index has no LiteRT (ai-edge-litert) or ONNX "
        "Runtime wheel for 32-bit ARM; install a 64-bit OS (Raspberry Pi OS 64-bit runs "
        "arm64 images on a Pi 3/4/5) and provision the device as aarch64"
    ),
}


def plan_arches(requested: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split the requested arches into (built, left out for lack of an image)."""
    for arch in requested:
        layout.check_arch(arch)
    build = tuple(a for a in requested if a in IMAGE_ARCHES)
    skipped = tuple(a for a in requested if a not in IMAGE_ARCHES)
    return build, skipped


def skipped_message(built: Sequence[str], skipped: Sequence[str]) -> str:
    reasons = "; ".join(f"{a}: {UNSUPPORTED.get(a, 'no image recipe')}" for a in skipped)
    return f"built {', '.join(built)}; left out {reasons}"


def check_device_arch(arch: str) -> str:
    """An arch a device may be provisioned for; armv7l is refused with the reason."""
    layout.check_arch(arch)
    if arch in UNSUPPORTED:
        raise ConfigError(f"--arch {arch}: {UNSUPPORTED[arch]}")
    return arch

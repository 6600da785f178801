"""The deploy bucket's layout: the one place that knows object names.

    templates/NAME.yaml.j2          Jinja2 Pod templates (uploaded by `edgefleet bootstrap`)
    ARCH/CHANNEL/NAME-pod.yaml      readable mirror of each channel's manifests
    ARCH/all/NAME-pod.yaml          readable mirror of fleet-wide manifests
    sets/ARCH/CHANNEL.json          the manifest set a device of ARCH+CHANNEL applies:
                                    every manifest's YAML inline, content hashes, sequence,
                                    expiry and signatures (see edgefleet.core.manifest_set)
    status/DEVICE_ID.json           a device's last status report
    trust/root.json                 the root document: which keys sign sets (edgefleet.core.trust)
    trusted/ARCH/CHANNEL.json       the control plane's copy of the last set it wrote: what
                                    it rebuilds from when the live set was tampered with
    rollouts/ARCH/CHANNEL.json      a progressive rollout's state (edgefleet.cloud.rollout)

Devices read only ``sets/ARCH/CHANNEL.json``: one object per poll, written atomically by
the control plane, so a device never sees half of a rollout and a bucket writer without
the signing key cannot add to what devices run. The ``ARCH/...-pod.yaml`` objects are a
human-readable mirror (kubectl, gsutil cat) and are never trusted by devices.
"""

from __future__ import annotations

import re

from edgefleet.core.errors import InvalidInput

# uname -m names, as devices report them.
ARCHES: tuple[str, ...] = ("x86_64", "aarch64", "armv7l")
DEFAULT_CHANNELS: tuple[str, ...] = ("latest", "alpha", "beta", "stable")
FLEET_WIDE = "all"
BUILD_CACHE_TAG = "buildcache"  # image builders keep their layer cache under this tag

# OCI platform (os/architecture[/variant]) -> device arch.
PLATFORM_ARCH: dict[str, str] = {
    "linux/amd64": "x86_64",
    "linux/arm64": "aarch64",
    "linux/arm64/v8": "aarch64",
    "linux/arm/v7": "armv7l",
}
# Image config `architecture` (+ variant) or `-ARCH` repository suffix -> device arch.
ARCH_ALIASES: dict[str, str] = {
    "amd64": "x86_64",
    "x86_64": "x86_64",
    "arm64": "aarch64",
    "aarch64": "aarch64",
    "arm": "armv7l",
    "armv7": "armv7l",
    "armv7l": "armv7l",
    "armhf": "armv7l",
}

SYNC_POD_NAME = "edgefleet-sync"
DEFAULT_TEMPLATE = "model-server"

_CHANNEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# A DNS-1123 label: what a Pod name and a manifest file stem may be.
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFEST_SUFFIX = "-pod.yaml"
ROLLOUTS_PREFIX = "rollouts/"


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise InvalidInput(f"unknown arch {arch!r}: use one of {', '.join(ARCHES)}")
    return arch


def check_channel(channel: str) -> str:
    if channel in (FLEET_WIDE, BUILD_CACHE_TAG) or not _CHANNEL_RE.fullmatch(channel or ""):
        raise InvalidInput(
            f"invalid channel {channel!r}: a lowercase DNS label other than "
            f"{FLEET_WIDE!r} and {BUILD_CACHE_TAG!r}"
        )
    return channel


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name or ""):
        raise InvalidInput(
            f"invalid name {name!r}: lowercase letters, digits and '-', at most 63 characters"
        )
    return name


def check_device_id(device_id: str) -> str:
    if not _DEVICE_ID_RE.fullmatch(device_id or ""):
        raise InvalidInput(
            f"invalid device id {device_id!r}: letters, digits, '.', '_' and '-', "
            "at most 128 characters"
        )
    return device_id


def manifest_file_name(name: str) -> str:
    """``model-server`` -> ``model-server-pod.yaml``: the file a kubelet reads."""
    return check_name(name) + MANIFEST_SUFFIX


def is_manifest_file_name(file_name: str) -> bool:
    """True for a safe manifest file name (no path separators, no dot-files)."""
    return file_name.endswith(MANIFEST_SUFFIX) and bool(
        _NAME_RE.fullmatch(file_name[: -len(MANIFEST_SUFFIX)])
    )


def manifest_object(arch: str, scope: str, name: str) -> str:
    """Readable mirror object of one manifest; scope is a channel or ``all``."""
    if scope != FLEET_WIDE:
        check_channel(scope)
    return f"{check_arch(arch)}/{scope}/{manifest_file_name(name)}"


def set_object(arch: str, channel: str) -> str:
    return f"sets/{check_arch(arch)}/{check_channel(channel)}.json"


def trusted_copy_object(arch: str, channel: str) -> str:
    return f"trusted/{check_arch(arch)}/{check_channel(channel)}.json"


def rollout_object(arch: str, channel: str) -> str:
    return f"{ROLLOUTS_PREFIX}{check_arch(arch)}/{check_channel(channel)}.json"


def parse_rollout_object(name: str) -> tuple[str, str] | None:
    """``rollouts/ARCH/CHANNEL.json`` -> (arch, channel); None for anything else."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] + "/" != ROLLOUTS_PREFIX or not parts[2].endswith(".json"):
        return None
    try:
        return check_arch(parts[1]), check_channel(parts[2][: -len(".json")])
    except InvalidInput:
        return None


def template_object(name: str) -> str:
    return f"templates/{check_name(name)}.yaml.j2"


def status_object(device_id: str) -> str:
    return f"status/{check_device_id(device_id)}.json"


def parse_channels(value: str | None) -> tuple[str, ...]:
    """Parse the ``CHANNELS`` setting (comma-separated); empty means the defaults."""
    if not value or not value.strip():
        return DEFAULT_CHANNELS
    channels = tuple(dict.fromkeys(c.strip() for c in value.split(",") if c.strip()))
    for channel in channels:
        check_channel(channel)
    return channels


def parse_arches(value: str | None) -> tuple[str, ...]:
    """Parse an ``ARCHES`` setting (comma-separated); empty means every known arch."""
    if not value or not value.strip():
        return ARCHES
    return tuple(dict.fromkeys(check_arch(a.strip()) for a in value.split(",") if a.strip()))


def arch_from_alias(value: str) -> str | None:
    return ARCH_ALIASES.get(value.lower())

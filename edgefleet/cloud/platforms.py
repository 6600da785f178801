"""Which image digest each device architecture runs.

A multi-arch index maps OCI platforms to digests (``linux/amd64`` -> ``x86_64`` …, see
:data:`edgefleet.core.layout.PLATFORM_ARCH`); attestation manifests and platforms no device
has are ignored. A single-platform image runs on the architecture its config names, else
on the one its repository's ``-ARCH`` suffix names (``…/model-server-aarch64``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from edgefleet.cloud.registry import Manifest
from edgefleet.core import layout, refs
from edgefleet.core.errors import InvalidInput, InvalidReference
from edgefleet.core.refs import ImageRef

ATTESTATION_REF_TYPE = "attestation-manifest"


class ManifestSource(Protocol):
    def get_manifest(self, ref: ImageRef) -> Manifest: ...
    def get_config(self, ref: ImageRef, manifest: Manifest) -> dict[str, Any]: ...


def platform_key(platform: Mapping[str, Any]) -> str:
    """``{"os": "linux", "architecture": "arm", "variant": "v7"}`` -> ``linux/arm/v7``."""
    parts = [str(platform.get("os") or ""), str(platform.get("architecture") or "")]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


def index_arches(index: Mapping[str, Any]) -> dict[str, str]:
    """Device arch -> digest for every known platform of an index (first entry wins)."""
    out: dict[str, str] = {}
    for entry in index.get("manifests") or []:
        if not isinstance(entry, Mapping) or _is_attestation(entry):
            continue
        platform = entry.get("platform")
        if not isinstance(platform, Mapping):
            continue
        arch = layout.PLATFORM_ARCH.get(platform_key(platform))
        digest = entry.get("digest")
        if arch is None or arch in out or not isinstance(digest, str):
            continue
        try:
            out[arch] = refs.check_digest(digest)
        except InvalidReference:
            continue
    return out


def config_arch(config: Mapping[str, Any]) -> str | None:
    """The device arch an image config declares, or ``None`` when it names none we run."""
    if config.get("os") not in (None, "", "linux"):
        return None
    arch = str(config.get("architecture") or "")
    variant = str(config.get("variant") or "")
    if arch == "arm":
        # Plain "arm" is ambiguous (v5/v6/v7); only v7 (or no variant given) runs on armv7l.
        return "armv7l" if variant in ("", "v7") else None
    if not arch:
        return None
    return layout.arch_from_alias(arch)


def suffix_arch(repository: str) -> str | None:
    """``team/model-server-aarch64`` -> ``aarch64``; ``None`` without an arch suffix."""
    last = repository.rsplit("/", 1)[-1]
    if "-" not in last:
        return None
    return layout.arch_from_alias(last.rsplit("-", 1)[1])


def strip_arch_suffix(repository: str) -> str:
    """The repository's last component without a trailing ``-ARCH``: the model's name."""
    last = repository.rsplit("/", 1)[-1]
    if suffix_arch(repository) is not None:
        return last.rsplit("-", 1)[0]
    return last


def single_arch(config: Mapping[str, Any] | None, repository: str) -> str:
    """The arch of a single-platform image: its config's, else the repository suffix's."""
    arch = config_arch(config) if config is not None else None
    arch = arch or suffix_arch(repository)
    if arch is None:
        declared = platform_key(config or {}) if config else "no config"
        raise InvalidInput(
            f"unknown arch for {repository} ({declared}): build it for one of "
            f"{', '.join(layout.ARCHES)} or name the repository …-ARCH"
        )
    return arch


def resolve(source: ManifestSource, ref: ImageRef) -> dict[str, str]:
    """Device arch -> digest that ``ref`` (a tag or digest) names in the registry now.

    Raises :class:`edgefleet.cloud.registry.NotFound` when the tag does not exist and
    :class:`InvalidInput` when the image runs on no device arch.
    """
    return resolve_named(source, ref)[1]


def resolve_named(source: ManifestSource, ref: ImageRef) -> tuple[str, dict[str, str]]:
    """``(digest ref names, {arch: digest})``: the first is the index's own digest for a
    multi-arch image (what ``edgefleet promote`` prints), the arch's image otherwise."""
    manifest = source.get_manifest(ref)
    if manifest.is_index:
        arches = index_arches(manifest.doc)
        if not arches:
            found = [
                platform_key(m.get("platform") or {})
                for m in manifest.doc.get("manifests") or []
                if isinstance(m, Mapping)
            ]
            raise InvalidInput(
                f"unknown arch: index {ref} has no platform a device runs "
                f"(found {', '.join(found) or 'none'}; known {', '.join(layout.PLATFORM_ARCH)})"
            )
        return manifest.digest, arches
    config = source.get_config(ref, manifest)
    return manifest.digest, {single_arch(config, ref.repository): manifest.digest}


def _is_attestation(entry: Mapping[str, Any]) -> bool:
    annotations = entry.get("annotations") or {}
    platform = entry.get("platform") or {}
    return (
        isinstance(annotations, Mapping)
        and annotations.get("vnd.docker.reference.type") == ATTESTATION_REF_TYPE
    ) or (isinstance(platform, Mapping) and platform.get("architecture") == "unknown")

"""What a device downloads to run an image: compressed bytes, read from the registry.

A device that pulls ``REPO@DIGEST`` fetches the index (multi-arch), its platform's
manifest, the config blob and every layer blob it does not hold yet; layers are stored and
sent compressed, and the manifest states each one's size. So the bytes of a first install
and of an update from another version follow from the manifests alone, exactly as a
registry would serve them (no pull, no guess).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgefleet.cloud import platforms
from edgefleet.core import refs

MB = 10**6


@dataclass(frozen=True)
class PlatformImage:
    """One arch's image of a reference: its manifest, config and layers (digest, size)."""

    arch: str
    digest: str
    manifest_bytes: int
    config_bytes: int
    layers: tuple[tuple[str, int], ...]
    index_bytes: int = 0

    def first_install(self) -> int:
        """Bytes pulled by a device that holds none of the image's layers."""
        return self.overhead() + sum(size for _, size in self.layers)

    def update_from(self, old: PlatformImage) -> int:
        """Bytes pulled by a device that holds ``old``'s layers."""
        held = {digest for digest, _ in old.layers}
        return self.overhead() + sum(size for digest, size in self.layers if digest not in held)

    def overhead(self) -> int:
        return self.index_bytes + self.manifest_bytes + self.config_bytes


def platform_images(client: Any, image: str) -> dict[str, PlatformImage]:
    """Device arch -> its image, for a pinned or tagged reference (index or single)."""
    ref = refs.parse(image)
    top = client.get_manifest(ref)
    if not top.is_index:
        config = client.get_config(ref, top)
        arch = platforms.config_arch(config) or "unknown"
        return {arch: _image(arch, top, 0)}
    out = {}
    for arch, digest in platforms.index_arches(top.doc).items():
        manifest = client.get_manifest(ref.with_digest(digest))
        out[arch] = _image(arch, manifest, len(top.raw))
    return out


def _image(arch: str, manifest: Any, index_bytes: int) -> PlatformImage:
    doc = manifest.doc
    return PlatformImage(
        arch=arch,
        digest=manifest.digest,
        manifest_bytes=len(manifest.raw),
        config_bytes=int(doc["config"]["size"]),
        layers=tuple((str(layer["digest"]), int(layer["size"])) for layer in doc["layers"]),
        index_bytes=index_bytes,
    )

"""What the agent needs from whatever runs the pods, and the kubelet adapter.

A runtime turns the applied manifest folder into running pods. The kubelet does that by
itself (it watches ``--pod-manifest-path``), so its adapter only writes files; podman
needs to be told (see :mod:`device.podman`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ContainerStatus:
    name: str
    image: str
    image_digest: str
    state: str


@dataclass(frozen=True, slots=True)
class PodStatus:
    name: str
    running: bool
    containers: tuple[ContainerStatus, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "running": self.running,
            "containers": [
                {"name": c.name, "image": c.image, "imageDigest": c.image_digest, "state": c.state}
                for c in self.containers
            ],
        }


class Runtime(Protocol):
    name: str

    def prefetch(self, pods: Mapping[str, Mapping[str, Any]]) -> None:
        """Pull what ``pods`` need before the switch, so a pull failure keeps the old set."""

    def reconcile(self, folder: Path) -> list[str]:
        """Make the running pods match ``folder``; return the pods (re)started."""

    def pods(self) -> dict[str, PodStatus] | None:
        """Running pods by name, or None when this runtime cannot tell (kubelet)."""


class KubeletRuntime:
    """Files only: the kubelet watching MANIFEST_DIR starts, replaces and stops pods."""

    name = "kubelet"

    def prefetch(self, pods: Mapping[str, Mapping[str, Any]]) -> None:
        return None

    def reconcile(self, folder: Path) -> list[str]:
        return []

    def pods(self) -> dict[str, PodStatus] | None:
        return None

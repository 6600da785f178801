"""What the agent needs from whatever runs the pods, and the kubelet adapter.

A runtime turns the applied manifest folder into running pods. The kubelet does that by
itself (it watches ``--pod-manifest-path``, see :mod:`sync_pod.folder`), so its adapter
starts nothing; it reads what kubelet runs from kubelet's own node API (``/pods``, see
:mod:`device.kubelet`), which is what the health gate judges. Podman needs to be told
what to run (see :mod:`device.podman`).
"""

from __future__ import annotations

import hashlib
import json
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
    """``ready``: the runtime's own readiness verdict (kubelet's Ready condition, which
    ran the pod's readiness probes), or None when the runtime has none (podman)."""

    name: str
    running: bool
    containers: tuple[ContainerStatus, ...] = field(default_factory=tuple)
    ready: bool | None = None
    fingerprint: str = ""  # spec_fingerprint() of the pod the runtime runs ("" unknown)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "running": self.running,
            "containers": [
                {"name": c.name, "image": c.image, "imageDigest": c.image_digest, "state": c.state}
                for c in self.containers
            ],
            **({} if self.ready is None else {"ready": self.ready}),
        }


def spec_fingerprint(spec: Mapping[str, Any]) -> str:
    """What tells two versions of a pod apart, from fields no defaulting touches: each
    container's name, image, command, args and env (pure). The health gate compares the
    manifest's with the running pod's, so an old pod still running never passes for the
    new one, even with the same images."""
    containers = [
        [c.get("name"), c.get("image"), c.get("command"), c.get("args"), c.get("env")]
        for c in (spec.get("containers") or [])
        if isinstance(c, Mapping)
    ]
    blob = json.dumps(sorted(containers, key=lambda c: str(c[0])), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Runtime(Protocol):
    name: str

    def prefetch(self, pods: Mapping[str, Mapping[str, Any]]) -> None:
        """Pull what ``pods`` need before the switch, so a pull failure keeps the old set."""

    def reconcile(self, folder: Path) -> list[str]:
        """Make the running pods match ``folder``; return the pods (re)started."""

    def pods(self) -> dict[str, PodStatus] | None:
        """Running pods by name, or None when this runtime cannot tell (kubelet)."""


class PlayingRuntime(Runtime, Protocol):
    """A runtime that can also start one pod on its own (podman): what the hand-over
    (:mod:`device.handover`) needs to start the new version beside the old one without a
    whole reconcile (whose ``podman ps`` would sit on the path to serving)."""

    def play(self, name: str, text: str) -> None:
        """Start pod ``name`` from manifest ``text`` now, replacing a pod of that name;
        a later :meth:`reconcile` of a folder holding the same text leaves it running."""

    def reconcile(self, folder: Path, *, background: bool = False) -> list[str]:
        """As :meth:`Runtime.reconcile`; ``background``: nothing waits for this pass (the
        served version already switched), so its queries and removals yield the CPU."""

    def pods(self, *, background: bool = False) -> dict[str, PodStatus] | None:
        """As :meth:`Runtime.pods`; ``background``: asked at low CPU priority."""


class KubeletRuntime:
    """The kubelet watching MANIFEST_DIR starts, replaces and stops pods; what it runs is
    read from its node API (``api``). Without ``api`` (``KUBELET_API=off``) nothing says
    what kubelet runs, and the gate can only probe ports (which an old pod may answer)."""

    name = "kubelet"

    def __init__(self, api: PodSource | None = None) -> None:
        self.api = api

    def prefetch(self, pods: Mapping[str, Mapping[str, Any]]) -> None:
        return None

    def reconcile(self, folder: Path) -> list[str]:
        return []

    def pods(self) -> dict[str, PodStatus] | None:
        return None if self.api is None else self.api.pods()


class PodSource(Protocol):
    def pods(self) -> dict[str, PodStatus]: ...

"""Stand-in for the kubelet of a simulated device in the fleet simulator (bench/bench_fleet.py).

Follows the kubelet's static-pod contract as :class:`device.runtime.KubeletRuntime`
describes it (the kubelet watches ``--pod-manifest-path``, see kubernetes
``pkg/kubelet/config/file.go``): the agent hands it a manifest folder and the kubelet runs
what is in it. No kubelet can run here, and a thousand of them could not run on one host,
so this stand-in only records what it would run: the time each folder was handed over
and the pod names in it, and reports those pods as running (so the agent's health gate
passes at once, as it does for pods without probes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from device.runtime import PodStatus
from edgefleet.core import layout


class RecordingRuntime:
    name = "recording"

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self.handed: list[tuple[float, Path, tuple[str, ...]]] = []
        self._running: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def prefetch(self, pods: Mapping[str, Mapping[str, Any]]) -> None:
        return None

    def reconcile(self, folder: Path) -> list[str]:
        names = tuple(
            sorted(
                p.name[: -len(layout.MANIFEST_SUFFIX)]
                for p in folder.iterdir()
                if layout.is_manifest_file_name(p.name)
            )
        )
        with self._lock:
            self.handed.append((self.clock(), folder, names))
            self._running = names
        return []

    def pods(self) -> dict[str, PodStatus] | None:
        with self._lock:
            return {n: PodStatus(n, True) for n in self._running}

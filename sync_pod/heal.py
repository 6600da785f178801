"""Self-healing for a runtime that does not heal by itself (podman).

kubelet keeps the pods of its manifest folder running on its own: a static pod removed or
stopped behind its back is started again by its sync loop. Podman only restarts a
container by its restart policy; a pod removed (``podman pod rm``, a prune) or stopped
(``podman pod stop``) by someone else stays down. The agent replays the applied set only
when it applies one or starts, so such a device would report ``degraded`` until the next
set or restart.

:class:`Healer` decides when the agent looks (every ``interval`` s), which pods count as
down (:func:`down_pods`), and how it backs off: each look that finds pods down doubles the
wait before the next (up to ``max_interval``), so a pod that cannot stay up is replayed a
few times an hour, not every minute; a look that finds everything running resets it.
What a heal does is the runtime's own reconcile, the same pass an apply or a start-up
runs. The core is pure (pods in, names out; a clock passed in).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from device.runtime import PodStatus

DEFAULT_INTERVAL = 60.0
MAX_INTERVAL = 900.0


def restarts_always(pod: Mapping[str, Any]) -> bool:
    """Whether the pod is meant to run forever (``restartPolicy`` Always, the default). A
    pod with OnFailure or Never may have finished on purpose: it is never replayed."""
    spec = pod.get("spec")
    policy = spec.get("restartPolicy", "Always") if isinstance(spec, Mapping) else "Always"
    return policy == "Always"


def down_pods(
    wanted: Mapping[str, Mapping[str, Any]], running: Mapping[str, PodStatus]
) -> list[str]:
    """The pods of the applied set meant to run forever that the runtime does not run
    (absent, or not every container running), sorted."""
    return sorted(
        name
        for name, pod in wanted.items()
        if restarts_always(pod) and not (name in running and running[name].running)
    )


@dataclass
class Healer:
    interval: float = DEFAULT_INTERVAL
    max_interval: float = MAX_INTERVAL
    clock: Callable[[], float] = time.time
    next_at: float | None = None
    streak: int = 0  # consecutive looks that found pods down
    heals: int = 0
    last: dict[str, Any] | None = None  # {"at": epoch s, "pods": [...]}

    def due(self) -> bool:
        now = self.clock()
        if self.next_at is None:
            self.next_at = now + self.interval  # start-up already reconciled
        return now >= self.next_at

    def looked(self, down: list[str]) -> None:
        """Record a look's finding and schedule the next one."""
        now = self.clock()
        if down:
            self.streak += 1
            self.heals += 1
            self.last = {"at": now, "pods": list(down)}
        else:
            self.streak = 0
        cap = max(self.max_interval, self.interval)
        wait = min(self.interval * 2 ** max(self.streak - 1, 0), cap)
        self.next_at = now + wait

    def status(self, iso: Callable[[float], str]) -> dict[str, Any]:
        return {
            "intervalSeconds": self.interval,
            "heals": self.heals,
            "last": None
            if self.last is None
            else {"at": iso(self.last["at"]), "pods": self.last["pods"]},
            "nextAt": None if self.next_at is None else iso(self.next_at),
        }

"""How long the agent waits between polls: its own default, or the set's hint, bounded.

A manifest set may carry ``pollSeconds`` (see :mod:`edgefleet.core.manifest_set`): the
control plane asks devices to poll faster while a rollout is in progress and slower
again afterwards. The hint comes from a verified set only, and the device bounds it
(``POLL_MIN_SECONDS``, ``POLL_MAX_SECONDS``) so that a control plane mistake can neither
make the fleet hammer the bucket nor make a device stop polling. The last hint is kept
in ``STATE_DIR/pace.json`` so a restarted agent keeps the pace it was given.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from edgefleet.core.fsutil import atomic_write

log = logging.getLogger(__name__)

DEFAULT_MIN_SECONDS = 5.0
DEFAULT_MAX_SECONDS = 3600.0
PACE_FILE = "pace.json"


@dataclass(frozen=True, slots=True)
class Pace:
    default: float
    minimum: float = DEFAULT_MIN_SECONDS
    maximum: float = DEFAULT_MAX_SECONDS

    def interval(self, hint: float | None) -> float:
        """The poll interval: the hint clamped to [minimum, maximum], else the default."""
        if hint is None:
            return self.default
        return min(self.maximum, max(self.minimum, float(hint)))


class HintStore:
    """The last verified set's hint, remembered across restarts (a lost file = no hint)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PACE_FILE
        self.hint: int | None = self._load()

    def _load(self) -> int | None:
        try:
            value = json.loads(self.path.read_bytes()).get("pollSeconds")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def update(self, hint: int | None) -> None:
        if hint == self.hint:
            return
        self.hint = hint
        try:
            atomic_write(self.path, json.dumps({"pollSeconds": hint}).encode())
        except OSError as exc:  # the pace is an optimisation: keep it in memory
            log.warning("cannot remember the poll hint", extra={"fields": {"error": str(exc)}})

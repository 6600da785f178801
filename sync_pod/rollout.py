"""The device's side of a progressive rollout: the ``select`` stage and what it remembers.

When the channel's set carries a rollout, the device decides by itself whether it is in
the cohort (:mod:`edgefleet.core.cohort`) and runs the candidate's manifests or the
set's own. A device that rolled back or rejected a rollout's candidate remembers it
(``STATE_DIR/rollout.json``) and runs the baseline for the rest of that rollout: it never
retries a candidate that already failed on it, and it reports the failure (the
controller counts it against ``--max-failure``). Its status carries::

    "rollout": {"id": "ro-…", "percent": 10, "inCohort": true, "runs": "candidate",
                "candidate": "sha256:…", "failed": null | {"reason", "detail", "at"}}
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.core.cohort import Selection
from edgefleet.core.fsutil import atomic_write
from sync_pod.memory import iso
from sync_pod.pipeline import Outcome, PollResult, Selected, Verified

log = logging.getLogger(__name__)

MAX_REMEMBERED = 20
NOTHING_SELECTED = "nothing-selected"  # the poll ended before select (or resumed an apply)
FAILED_OUTCOMES = (Outcome.REJECTED, Outcome.ROLLED_BACK, Outcome.ROLLBACK_FAILED)


@dataclass
class RolloutMemory:
    """The rollout this device last saw, and whether its candidate failed here."""

    path: Path
    current: dict[str, Any] | None = None  # the status block
    pending: dict[str, Any] | str | None = NOTHING_SELECTED  # this poll's selection
    failures: dict[str, dict[str, str]] = field(default_factory=dict)  # rollout id -> why

    @classmethod
    def load(cls, path: Path) -> RolloutMemory:
        memory = cls(path)
        try:
            doc = json.loads(path.read_bytes())
            current = doc.get("current")
            memory.current = current if isinstance(current, dict) else None
            failures = doc.get("failures") or {}
            memory.failures = {
                str(k)[:64]: {str(a): str(b)[:300] for a, b in v.items()}
                for k, v in list(failures.items())[-MAX_REMEMBERED:]
                if isinstance(v, dict)
            }
        except (OSError, ValueError, AttributeError):
            pass
        return memory

    def save(self) -> None:
        doc = {"current": self.current, "failures": self.failures}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(doc, sort_keys=True).encode() + b"\n")

    # -- the select stage ------------------------------------------------------------------

    def select(self, verified: Verified, device_id: str) -> Selected:
        """The manifests this device runs of ``verified``'s set."""
        s = verified.manifest_set
        entries, chosen = s.select(device_id)
        block: dict[str, Any] | None = None
        if chosen is not None and s.rollout is not None:
            failed = self.failures.get(chosen.rollout_id)
            if chosen.in_cohort and failed:
                entries = s.effective()  # the candidate failed here: stay on the baseline
            block = _block(chosen, s.rollout.candidate, not failed and chosen.in_cohort)
            block["failed"] = failed
        self.pending = block
        return Selected(s, verified.digest, verified.generation, entries)

    # -- after the poll --------------------------------------------------------------------

    def settle(self, result: PollResult) -> bool:
        """Record what the poll did to the selected version; True when the report changes."""
        block, self.pending = self.pending, NOTHING_SELECTED
        if isinstance(block, str):
            return False  # no selection this poll: what is reported stays
        if result.outcome is Outcome.APPLIED:
            changed = block != self.current
            self.current = block
            self.save()
            return changed
        if block is None or result.outcome not in FAILED_OUTCOMES:
            return False
        if block["runs"] != "candidate":
            return False
        rollout_id = str(block["id"])
        failed = {"reason": str(result.reason), "detail": result.detail[:300], "at": _now()}
        self.failures = dict(list({**self.failures, rollout_id: failed}.items())[-MAX_REMEMBERED:])
        self.current = {**block, "runs": "baseline", "failed": failed}
        self.save()
        log.warning(
            "rollout candidate failed on this device; staying on the baseline",
            extra={"fields": {"rollout": rollout_id, "reason": str(result.reason)}},
        )
        return True

    def status(self) -> dict[str, Any] | None:
        return self.current


def _block(chosen: Selection, candidate: str, runs_candidate: bool) -> dict[str, Any]:
    return {
        "id": chosen.rollout_id,
        "percent": chosen.percent,
        "inCohort": chosen.in_cohort,
        "runs": "candidate" if runs_candidate else "baseline",
        "candidate": candidate,
        "failed": None,
    }


def _now() -> str:
    return iso(time.time())

"""Who is in a rollout's cohort: each device decides by itself, from the set alone.

A device is in the cohort of rollout ``ID`` at ``P`` percent when its *position*
``position(ID, DEVICE_ID)`` -- the first 8 bytes of SHA-256(``ID/DEVICE_ID``) scaled to
[0, 100) -- is below ``P``. Why this rule:

- no device needs to be told individually: the set carries the rollout id and the
  percentage, a poll stays one small request;
- it is monotone: a device in the 10 % cohort is in the 50 % one (its position does not
  change while the rollout lives), so advancing a step never moves a device back;
- a new rollout id draws a new cohort, so the same few devices are not always first;
- the control plane computes the same positions from the devices' reports, so the
  controller and every device agree on who is in without talking.

This module is pure (no I/O) and shared by the device (``select``) and the controller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SCALE = 2**64


def position(rollout_id: str, device_id: str) -> float:
    """The device's fixed place in [0, 100) for this rollout."""
    digest = hashlib.sha256(f"{rollout_id}/{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") * 100.0 / SCALE


def in_cohort(rollout_id: str, device_id: str, percent: float) -> bool:
    """True when the device runs the candidate at ``percent`` (100 = everyone)."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    return position(rollout_id, device_id) < percent


def cohort(rollout_id: str, device_ids: Iterable[str], percent: float) -> list[str]:
    """The ids among ``device_ids`` that are in the cohort, in the order given."""
    return [d for d in device_ids if in_cohort(rollout_id, d, percent)]


@dataclass(frozen=True, slots=True)
class Selection:
    """What a device picked from a set that carries a rollout."""

    rollout_id: str
    percent: float
    in_cohort: bool

    @property
    def runs(self) -> str:
        return "candidate" if self.in_cohort else "baseline"


def overlay(baseline: Mapping[str, object], candidate: Mapping[str, object]) -> dict[str, object]:
    """The baseline's files with the candidate's files put over them (same file name:
    the candidate wins; a candidate file the baseline lacks is added)."""
    return {**baseline, **candidate}

"""What the agent remembers across restarts, in one JSON file replaced atomically.

The file doubles as the apply journal: ``pending`` is written before a new set dir is
prepared, so a restarted agent knows whether it was interrupted and can finish the apply
(the symlink already points at the new dir) or discard it (it does not).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from edgefleet.core.fsutil import atomic_write

log = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_REMEMBERED = 20


@dataclass
class AppliedSet:
    digest: str
    sequence: int
    dir: str
    hashes: dict[str, str]
    generation: int = 0
    applied_at: str = ""


PHASE_APPLY = "apply"
PHASE_ROLLBACK = "rollback"


@dataclass
class Pending:
    """An apply in progress. ``deadline`` (epoch seconds) is set once the switch is done.
    ``phase`` is "rollback" once the set failed its gate and switching back failed: the
    next poll (or a restart) retries the rollback, never the set."""

    digest: str
    sequence: int
    dir: str
    previous_dir: str | None
    hashes: dict[str, str]
    generation: int
    changed: list[str] = field(default_factory=list)
    deadline: float | None = None
    phase: str = PHASE_APPLY
    detail: str = ""


@dataclass
class Backoff:
    """A set that failed for a reason that may pass (a pull, the disk, the check child):
    not tried again before ``until`` (epoch seconds). ``failures`` counts the consecutive
    failures of this digest; the delay doubles with each, up to a bound."""

    digest: str
    generation: int
    failures: int
    until: float
    reason: str = ""
    detail: str = ""


@dataclass
class Rejection:
    reason: str
    detail: str
    at: str
    digest: str = ""
    generation: int = 0


@dataclass
class State:
    applied: AppliedSet | None = None
    previous: AppliedSet | None = None
    pending: Pending | None = None
    seen_generation: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    bad_digests: list[str] = field(default_factory=list)
    backoff: Backoff | None = None

    def reject(self, rejection: Rejection) -> None:
        self.rejections = [*self.rejections, rejection][-MAX_REMEMBERED:]

    def mark_bad(self, digest: str) -> None:
        if digest not in self.bad_digests:
            self.bad_digests = [*self.bad_digests, digest][-MAX_REMEMBERED:]

    @property
    def last_rejection(self) -> Rejection | None:
        return self.rejections[-1] if self.rejections else None

    def to_json(self) -> bytes:
        """The state file's bytes. Written on every step of an apply, so it is encoded
        straight from the objects (no ``asdict`` deep copy: a third of the cost) and
        compact (``indent`` selects json's pure-Python encoder, ~3x slower than its C
        one; ``jq . state.json`` reads it)."""
        doc = {"version": STATE_VERSION, **vars(self)}
        body = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=_fields)
        return body.encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> State:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise ValueError("unknown state version")
        return cls(
            applied=_opt(AppliedSet, doc.get("applied")),
            previous=_opt(AppliedSet, doc.get("previous")),
            pending=_opt(Pending, doc.get("pending")),
            seen_generation=int(doc.get("seen_generation") or 0),
            rejections=[Rejection(**r) for r in doc.get("rejections") or []],
            bad_digests=[str(d) for d in doc.get("bad_digests") or []],
            backoff=_opt(Backoff, doc.get("backoff")),
        )


def _fields(obj: Any) -> dict[str, Any]:
    """json's hook for the nested records (dataclasses with a ``__dict__``)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return vars(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _opt(cls: Any, raw: Any) -> Any:
    return None if raw is None else cls(**raw)


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> State:
        """The saved state; a missing or unreadable file starts over (logged): the live
        folder stays as it is and the next poll re-applies the channel's set."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return State()
        try:
            return State.from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            self.path.replace(aside)
            log.error(
                "state file unreadable; starting over",
                extra={"fields": {"path": str(self.path), "error": str(exc)}},
            )
            return State()

    def save(self, state: State) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, state.to_json())

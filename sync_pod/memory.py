"""What a poll's result makes the agent remember: the one place that decides it (pure).

- ``seen_generation`` advances when a set object's generation has been judged for good:
  applied, rejected, rolled back, or nothing to do (the running set rewritten, a digest
  rolled back before). It does NOT advance on a failure that may pass (offline, a pull,
  the disk, the check child) — that set is tried again, after a back-off.
- a rejection is recorded for every rejected or rolled-back set;
- a rolled-back digest is never tried again (``bad_digests``);
- repeated failures of the same set back off exponentially, bounded by ``cap``; the
  back-off is dropped as soon as the channel's set changes (any verdict on another set).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sync_pod.pipeline import Outcome, PollResult, Reason
from sync_pod.state import Backoff, Rejection, State

# Outcomes after which the set object's generation never needs downloading again.
_JUDGED = frozenset(
    {Outcome.APPLIED, Outcome.REJECTED, Outcome.ROLLED_BACK, Outcome.ROLLBACK_FAILED}
)
# Outcomes that leave a back-off as it is: nothing was learnt about any set.
_NEUTRAL = frozenset({Outcome.OFFLINE, Outcome.BACKING_OFF})


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Delay after the n-th consecutive failure of one set: ``base * 2**(n-1)``, at most
    ``cap`` seconds (both in seconds)."""

    base: float
    cap: float

    def delay(self, failures: int) -> float:
        return min(self.cap, self.base * 2 ** max(0, failures - 1))


def remember(state: State, result: PollResult, *, now: float, backoff: BackoffPolicy) -> None:
    """Update ``state`` for ``result`` (the caller saves it)."""
    if result.generation and (result.outcome in _JUDGED or result.outcome is Outcome.UNCHANGED):
        state.seen_generation = result.generation
    if result.outcome in (Outcome.ROLLED_BACK, Outcome.ROLLBACK_FAILED):
        state.mark_bad(result.digest)
    if result.outcome in (Outcome.REJECTED, Outcome.ROLLED_BACK, Outcome.ROLLBACK_FAILED):
        reason = result.reason if result.outcome is Outcome.REJECTED else Reason.UNHEALTHY
        state.reject(
            Rejection(str(reason), result.detail, iso(now), result.digest, result.generation)
        )
    state.backoff = _next_backoff(state.backoff, result, now, backoff)


def _next_backoff(
    current: Backoff | None, result: PollResult, now: float, policy: BackoffPolicy
) -> Backoff | None:
    if result.outcome in _NEUTRAL:
        return current
    if result.outcome is Outcome.FAILED and result.digest:
        same = current is not None and current.digest == result.digest
        failures = current.failures + 1 if same and current else 1
        return Backoff(
            digest=result.digest,
            generation=result.generation,
            failures=failures,
            until=now + policy.delay(failures),
            reason=str(result.reason),
            detail=result.detail,
        )
    if result.outcome is Outcome.UNCHANGED and not result.generation:
        return current  # nothing judged (no set yet, rewritten while read)
    return None  # a verdict on a set: the set changed or succeeded


def backing_off(
    state: State, *, now: float, generation: int = 0, digest: str = ""
) -> Backoff | None:
    """The back-off in force for this set (by generation before a download, by digest
    after one), or None."""
    b = state.backoff
    if b is None or now >= b.until:
        return None
    if (generation and b.generation == generation) or (digest and b.digest == digest):
        return b
    return None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

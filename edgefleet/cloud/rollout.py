"""Progressive rollouts, the pure part: the rollout document, gates, and the decision.

A rollout moves one channel of one arch from its *baseline* (what the channel tag names)
to a *candidate* in steps (percent of the channel's devices, e.g. 10, 50, 100). Its state
lives in ``rollouts/ARCH/CHANNEL.json`` (the wire format is the "Rollout state" contract
of docs/rollouts.md); the controller (:mod:`edgefleet.cloud.rollout_controller`) reads it
with its generation, asks :func:`decide` what to do with the devices' reports, and writes
the result with a generation precondition. Everything here is pure: no I/O, the time is
an argument.

The decision at one tick, for a running rollout:

1. the channel tag names neither baseline nor a finished candidate -> ``superseded``
   (a manual retag wins);
2. rollbacks and rejections of the candidate in the cohort over ``maxFailure`` of the
   cohort -> ``halted`` (no need to wait for ``minDevices``: a failure is a verdict);
3. fewer than ``minDevices`` cohort devices (or the whole cohort, if smaller) reported a
   window of the candidate with traffic since the step began -> hold;
4. any gate fails (cohort's candidate vs. baseline devices, windows ending after the
   step began) -> ``halted``; a relative gate whose baseline devices sent no traffic
   yet -> hold; with no baseline device left (100 %) relative gates are not judged;
5. all gates pass and ``stepInterval`` has elapsed -> advance to the next step, or
   ``completed`` after the last one; otherwise hold ("advancing").
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from edgefleet.core import cohort, layout, refs
from edgefleet.core.errors import InvalidInput

API_VERSION = "edgefleet.dev/v1"
KIND = "Rollout"
MAX_STATE_BYTES = 256 * 1024
MAX_HISTORY = 100
MAX_GATES = 16
MAX_STEPS = 20

RUNNING, PAUSED, HALTED, ABORTED, COMPLETED, SUPERSEDED = (
    "running", "paused", "halted", "aborted", "completed", "superseded",
)  # fmt: skip
STATES = (RUNNING, PAUSED, HALTED, ABORTED, COMPLETED, SUPERSEDED)
ACTIVE = (RUNNING, PAUSED)

DEFAULT_STEPS = (10.0, 50.0, 100.0)
DEFAULT_STEP_INTERVAL = 600.0
DEFAULT_MIN_DEVICES = 2
DEFAULT_MAX_FAILURE = 0.05
DEFAULT_GATES = ("latency_p95 <= 1.2x", "error_rate <= 1%", "confidence >= 0.9x")
# A device that has not reported for this long is not counted in a cohort.
REPORT_FRESH_SECONDS = 600.0

METRICS = {
    # gate metric -> (device summary field, how devices are combined, unit)
    "latency_p95": ("latencyP95Ms", "weighted", "ms"),
    "error_rate": ("errorRate", "ratio", ""),
    "confidence": ("confidenceMean", "weighted", ""),
    "drift": ("drift", "weighted", ""),
}
OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
       ">": lambda a, b: a > b}  # fmt: skip
NEGATED = {"<=": ">", ">=": "<", "<": ">=", ">": "<="}
_GATE_RE = re.compile(
    r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(x|%)?\s*$"
)
_ID_RE = re.compile(r"^ro-[a-z0-9]{6,40}$")


# --- parsing operator input --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gate:
    metric: str
    op: str
    value: float
    relative: bool

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}{'x' if self.relative else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "op": self.op,
            "value": self.value,
            "relative": self.relative,
        }


def parse_gate(text: str) -> Gate:
    """``"METRIC OP VALUE[x|%]"``: ``x`` = relative to the baseline, ``%`` = percent."""
    m = _GATE_RE.match(text or "")
    if m is None:
        raise InvalidInput(
            f"gate {text!r}: write METRIC OP VALUE[x], e.g. 'latency_p95 <= 1.2x', "
            "'error_rate <= 1%', 'confidence >= 0.9x'"
        )
    metric, op, raw, suffix = m.groups()
    if metric not in METRICS:
        raise InvalidInput(
            f"gate {text!r}: unknown metric {metric!r}; use one of {', '.join(METRICS)}"
        )
    value = float(raw) / (100.0 if suffix == "%" else 1.0)
    if not math.isfinite(value) or value < 0:
        raise InvalidInput(f"gate {text!r}: the value must be a finite number >= 0")
    return Gate(metric, op, value, suffix == "x")


def parse_steps(text: str) -> tuple[float, ...]:
    """``"10,50,100"``: increasing percentages ending at 100."""
    try:
        steps = tuple(float(s.strip().rstrip("%")) for s in text.split(",") if s.strip())
    except ValueError:
        raise InvalidInput(f"steps {text!r}: comma-separated percentages, e.g. 10,50,100") from None
    check_steps(steps)
    return steps


def check_steps(steps: Sequence[float]) -> None:
    if not steps or len(steps) > MAX_STEPS:
        raise InvalidInput(f"steps: give 1 to {MAX_STEPS} percentages, e.g. 10,50,100")
    if any(not (0 < s <= 100) or not math.isfinite(s) for s in steps):
        raise InvalidInput("steps: every percentage must be above 0 and at most 100")
    if list(steps) != sorted(set(steps)) or steps[-1] != 100:
        raise InvalidInput("steps: percentages must increase and end at 100")


def parse_duration(text: str) -> float:
    """``"600"``, ``"90s"``, ``"10m"``, ``"1h"`` -> seconds."""
    m = re.match(r"^\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*$", text or "")
    if m is None:
        raise InvalidInput(f"duration {text!r}: seconds or a number with s, m or h (e.g. 10m)")
    seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if seconds > 7 * 24 * 3600:
        raise InvalidInput(f"duration {text!r}: at most 7 days")
    return seconds


def parse_ratio(text: str) -> float:
    """``"5%"`` or ``"0.05"`` -> 0.05."""
    raw = (text or "").strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise InvalidInput(f"{text!r}: a percentage like 5% or a fraction like 0.05") from None
    if not 0 <= value <= 1:
        raise InvalidInput(f"{text!r}: must be between 0% and 100%")
    return value


def new_id() -> str:
    return "ro-" + secrets.token_hex(6)


# --- the rollout document ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Version:
    digest: str
    image: str

    def to_dict(self) -> dict[str, str]:
        return {"digest": self.digest, "image": self.image}


@dataclass(frozen=True, slots=True)
class Rollout:
    id: str
    arch: str
    channel: str
    repository: str  # REG/REPO/NAME
    source: str  # what the operator named (REPO@DIGEST): the tag moves there on completion
    candidate: Version
    baseline: Version
    steps: tuple[float, ...]
    step_index: int
    step_interval: float
    min_devices: int
    max_failure: float
    gates: tuple[Gate, ...]
    state: str
    started_at: datetime
    step_started_at: datetime
    updated_at: datetime
    verdict: str = ""
    results: tuple[dict[str, Any], ...] = ()  # gate results of the last judgement
    cohort: dict[str, int] = field(default_factory=dict)
    baseline_metrics: dict[str, float] = field(default_factory=dict)  # last known
    history: tuple[dict[str, Any], ...] = ()

    @property
    def percent(self) -> float:
        return self.steps[self.step_index]

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_dict(self) -> dict[str, Any]:
        gates = list(self.results) or [
            {**g.to_dict(), "candidate": None, "baseline": None, "ok": None} for g in self.gates
        ]
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "id": self.id,
            "arch": self.arch,
            "channel": self.channel,
            "repository": self.repository,
            "source": self.source,
            "candidate": self.candidate.to_dict(),
            "baseline": self.baseline.to_dict(),
            "steps": [_num(s) for s in self.steps],
            "stepIndex": self.step_index,
            "percent": _num(self.percent),
            "stepInterval": self.step_interval,
            "minDevices": self.min_devices,
            "maxFailure": self.max_failure,
            "gates": gates,
            "gateSpecs": [str(g) for g in self.gates],
            "cohort": dict(self.cohort),
            "baselineMetrics": dict(self.baseline_metrics),
            "state": self.state,
            "verdict": self.verdict,
            "history": list(self.history),
            "startedAt": fmt_time(self.started_at),
            "stepStartedAt": fmt_time(self.step_started_at),
            "updatedAt": fmt_time(self.updated_at),
        }

    def event(self, now: datetime, event: str, detail: str = "") -> Rollout:
        entry = {
            "at": fmt_time(now),
            "stepIndex": self.step_index,
            "percent": _num(self.percent),
            "event": event,
            "detail": detail,
        }
        return replace(self, history=(*self.history, entry)[-MAX_HISTORY:], updated_at=now)

    def same(self, other: Rollout) -> bool:
        """Equal but for ``updatedAt``: nothing worth a write."""
        return replace(self, updated_at=other.updated_at) == other


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def fmt_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise InvalidInput(f"rollout {what} must be an RFC 3339 time")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput(f"rollout {what} {value[:40]!r} is not YYYY-MM-DDTHH:MM:SSZ") from None


def new_rollout(
    *,
    arch: str,
    channel: str,
    repository: str,
    source: str,
    candidate: Version,
    baseline: Version,
    now: datetime,
    steps: Sequence[float] = DEFAULT_STEPS,
    step_interval: float = DEFAULT_STEP_INTERVAL,
    min_devices: int = DEFAULT_MIN_DEVICES,
    max_failure: float = DEFAULT_MAX_FAILURE,
    gates: Sequence[Gate] | None = None,
    rollout_id: str | None = None,
) -> Rollout:
    check_steps(steps)
    if candidate.digest == baseline.digest:
        raise InvalidInput(f"{channel} already runs {candidate.digest}: nothing to roll out")
    if min_devices < 1:
        raise InvalidInput("min-devices must be at least 1")
    now = now.replace(microsecond=0)
    r = Rollout(
        id=rollout_id or new_id(),
        arch=layout.check_arch(arch),
        channel=layout.check_channel(channel),
        repository=repository,
        source=source,
        candidate=candidate,
        baseline=baseline,
        steps=tuple(float(s) for s in steps),
        step_index=0,
        step_interval=float(step_interval),
        min_devices=int(min_devices),
        max_failure=float(max_failure),
        gates=tuple(gates if gates is not None else (parse_gate(g) for g in DEFAULT_GATES)),
        state=RUNNING,
        started_at=now,
        step_started_at=now,
        updated_at=now,
        verdict="holding: waiting for the first cohort to switch",
    )
    return r.event(now, "started", f"{candidate.digest} over {baseline.digest}")


def decode(data: bytes) -> Rollout:
    """Parse and validate a stored rollout; raise InvalidInput naming what is wrong."""
    import json

    if len(data) > MAX_STATE_BYTES:
        raise InvalidInput(f"rollout state is {len(data)} bytes, over {MAX_STATE_BYTES}")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"rollout state is not UTF-8 JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("apiVersion") != API_VERSION:
        raise InvalidInput(f"rollout state must be apiVersion {API_VERSION} kind {KIND}")
    rollout_id = _s(doc, "id")
    if not _ID_RE.match(rollout_id):
        raise InvalidInput(f"rollout id {rollout_id[:60]!r} is not ro-HEX")
    steps = doc.get("steps")
    if not isinstance(steps, list) or not all(_is_num(s) for s in steps):
        raise InvalidInput("rollout steps must be a list of numbers")
    check_steps([float(s) for s in steps])
    index = doc.get("stepIndex")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(steps):
        raise InvalidInput("rollout stepIndex is out of range")
    state = _s(doc, "state")
    if state not in STATES:
        raise InvalidInput(f"rollout state {state[:20]!r} is not one of {', '.join(STATES)}")
    specs = doc.get("gateSpecs") or []
    if not isinstance(specs, list) or len(specs) > MAX_GATES:
        raise InvalidInput(f"rollout gateSpecs must be a list of at most {MAX_GATES} gates")
    history = doc.get("history") or []
    if not isinstance(history, list):
        raise InvalidInput("rollout history must be a list")
    for key in ("stepInterval", "minDevices", "maxFailure"):
        if not _is_num(doc.get(key)):
            raise InvalidInput(f"rollout {key} must be a number")
    results = doc.get("gates") if isinstance(doc.get("gates"), list) else []
    return Rollout(
        id=rollout_id,
        arch=layout.check_arch(_s(doc, "arch")),
        channel=layout.check_channel(_s(doc, "channel")),
        repository=refs.parse(_s(doc, "repository")).name,
        source=_s(doc, "source"),
        candidate=_version(doc.get("candidate"), "candidate"),
        baseline=_version(doc.get("baseline"), "baseline"),
        steps=tuple(float(s) for s in steps),
        step_index=index,
        step_interval=float(doc["stepInterval"]),
        min_devices=max(1, int(doc["minDevices"])),
        max_failure=min(1.0, max(0.0, float(doc["maxFailure"]))),
        gates=tuple(parse_gate(str(g)) for g in specs),
        state=state,
        started_at=parse_time(doc.get("startedAt"), "startedAt"),
        step_started_at=parse_time(doc.get("stepStartedAt"), "stepStartedAt"),
        updated_at=parse_time(doc.get("updatedAt"), "updatedAt"),
        verdict=str(doc.get("verdict") or "")[:500],
        results=_results(results),
        cohort={k: int(v) for k, v in (doc.get("cohort") or {}).items() if _is_num(v)},
        baseline_metrics={
            k: float(v) for k, v in (doc.get("baselineMetrics") or {}).items() if _is_num(v)
        },
        history=tuple(h for h in history[-MAX_HISTORY:] if isinstance(h, dict)),
    )


def _results(raw: list[Any]) -> tuple[dict[str, Any], ...]:
    """Stored gate results; none when nothing was judged yet (every value null)."""
    out = tuple(r for r in raw[:MAX_GATES] if isinstance(r, dict) and "ok" in r)
    if all(r.get("ok") is None and r.get("candidate") is None for r in out):
        return ()
    return out


def encode(rollout: Rollout) -> bytes:
    import json

    return json.dumps(rollout.to_dict(), indent=1, sort_keys=True).encode() + b"\n"


def _s(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or len(value) > 1000:
        raise InvalidInput(f"rollout field {key!r} must be a string")
    return value


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _version(raw: Any, what: str) -> Version:
    if not isinstance(raw, dict):
        raise InvalidInput(f"rollout {what} must be an object")
    return Version(refs.check_digest(_s(raw, "digest")), _s(raw, "image"))


# --- device reports ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    """What the controller uses of one device's status report."""

    device_id: str
    arch: str
    channel: str
    reported_at: datetime | None
    models: tuple[dict[str, Any], ...]
    failed_rollout: str  # id of a rollout whose candidate this device rolled back/rejected
    failure: str = ""


def parse_report(doc: Any, device_id: str) -> Report | None:
    """A status document -> :class:`Report`; None when it is unusable. The object name's
    device id wins over whatever the document claims."""
    if not isinstance(doc, dict):
        return None
    try:
        reported = parse_time(doc.get("reportedAt"), "reportedAt")
    except InvalidInput:
        reported = None
    models = doc.get("models")
    models = (
        tuple(m for m in models[:16] if isinstance(m, dict)) if isinstance(models, list) else ()
    )
    ro = doc.get("rollout")
    failed, failure = "", ""
    if isinstance(ro, dict) and isinstance(ro.get("failed"), dict):
        failed = str(ro.get("id") or "")[:64]
        failure = str(ro["failed"].get("reason") or "")[:200]
    return Report(
        device_id,
        str(doc.get("arch") or ""),
        str(doc.get("channel") or ""),
        reported,
        models,
        failed,
        failure,
    )


def _window_end(model: Mapping[str, Any]) -> datetime | None:
    window = model.get("window")
    if not isinstance(window, dict):
        return None
    try:
        return parse_time(window.get("end"), "window end")
    except InvalidInput:
        return None


def windows(reports: Iterable[Report], digest: str, since: datetime) -> list[dict[str, Any]]:
    """Model windows of ``digest`` with traffic that ended after ``since`` (latest per device)."""
    out = []
    for r in reports:
        best = None
        for m in r.models:
            end = _window_end(m)
            requests = m.get("requests")
            if m.get("digest") != digest or end is None or end <= since:
                continue
            if not _is_num(requests) or requests <= 0:
                continue
            if best is None or end > best[0]:
                best = (end, m)
        if best is not None:
            out.append(best[1])
    return out


def aggregate(windows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Gate metrics over devices' windows: requests-weighted means; error rate = sum of
    errors over sum of requests."""
    out: dict[str, float] = {}
    total = sum(float(w["requests"]) for w in windows)
    if total <= 0:
        return out
    for metric, (key, how, _unit) in METRICS.items():
        if how == "ratio":
            errors = sum(float(w.get("errors") or 0) for w in windows if _is_num(w.get("errors")))
            out[metric] = errors / total
            continue
        pairs = [(float(w[key]), float(w["requests"])) for w in windows if _is_num(w.get(key))]
        weight = sum(n for _, n in pairs)
        if weight > 0:
            out[metric] = sum(v * n for v, n in pairs) / weight
    return out


# --- the decision ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Judgement:
    ok: bool | None  # None: not enough data yet
    results: tuple[dict[str, Any], ...]
    failing: str = ""
    waiting: str = ""


def judge_gates(
    gates: Sequence[Gate],
    candidate: Mapping[str, float],
    baseline: Mapping[str, float],
    *,
    baseline_expected: bool,
) -> Judgement:
    """Each gate's candidate vs. baseline value; the first failing gate is named."""
    results, failing, waiting = [], "", ""
    for gate in gates:
        c = candidate.get(gate.metric)
        b = baseline.get(gate.metric)
        entry: dict[str, Any] = {**gate.to_dict(), "candidate": _round(c), "baseline": _round(b)}
        if c is None:
            entry["ok"] = None
            waiting = waiting or f"no {gate.metric} from the cohort yet"
        elif gate.relative and b is None:
            entry["ok"] = None
            if baseline_expected:
                waiting = waiting or f"no {gate.metric} from baseline devices yet"
        else:
            threshold = gate.value * b if gate.relative and b is not None else gate.value
            entry["ok"] = bool(OPS[gate.op](c, threshold))
            if not entry["ok"] and not failing:
                against = f"{gate.value:g}x {b:.4g}" if gate.relative else f"{gate.value:g}"
                failing = f"{gate.metric} {c:.4g} {NEGATED[gate.op]} {against}"
        results.append(entry)
    if failing:
        return Judgement(False, tuple(results), failing=failing)
    if waiting:
        return Judgement(None, tuple(results), waiting=waiting)
    return Judgement(True, tuple(results))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


@dataclass(frozen=True, slots=True)
class View:
    """What the controller saw at one tick (besides the rollout itself)."""

    now: datetime
    tag_digest: str | None  # what the channel tag names now for this arch (None: no tag)
    reports: tuple[Report, ...]


def decide(r: Rollout, view: View) -> Rollout:
    """The rollout after one tick (see the module docstring). Idempotent: deciding again on
    the result with the same view changes nothing but cohort numbers and gate values."""
    if r.state != RUNNING:
        return r
    now = view.now.replace(microsecond=0)
    if view.tag_digest != r.baseline.digest:
        detail = f"the {r.channel} tag now names {view.tag_digest or 'nothing'}: the tag wins"
        return replace(r, state=SUPERSEDED, verdict=f"superseded: {detail}").event(
            now, "superseded", detail
        )
    fresh = [
        rep
        for rep in view.reports
        if rep.arch == r.arch
        and rep.channel == r.channel
        and rep.reported_at is not None
        and (now - rep.reported_at).total_seconds() <= REPORT_FRESH_SECONDS
    ]
    in_cohort = [rep for rep in fresh if cohort.in_cohort(r.id, rep.device_id, r.percent)]
    outside = [rep for rep in fresh if rep not in in_cohort]
    failures = [rep for rep in in_cohort if rep.failed_rollout == r.id]
    cand_windows = windows(in_cohort, r.candidate.digest, r.step_started_at)
    base_windows = windows(outside, r.baseline.digest, r.step_started_at)
    counts = {
        "devices": len(in_cohort),
        "reported": len(cand_windows),
        "failures": len(failures),
        "baselineDevices": len(outside),
    }
    candidate_metrics = aggregate(cand_windows)
    # Only the same window counts: at a step without baseline devices (100 %) relative
    # gates are not judged (the last values seen stay in the document, for people).
    baseline_metrics = aggregate(base_windows)
    r = replace(r, cohort=counts, baseline_metrics=baseline_metrics or dict(r.baseline_metrics))
    if in_cohort and len(failures) / len(in_cohort) > r.max_failure:
        names = ", ".join(f"{f.device_id} ({f.failure or 'failed'})" for f in failures[:5])
        detail = (
            f"{len(failures)} of {len(in_cohort)} cohort devices failed the candidate "
            f"(> {r.max_failure:.0%}): {names}"
        )
        return replace(r, state=HALTED, verdict=f"halted: {detail}").event(now, "halted", detail)
    elapsed = (now - r.step_started_at).total_seconds()
    if not in_cohort:
        if elapsed >= r.step_interval:
            return _advance(r, now, f"no device in the {r.percent:g}% cohort")
        return _hold(r, f"holding: no device in the {r.percent:g}% cohort yet")
    needed = min(r.min_devices, len(in_cohort))
    if len(cand_windows) < needed:
        return _hold(
            r,
            f"holding: {len(cand_windows)} of {needed} cohort devices reported on the candidate",
        )
    judgement = judge_gates(
        r.gates, candidate_metrics, baseline_metrics, baseline_expected=bool(outside)
    )
    r = replace(r, results=judgement.results)
    if judgement.ok is False:
        return replace(r, state=HALTED, verdict=f"halted: {judgement.failing}").event(
            now, "halted", judgement.failing
        )
    if judgement.ok is None:
        return _hold(r, f"holding: {judgement.waiting}")
    if elapsed >= r.step_interval:
        return _advance(r, now, "gates pass")
    left = r.step_interval - elapsed
    return _hold(r, f"advancing: gates pass; next step in {left:.0f} s")


def _hold(r: Rollout, verdict: str) -> Rollout:
    return replace(r, verdict=verdict)


def _advance(r: Rollout, now: datetime, why: str) -> Rollout:
    if r.step_index + 1 >= len(r.steps):
        detail = f"{why} at {r.percent:g}%: the {r.channel} tag moves to {r.candidate.digest}"
        return replace(r, state=COMPLETED, verdict=f"completed: {detail}").event(
            now, "completed", detail
        )
    nxt = replace(r, step_index=r.step_index + 1, step_started_at=now, results=())
    detail = f"{why} at {r.percent:g}%; now {nxt.percent:g}%"
    return replace(nxt, verdict=f"holding: step {nxt.step_index + 1} began").event(
        now, "advanced", detail
    )


def operator_action(r: Rollout, action: str, now: datetime) -> Rollout:
    """``pause``, ``resume`` or ``abort`` by the operator (idempotent)."""
    now = now.replace(microsecond=0)
    if action == "pause":
        if r.state == PAUSED:
            return r
        _require_active(r, action)
        return replace(r, state=PAUSED, verdict="paused by the operator").event(now, "paused")
    if action == "resume":
        if r.state == RUNNING:
            return r
        if r.state != PAUSED:
            raise InvalidInput(f"rollout {r.id} is {r.state}; only a paused rollout resumes")
        # The step's clock restarts: the time paused is no evidence.
        resumed = replace(r, state=RUNNING, step_started_at=now, verdict="resumed")
        return resumed.event(now, "resumed")
    if action == "abort":
        if r.state == ABORTED:
            return r
        _require_active(r, action)
        detail = f"the {r.channel} tag stays on {r.baseline.digest}"
        return replace(r, state=ABORTED, verdict=f"aborted: {detail}").event(now, "aborted", detail)
    raise InvalidInput(f"unknown rollout action {action!r}: pause, resume or abort")


def _require_active(r: Rollout, action: str) -> None:
    if not r.active:
        raise InvalidInput(f"cannot {action} rollout {r.id}: it is {r.state}")


def step_deadline(r: Rollout) -> datetime:
    return r.step_started_at + timedelta(seconds=r.step_interval)

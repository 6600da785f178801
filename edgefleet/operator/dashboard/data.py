"""What each dashboard view shows, computed from index rows and rollout states. Pure.

Every function here takes parsed rows (:class:`edgefleet.operator.fleet.DeviceRow`, whose
text is already cleaned and bounded) or a rollout document, plus the time, and returns
plain JSON-able dicts: the ``/api/`` answers. The page renders them with ``textContent``
only, so nothing here has to be HTML-safe, only JSON-safe.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edgefleet.core import layout
from edgefleet.operator import fleet
from edgefleet.operator.fleet import DeviceRow

SORT_KEYS = ("device", "arch", "channel", "version", "health", "seen")
LIVENESS = ("fresh", "stale", "offline", "never")
MAX_PER_PAGE = 500
MAX_ROLLOUT_HISTORY = 50
METRICS = ("requestRate", "errorRate", "latencyP50Ms", "latencyP95Ms", "confidenceMean", "drift")


def short(digest: str | None) -> str:
    return digest.removeprefix("sha256:")[:12] if digest else ""


def device_json(row: DeviceRow, now: datetime, stale_after: float) -> dict[str, Any]:
    """One fleet-table row."""
    age = row.age(now)
    return {
        "id": row.device_id,
        "arch": row.arch,
        "channel": row.channel,
        "version": ", ".join(row.versions),
        "digests": list(row.digests),
        "digest": ", ".join(short(d) for d in row.digests),
        "health": "offline" if row.offline else row.health,
        "healthy": row.healthy(),
        "liveness": row.liveness(now, stale_after),
        "lastSeen": row.last_seen.isoformat() if row.last_seen else None,
        "ageSeconds": None if age is None else round(age, 1),
        "reportInterval": row.report_interval,
        "problems": fleet.problems(row, now, stale_after),
        "flagged": bool(row.flags),
    }


@dataclass(frozen=True, slots=True)
class Query:
    """The fleet table's filter, sort and page (from query-string parameters)."""

    text: str = ""
    channel: str = ""
    arch: str = ""
    liveness: str = ""
    problems_only: bool = False
    sort: str = "device"
    descending: bool = False
    page: int = 1
    per_page: int = 100

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> Query:
        """Tolerant: an unknown sort key or a bad number falls back to the default."""
        sort = args.get("sort", "device")
        return cls(
            text=args.get("q", "")[:128].strip().lower(),
            channel=args.get("channel", "")[:64],
            arch=args.get("arch", "")[:16],
            liveness=args.get("liveness", "") if args.get("liveness") in LIVENESS else "",
            problems_only=args.get("problems") in ("1", "true", "on"),
            sort=sort if sort in SORT_KEYS else "device",
            descending=args.get("dir") == "desc",
            page=_int(args.get("page"), 1, 1, 10**6),
            per_page=_int(args.get("per"), 100, 1, MAX_PER_PAGE),
        )


def fleet_page(
    rows: Sequence[DeviceRow], query: Query, now: datetime, stale_after: float
) -> dict[str, Any]:
    """The fleet table: counts over all devices, then the filtered, sorted page."""
    liveness = {r.device_id: r.liveness(now, stale_after) for r in rows}
    counts = Counter(liveness.values())
    matched = [r for r in rows if _matches(r, query, liveness[r.device_id], now, stale_after)]
    matched.sort(key=_sort_key(query.sort, now), reverse=query.descending)
    start = (query.page - 1) * query.per_page
    page = matched[start : start + query.per_page]
    return {
        "total": len(rows),
        "matched": len(matched),
        "page": query.page,
        "perPage": query.per_page,
        "pages": max(1, math.ceil(len(matched) / query.per_page)),
        "counts": {
            **{k: counts.get(k, 0) for k in LIVENESS},
            "unhealthy": sum(1 for r in rows if r.health != "healthy"),
            "flagged": sum(1 for r in rows if r.flags),
        },
        "channels": sorted({r.channel for r in rows}),
        "arches": sorted({r.arch for r in rows}),
        "devices": [device_json(r, now, stale_after) for r in page],
    }


def _matches(row: DeviceRow, q: Query, liveness: str, now: datetime, stale: float) -> bool:
    if q.channel and row.channel != q.channel:
        return False
    if q.arch and row.arch != q.arch:
        return False
    if q.liveness and liveness != q.liveness:
        return False
    if q.problems_only and not fleet.problems(row, now, stale):
        return False
    if q.text:
        hay = " ".join((row.device_id, row.health, *row.versions, *row.digests)).lower()
        return q.text in hay
    return True


def _sort_key(key: str, now: datetime) -> Any:
    if key == "seen":
        return lambda r: (r.age(now) is None, r.age(now) or 0.0, r.device_id)
    if key == "version":
        return lambda r: (", ".join(r.versions), r.digests, r.device_id)
    if key == "device":
        return lambda r: r.device_id
    return lambda r: (getattr(r, key), r.device_id)


def device_detail(
    row: DeviceRow, history: Iterable[Any], now: datetime, stale_after: float
) -> dict[str, Any]:
    """The device page: its row, what it ran at each change the dashboard saw, its
    rejections with their reasons, and its model summaries."""
    return {
        **device_json(row, now, stale_after),
        "runtime": row.runtime,
        "agentVersion": row.agent_version,
        "setSequence": row.set_sequence,
        "images": list(row.images),
        "lastError": row.last_error,
        "flags": list(row.flags),
        "staleAfterSeconds": row.stale_threshold(stale_after),
        "history": [
            {
                "at": s.at.isoformat() if s.at else None,
                "channel": s.channel,
                "digest": ", ".join(short(d) for d in s.digests),
                "health": s.health,
                "setSequence": s.set_sequence,
            }
            for s in reversed(list(history))
        ],
        "rejections": [
            {"reason": r.reason, "detail": r.detail, "at": r.at, "set": short(r.set_digest)}
            for r in reversed(row.rejections)
        ],
        "models": [_model_json(m) for m in row.models],
    }


def _model_json(m: fleet.ModelSummary) -> dict[str, Any]:
    return {
        "digest": short(m.digest),
        "name": m.name,
        "requests": m.requests,
        "errors": m.errors,
        "errorRate": m.error_rate,
        "latencyP50Ms": m.latency_p50_ms,
        "latencyP95Ms": m.latency_p95_ms,
        "confidenceMean": m.confidence_mean,
        "drift": m.drift,
        "accelerator": m.accelerator,
        "windowSeconds": m.window_seconds,
    }


def channels(rows: Sequence[DeviceRow], versions: Mapping[str, str]) -> dict[str, Any]:
    """Channel x arch: what the devices run (digest, version, how many) and how many
    agree with the most common answer."""
    cells: dict[tuple[str, str], Counter[tuple[str, ...]]] = {}
    for r in rows:
        cells.setdefault((r.channel, r.arch), Counter())[r.digests] += 1
    out = []
    for (channel, arch), counter in sorted(cells.items()):
        total = sum(counter.values())
        running = [
            {
                "digest": ", ".join(short(d) for d in digests) or "-",
                "version": ", ".join(versions.get(d, "") for d in digests if versions.get(d)),
                "devices": n,
            }
            for digests, n in counter.most_common()
        ]
        out.append(
            {
                "channel": channel,
                "arch": arch,
                "devices": total,
                "agree": running[0]["devices"],
                "running": running,
            }
        )
    return {
        "channels": sorted({c["channel"] for c in out}, key=_channel_order),
        "arches": sorted({c["arch"] for c in out}),
        "cells": out,
    }


def _channel_order(channel: str) -> tuple[int, str]:
    order = layout.DEFAULT_CHANNELS
    return (order.index(channel) if channel in order else len(order), channel)


# -- models -----------------------------------------------------------------------------


def models(rows: Sequence[DeviceRow], versions: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per version (digest): request rate (requests/s summed over devices), error rate
    (errors/requests), p50/p95 latency, mean top-1 score and drift (request-weighted means
    of the devices' windows), and the Edge TPU vs CPU share of devices and requests."""
    by_digest: dict[str, list[fleet.ModelSummary]] = {}
    for r in rows:
        for m in r.models:
            by_digest.setdefault(m.digest, []).append(m)
    out = []
    for digest, ms in sorted(by_digest.items()):
        requests = sum(m.requests for m in ms)
        errors = sum(m.errors for m in ms)
        accel = Counter(m.accelerator for m in ms)
        accel_requests = Counter()  # type: Counter[str]
        for m in ms:
            accel_requests[m.accelerator] += m.requests
        out.append(
            {
                "digest": digest,
                "short": short(digest),
                "version": versions.get(digest, ""),
                "name": Counter(m.name for m in ms).most_common(1)[0][0],
                "devices": len(ms),
                "requests": requests,
                "requestRate": round(
                    sum(m.requests / m.window_seconds for m in ms if m.window_seconds), 3
                ),
                "errorRate": round(errors / requests, 5) if requests else None,
                "latencyP50Ms": _weighted(ms, "latency_p50_ms"),
                "latencyP95Ms": _weighted(ms, "latency_p95_ms"),
                "confidenceMean": _weighted(ms, "confidence_mean"),
                "drift": _weighted(ms, "drift"),
                "accelerators": dict(sorted(accel.items())),
                "acceleratorRequests": dict(sorted(accel_requests.items())),
            }
        )
    return out


def _weighted(ms: Sequence[fleet.ModelSummary], attr: str) -> float | None:
    pairs = [(getattr(m, attr), max(m.requests, 1)) for m in ms if getattr(m, attr) is not None]
    if not pairs:
        return None
    return round(sum(v * w for v, w in pairs) / sum(w for _, w in pairs), 4)


# -- rollouts ---------------------------------------------------------------------------

ROLLOUT_STATES = ("running", "paused", "halted", "aborted", "completed", "superseded")


def rollout(doc: Any, object_name: str) -> dict[str, Any]:
    """A rollout state object (``rollouts/ARCH/CHANNEL.json``, the contract in
    docs/rollouts.md) read defensively: unknown or malformed fields are dropped, text is
    cleaned and cut. The object name decides arch and channel, as for status reports."""
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    parts = object_name.removeprefix("rollouts/").removesuffix(".json").split("/")
    if len(parts) != 2:
        raise ValueError("not rollouts/ARCH/CHANNEL.json")
    arch, channel = layout.check_arch(parts[0]), layout.check_channel(parts[1])
    steps = [s for s in _list(doc.get("steps"), 20) if _num(s) is not None]
    state = doc.get("state") if doc.get("state") in ROLLOUT_STATES else "unknown"
    cohort = doc.get("cohort") if isinstance(doc.get("cohort"), dict) else {}
    return {
        "id": fleet.clean(doc.get("id") or "", 60),
        "arch": arch,
        "channel": channel,
        "repository": fleet.clean(doc.get("repository") or "", 200),
        "candidate": _side(doc.get("candidate")),
        "baseline": _side(doc.get("baseline")),
        "steps": steps,
        "stepIndex": _int(doc.get("stepIndex"), 0, 0, 100),
        "percent": _num(doc.get("percent")),
        "stepInterval": _num(doc.get("stepInterval")),
        "minDevices": _num(doc.get("minDevices")),
        "maxFailure": _num(doc.get("maxFailure")),
        "state": state,
        "verdict": fleet.clean(doc.get("verdict") or ""),
        "cohort": {
            k: _num(cohort.get(k)) for k in ("devices", "reported", "failures", "baselineDevices")
        },
        "gates": [_gate(g) for g in _list(doc.get("gates"), 16) if isinstance(g, dict)],
        "history": [
            {
                "at": fleet.clean(h.get("at") or "", 40),
                "stepIndex": _num(h.get("stepIndex")),
                "percent": _num(h.get("percent")),
                "event": fleet.clean(h.get("event") or "", 20),
                "detail": fleet.clean(h.get("detail") or ""),
            }
            for h in _list(doc.get("history"), 1000)[-MAX_ROLLOUT_HISTORY:]
            if isinstance(h, dict)
        ][::-1],
        "startedAt": fleet.clean(doc.get("startedAt") or "", 40),
        "updatedAt": fleet.clean(doc.get("updatedAt") or "", 40),
    }


def _side(value: Any) -> dict[str, str]:
    value = value if isinstance(value, dict) else {}
    digest = value.get("digest") if isinstance(value.get("digest"), str) else ""
    return {
        "digest": fleet.clean(digest, 80),
        "short": short(fleet.clean(digest, 80)),
        "image": fleet.clean(value.get("image") or "", 300),
    }


def _gate(g: Mapping[str, Any]) -> dict[str, Any]:
    ok = g.get("ok")
    return {
        "metric": fleet.clean(g.get("metric") or "?", 40),
        "op": fleet.clean(g.get("op") or "?", 4),
        "value": _num(g.get("value")),
        "relative": g.get("relative") is True,
        "candidate": _num(g.get("candidate")),
        "baseline": _num(g.get("baseline")),
        "ok": ok if isinstance(ok, bool) else None,
    }


def _list(value: Any, limit: int) -> list[Any]:
    return value[:limit] if isinstance(value, list) else []


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any, default: int, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return default
    return min(max(n, lo), hi)

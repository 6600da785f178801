"""What the fleet runs, judged from device status reports. Pure: no I/O.

A device's report (``status/DEVICE_ID.json``, written by the sync agent) says which set
it applied, which pods run with which image digests, its health and when it last
reported. This module turns reports into rows an operator reads, decides which devices
are unhealthy or stale, whether a rollout to a digest has completed, and which devices
refused it (rejected or rolled back the set that carries it: :func:`rollout_refusals`).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from edgefleet.core import layout, refs
from edgefleet.core.errors import InvalidInput

DEFAULT_STALE_SECONDS = 300.0
# A device is offline (not merely stale) after this many of its stale thresholds.
OFFLINE_FACTOR = 5.0

# Bounds on one report: a device's report is untrusted input.
MAX_REPORT_BYTES = 256 * 1024
MAX_TEXT = 300  # characters kept of any free-text field (health, reasons, details)
MAX_PODS = 64
MAX_CONTAINERS = 16
MAX_MODELS = 16
MAX_REJECTIONS = 10
STATUS_PREFIX = "status/"
STATUS_SUFFIX = ".json"

# C0/C1 controls, DEL, and format characters (bidi overrides, zero-width) a terminal or a
# page would interpret: a report must never move a cursor, recolour or reorder a line.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def clean(value: Any, limit: int = MAX_TEXT) -> str:
    """Text from a report made safe to print anywhere: control and format characters
    shown as ``\\uXXXX`` escapes, cut at ``limit`` characters (marked with ``…``)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """One running version's model-server summary from a report (the ``models`` contract)."""

    digest: str
    name: str
    requests: int
    errors: int
    error_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    confidence_mean: float | None
    drift: float | None
    accelerator: str
    window_seconds: float
    window_end: datetime | None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A set the device refused: rejected before applying it, or rolled back after its
    health gate failed. ``set_digest`` names the manifest set (its content digest), not
    an image; ``detail`` carries the runtime's message."""

    reason: str
    detail: str
    at: str
    set_digest: str


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: str
    arch: str
    channel: str
    health: str
    last_seen: datetime | None
    offline: bool
    digests: tuple[str, ...]
    set_sequence: int | None
    last_error: str | None
    versions: tuple[str, ...] = field(default_factory=tuple)
    # How often the device promised to report (heartbeat + one poll); 0 when unknown.
    report_interval: float = 0.0
    images: tuple[str, ...] = field(default_factory=tuple)  # digest-pinned refs running
    # What is wrong with the report itself (e.g. its deviceId names another device).
    flags: tuple[str, ...] = field(default_factory=tuple)
    models: tuple[ModelSummary, ...] = field(default_factory=tuple)
    rejections: tuple[Rejection, ...] = field(default_factory=tuple)
    runtime: str = "?"
    agent_version: str = "?"

    def age(self, now: datetime) -> float | None:
        return None if self.last_seen is None else (now - self.last_seen).total_seconds()

    def stale_threshold(self, stale_after: float) -> float:
        """``stale_after`` seconds, or two of the device's own report intervals when that
        is longer (an idle device reports only on heartbeat)."""
        return max(stale_after, 2 * self.report_interval)

    def stale(self, now: datetime, stale_after: float) -> bool:
        """Not heard from within :meth:`stale_threshold`."""
        age = self.age(now)
        return age is None or age > self.stale_threshold(stale_after)

    def liveness(self, now: datetime, stale_after: float) -> str:
        """``fresh``, ``stale``, ``offline`` (the device says so, or silent for
        OFFLINE_FACTOR stale thresholds) or ``never`` (no usable report time)."""
        age = self.age(now)
        if age is None:
            return "never"
        if self.offline or age > OFFLINE_FACTOR * self.stale_threshold(stale_after):
            return "offline"
        return "stale" if age > self.stale_threshold(stale_after) else "fresh"

    def healthy(self) -> bool:
        return self.health == "healthy" and not self.offline

    def runs(self, digest: str) -> bool:
        return digest in self.digests


def device_of(object_name: str) -> str:
    """``status/ID.json`` -> ID: the object's name says whose report it is (a bucket
    writer can be restricted per object; a report's content cannot)."""
    if not (object_name.startswith(STATUS_PREFIX) and object_name.endswith(STATUS_SUFFIX)):
        raise InvalidInput(f"{clean(object_name)} is not a status object (status/ID.json)")
    return layout.check_device_id(object_name[len(STATUS_PREFIX) : -len(STATUS_SUFFIX)])


def parse_report(data: bytes, object_name: str, *, updated: datetime | None = None) -> DeviceRow:
    """A status object -> a row; raise InvalidInput naming the object when it is malformed.

    Every field is untrusted: the device id comes from the object name (a report naming
    another device is flagged, never believed), text is cleaned and cut, lists and numbers
    are bounded, and ``updated`` (the store's write time, when known) caps the report's
    own ``reportedAt`` so a device cannot look fresher than its last write.
    """
    where = clean(object_name, 200)
    if len(data) > MAX_REPORT_BYTES:
        raise InvalidInput(f"status object {where} is {len(data)} bytes, over {MAX_REPORT_BYTES}")
    try:
        device_id = device_of(object_name)
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (ValueError, RecursionError, InvalidInput) as exc:
        raise InvalidInput(f"status object {where} is malformed: {clean(exc)}") from exc
    flags: list[str] = []
    claimed = doc.get("deviceId")
    if claimed != device_id:
        flags.append(f"report names device {clean(claimed, 80)!s}" if claimed else "no deviceId")
    digests, images = _running(doc.get("pods"))
    applied = doc.get("applied")
    sequence = applied.get("sequence") if isinstance(applied, dict) else None
    return DeviceRow(
        device_id=device_id,
        arch=_choice(doc.get("arch"), layout.check_arch, flags, "arch"),
        channel=_choice(doc.get("channel"), layout.check_channel, flags, "channel"),
        health=clean(doc.get("health") or "unknown"),
        last_seen=_seen(doc.get("reportedAt"), updated, flags),
        offline=doc.get("offline") is True,
        digests=digests,
        set_sequence=sequence if _is_int(sequence) else None,
        last_error=_error_text(doc),
        images=images,
        report_interval=_seconds(doc.get("heartbeatSeconds")) + _seconds(doc.get("pollSeconds")),
        flags=tuple(flags),
        models=_models(doc.get("models")),
        rejections=_rejections(doc.get("rejections"), doc.get("lastRejection")),
        runtime=clean(doc.get("runtime") or "?", 40),
        agent_version=clean(doc.get("agentVersion") or "?", 40),
    )


def _choice(value: Any, check: Callable[[str], str], flags: list[str], what: str) -> str:
    try:
        return check(value) if isinstance(value, str) else "?"
    except InvalidInput:
        flags.append(f"invalid {what} {clean(value, 40)!s}")
        return "?"


def _running(pods: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Digests and digest-pinned image refs of the model pods (the sync pod left out)."""
    digests: list[str] = []
    images: list[str] = []
    for pod in _dicts(pods, MAX_PODS):
        if pod.get("name") == layout.SYNC_POD_NAME:
            continue
        for c in _dicts(pod.get("containers"), MAX_CONTAINERS):
            image = c.get("image") if isinstance(c.get("image"), str) else None
            ref = _pinned(image)
            suffix = image.rsplit("@", 1)[1] if image and "@" in image else None
            digest = _digest(c.get("imageDigest")) or _digest(suffix)
            if digest and digest not in digests:
                digests.append(digest)
            if ref is not None and image not in images:
                images.append(clean(image, 512))
    return tuple(digests), tuple(images)


@functools.lru_cache(maxsize=4096)  # a fleet runs few distinct images: parse each once
def _pinned(image: str | None) -> refs.ImageRef | None:
    if image is None or len(image) > 512:
        return None
    try:
        ref = refs.parse(image)
    except InvalidInput:
        return None
    return ref if ref.digest else None


def _digest(value: Any) -> str | None:
    if isinstance(value, str) and value in _DIGESTS:
        return value
    try:
        digest = refs.check_digest(value) if isinstance(value, str) else None
    except InvalidInput:
        return None
    if digest is not None and len(_DIGESTS) < 4096:
        _DIGESTS.add(digest)
    return digest


_DIGESTS: set[str] = set()  # digests already checked (few distinct ones in a fleet)


def _models(value: Any) -> tuple[ModelSummary, ...]:
    out = []
    for m in _dicts(value, MAX_MODELS):
        digest = _digest(m.get("digest")) or (
            ref.digest if (ref := _pinned(m.get("image"))) else None
        )
        if digest is None:
            continue
        window = m.get("window") if isinstance(m.get("window"), dict) else {}
        out.append(
            ModelSummary(
                digest=digest,
                name=clean(m.get("name") or "?", 63),
                requests=_count(m.get("requests")),
                errors=_count(m.get("errors")),
                error_rate=_ratio(m.get("errorRate")),
                latency_p50_ms=_number(m.get("latencyP50Ms")),
                latency_p95_ms=_number(m.get("latencyP95Ms")),
                confidence_mean=_ratio(m.get("confidenceMean")),
                drift=_number(m.get("drift")),
                accelerator=clean(m.get("accelerator") or "unknown", 20),
                window_seconds=_seconds(window.get("seconds")),
                window_end=parse_time(window.get("end")),
            )
        )
    return tuple(out)


def _rejections(value: Any, last: Any) -> tuple[Rejection, ...]:
    items = list(_dicts(value, 1000))[-MAX_REJECTIONS:]
    if not items and isinstance(last, dict):
        items = [last]
    return tuple(
        Rejection(
            # One line each (rollout wait prints them so), then cleaned like all report text.
            reason=clean(one_line(str(r.get("reason") or "rejected"), 64)),
            detail=clean(one_line(str(r.get("detail") or ""))),
            at=clean(one_line(str(r.get("at") or ""), 40)),
            set_digest=clean(r.get("digest") if isinstance(r.get("digest"), str) else "", 80),
        )
        for r in items
    )


def _dicts(value: Any, limit: int) -> Iterable[dict[str, Any]]:
    """The dict items of a list, at most ``limit`` of them (anything else: none)."""
    if not isinstance(value, list):
        return ()
    return [v for v in value[:limit] if isinstance(v, dict)]


def _seen(value: Any, updated: datetime | None, flags: list[str]) -> datetime | None:
    reported = parse_time(value)
    if value and reported is None:
        flags.append("unreadable reportedAt")
    if updated is not None and (reported is None or reported > updated):
        if reported is not None and (reported - updated).total_seconds() > 60:
            flags.append("reportedAt is later than the report was written")
        return updated
    return reported


def with_versions(
    rows: Iterable[DeviceRow], version_of: Callable[[str], str | None]
) -> list[DeviceRow]:
    """Rows with ``versions`` filled from ``version_of(pinned image ref)`` (e.g. the image's
    ``org.opencontainers.image.version`` label); unknown ones are left out."""
    out = []
    for row in rows:
        found = [clean(v, 80) for v in (version_of(i) for i in row.images) if v]
        out.append(replace(row, versions=tuple(dict.fromkeys(found))) if found else row)
    return out


def problems(row: DeviceRow, now: datetime, stale_after: float) -> list[str]:
    """Why ``row`` needs attention (empty when it is fine)."""
    out = []
    if row.stale(now, stale_after):
        age = row.age(now)
        out.append("never reported" if age is None else f"stale: last seen {age:.0f}s ago")
    if row.offline:
        out.append("offline")
    if row.health != "healthy":
        out.append(f"health: {row.health}")
    out.extend(f"report: {flag}" for flag in row.flags)
    return out


@dataclass(frozen=True, slots=True)
class RolloutProgress:
    channel: str
    digest: str
    total: int
    done: tuple[str, ...]
    pending: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return self.total > 0 and not self.pending


def rollout_progress(
    rows: Iterable[DeviceRow], channel: str, digest: str, arch: str | None = None
) -> RolloutProgress:
    """Which devices of ``channel`` (and ``arch``) run ``digest`` healthily."""
    members = [r for r in rows if r.channel == channel and (arch is None or r.arch == arch)]
    done = tuple(sorted(r.device_id for r in members if r.runs(digest) and r.healthy()))
    pending = tuple(sorted(r.device_id for r in members if r.device_id not in done))
    return RolloutProgress(channel, digest, len(members), done, pending)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Device ``device_id`` refused the set that would make it run the rollout's digest."""

    device_id: str
    rejection: Rejection

    def line(self) -> str:
        """One line: device, reason and the runtime's message."""
        r = self.rejection
        return f"device {self.device_id} refused set {r.set_digest[:12]} ({r.reason}): {r.detail}"


def rollout_refusals(
    rows: Iterable[DeviceRow],
    channel: str,
    digest: str,
    set_digests: Mapping[str, str],
    arch: str | None = None,
) -> list[Refusal]:
    """Devices of ``channel`` (and ``arch``) that do not run ``digest`` healthily and
    refused the set now published for their arch, ``set_digests[arch]``, which carries
    ``digest``. A refusal of an older set does not count: a device retries a newer one."""
    out = []
    for r in rows:
        if r.channel != channel or (arch is not None and r.arch != arch):
            continue
        if (r.runs(digest) and r.healthy()) or r.arch not in set_digests:
            continue
        mine = [j for j in r.rejections if j.set_digest == set_digests[r.arch]]
        if mine:
            out.append(Refusal(r.device_id, mine[-1]))
    return sorted(out, key=lambda f: f.device_id)


def one_line(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` safe to print on one line: control characters and runs of whitespace
    become single spaces, cut at ``limit`` characters."""
    flat = re.sub(r"[\x00-\x20\x7f-\x9f]+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def table(rows: Iterable[DeviceRow], now: datetime, stale_after: float) -> str:
    """A fixed-width table, one device per line."""
    header = ("DEVICE", "ARCH", "CHANNEL", "VERSION", "DIGEST", "HEALTH", "LAST SEEN", "PROBLEMS")
    lines = [header]
    for r in sorted(rows, key=lambda r: (r.channel, r.device_id)):
        age = r.age(now)
        lines.append(
            (
                r.device_id,
                r.arch,
                r.channel,
                ",".join(r.versions) or "-",
                ",".join(d.removeprefix("sha256:")[:12] for d in r.digests) or "-",
                "offline" if r.offline else r.health,
                "never" if age is None else f"{age:.0f}s ago",
                "; ".join(problems(r, now, stale_after)) or "-",
            )
        )
    lines = [tuple(clean(cell) for cell in line) for line in lines]  # never a raw control char
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def to_json(row: DeviceRow, now: datetime, stale_after: float) -> dict[str, Any]:
    out = asdict(row)
    out["last_seen"] = row.last_seen.isoformat() if row.last_seen else None
    out["liveness"] = row.liveness(now, stale_after)
    out["problems"] = problems(row, now, stale_after)
    for model in out["models"]:
        end = model["window_end"]
        model["window_end"] = end.isoformat() if end else None
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any, limit: float = 1e9) -> float | None:
    """A finite, non-negative number no larger than ``limit``; None otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0 or value > limit:
        return None
    return float(value)


def _ratio(value: Any) -> float | None:
    return _number(value, 1.0)


def _count(value: Any) -> int:
    return int(value) if _is_int(value) and 0 <= value <= 10**12 else 0


def _seconds(value: Any) -> float:
    """A non-negative number of seconds from a report, 0 when absent or malformed."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return max(0.0, min(float(value), 7 * 86400.0))


def _error_text(doc: Mapping[str, Any]) -> str | None:
    rejection = doc.get("lastRejection")
    if isinstance(rejection, dict) and rejection.get("reason"):
        return clean(f"{rejection.get('reason')}: {rejection.get('detail', '')}".strip())
    error = doc.get("lastError")
    if isinstance(error, dict):
        return clean(f"{error.get('reason', 'error')}: {error.get('detail', '')}".strip())
    return clean(error) if error else None


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time (aware, UTC when no offset), or None when absent or unreadable."""
    if not isinstance(value, str) or not value or len(value) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

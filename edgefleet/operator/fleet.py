"""What the fleet runs, judged from device status reports. Pure: no I/O.

A device's report (``status/DEVICE_ID.json``, written by the sync agent) says which set
it applied, which pods run with which image digests, its health and when it last
reported. This module turns reports into rows an operator reads, decides which devices
are unhealthy or stale, whether a rollout to a digest has completed, and which devices
refused it (rejected or rolled back the set that carries it: :func:`rollout_refusals`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from edgefleet.core import layout
from edgefleet.core.errors import InvalidInput

DEFAULT_STALE_SECONDS = 300.0
# A report lists its last rejections; more, or longer texts, are cut (reports are untrusted).
MAX_REJECTIONS = 10
MAX_TEXT = 400


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
    rejections: tuple[Rejection, ...] = field(default_factory=tuple)

    def age(self, now: datetime) -> float | None:
        return None if self.last_seen is None else (now - self.last_seen).total_seconds()

    def stale(self, now: datetime, stale_after: float) -> bool:
        """Not heard from for ``stale_after`` seconds, or for two of the device's own
        report intervals when that is longer (an idle device reports only on heartbeat)."""
        age = self.age(now)
        return age is None or age > max(stale_after, 2 * self.report_interval)

    def healthy(self) -> bool:
        return self.health == "healthy" and not self.offline

    def runs(self, digest: str) -> bool:
        return digest in self.digests


def parse_report(data: bytes, object_name: str) -> DeviceRow:
    """A status object -> a row; raise InvalidInput naming the object when it is malformed."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        device_id = layout.check_device_id(str(doc["deviceId"]))
        digests: list[str] = []
        images: list[str] = []
        for pod in doc.get("pods") or []:
            if pod.get("name") == layout.SYNC_POD_NAME:
                continue
            for c in pod.get("containers") or []:
                digest = c.get("imageDigest") or _digest_of(c.get("image"))
                if digest and digest not in digests:
                    digests.append(str(digest))
                image = c.get("image")
                if isinstance(image, str) and _digest_of(image) and image not in images:
                    images.append(image)
        applied = doc.get("applied") or {}
        return DeviceRow(
            device_id=device_id,
            arch=str(doc.get("arch") or "?"),
            channel=str(doc.get("channel") or "?"),
            health=str(doc.get("health") or "unknown"),
            last_seen=_parse_time(doc.get("reportedAt")),
            offline=bool(doc.get("offline")),
            digests=tuple(digests),
            set_sequence=applied.get("sequence") if isinstance(applied, dict) else None,
            last_error=_error_text(doc),
            images=tuple(images),
            report_interval=_seconds(doc.get("heartbeatSeconds"))
            + _seconds(doc.get("pollSeconds")),
            rejections=_rejections(doc),
        )
    except (ValueError, KeyError, TypeError, AttributeError, InvalidInput) as exc:
        raise InvalidInput(f"status object {object_name} is malformed: {exc}") from exc


def with_versions(
    rows: Iterable[DeviceRow], version_of: Callable[[str], str | None]
) -> list[DeviceRow]:
    """Rows with ``versions`` filled from ``version_of(pinned image ref)`` (e.g. the image's
    ``org.opencontainers.image.version`` label); unknown ones are left out."""
    out = []
    for row in rows:
        found = [v for v in (version_of(i) for i in row.images) if v]
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
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def to_json(row: DeviceRow, now: datetime, stale_after: float) -> dict[str, Any]:
    out = asdict(row)
    out["last_seen"] = row.last_seen.isoformat() if row.last_seen else None
    out["problems"] = problems(row, now, stale_after)
    return out


def _seconds(value: Any) -> float:
    """A non-negative number of seconds from a report, 0 when absent or malformed."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return max(0.0, min(float(value), 7 * 86400.0))


def _digest_of(image: Any) -> str | None:
    if isinstance(image, str) and "@" in image:
        return image.rsplit("@", 1)[1]
    return None


def _error_text(doc: Mapping[str, Any]) -> str | None:
    rejection = doc.get("lastRejection")
    if isinstance(rejection, dict) and rejection.get("reason"):
        return f"{rejection.get('reason')}: {rejection.get('detail', '')}".strip()
    error = doc.get("lastError")
    if isinstance(error, dict):
        return f"{error.get('reason', 'error')}: {error.get('detail', '')}".strip()
    return str(error) if error else None


def _rejections(doc: Mapping[str, Any]) -> tuple[Rejection, ...]:
    """The report's last rejections, oldest first; malformed entries are left out."""
    raw = doc.get("rejections")
    if not isinstance(raw, list):
        raw = [doc["lastRejection"]] if isinstance(doc.get("lastRejection"), dict) else []
    out = []
    for item in raw[-MAX_REJECTIONS:]:
        if not isinstance(item, dict) or not isinstance(item.get("digest"), str):
            continue
        out.append(
            Rejection(
                reason=one_line(str(item.get("reason") or "rejected"), 64),
                detail=one_line(str(item.get("detail") or "")),
                at=one_line(str(item.get("at") or ""), 40),
                set_digest=one_line(item["digest"], 80),
            )
        )
    return tuple(out)


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

"""The dashboard's live state: the fleet index, the rollout states, version labels and
the model series, refreshed in the background (the I/O side of the dashboard).

Requests never touch the bucket: they read what the last refresh produced. A refresh
lists ``status/`` and ``rollouts/`` with metadata and fetches only what changed
(:mod:`edgefleet.operator.fleet_index`); a failed refresh keeps the previous state and is
shown on the page. The model series is sampled once per refresh from the devices' latest
windows and kept for ``SERIES_POINTS`` refreshes (in memory: it starts anew with the
process).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from edgefleet.core.bucket import ObjectInfo
from edgefleet.core.errors import EdgefleetError, InvalidInput
from edgefleet.operator import fleet, fleet_index
from edgefleet.operator.dashboard import data
from edgefleet.operator.fleet import DeviceRow

log = logging.getLogger(__name__)
ROLLOUT_PREFIX = "rollouts/"
MAX_ROLLOUT_BYTES = 256 * 1024
SERIES_POINTS = 720
VERSION_RETRY_SECONDS = 60.0


def parse_rollout(raw: bytes, info: ObjectInfo) -> dict[str, Any]:
    try:
        return data.rollout(json.loads(raw), info.name)
    except (ValueError, RecursionError, InvalidInput) as exc:
        raise InvalidInput(f"rollout state {fleet.clean(info.name)} is unusable: {exc}") from exc


class FleetService:
    def __init__(
        self,
        index: fleet_index.FleetIndex,
        *,
        version_of: Callable[[str], str | None] = lambda _image: None,
        stale_after: float = fleet.DEFAULT_STALE_SECONDS,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.index = index
        self.rollouts: fleet_index.Mirror[dict[str, Any]] = fleet_index.Mirror(
            index.source, ROLLOUT_PREFIX, parse_rollout, max_bytes=MAX_ROLLOUT_BYTES, workers=4
        )
        self.stale_after = stale_after
        self.now = now
        self._version_of = version_of
        self._versions: dict[str, str] = {}  # digest -> version label
        self._rows: list[DeviceRow] = []
        self._models: list[dict[str, Any]] = []
        self._built_at = 0.0
        self.series: deque[dict[str, Any]] = deque(maxlen=SERIES_POINTS)
        self.refreshed_at: datetime | None = None
        self.refresh_seconds: float | None = None
        self.last_refresh: dict[str, int | None] = {}
        self.error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading ----------------------------------------------------------------------

    def rows(self) -> list[DeviceRow]:
        with self._lock:
            return self._rows

    def models(self) -> list[dict[str, Any]]:
        """Per-version summaries as of the last refresh (see data.models)."""
        with self._lock:
            return self._models

    def versions(self) -> dict[str, str]:
        with self._lock:
            return dict(self._versions)

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.refreshed_at is not None,
            "refreshedAt": self.refreshed_at.isoformat() if self.refreshed_at else None,
            "refreshSeconds": self.refresh_seconds,
            "lastRefresh": self.last_refresh,
            "error": self.error,
            "devices": len(self.rows()),
            "unreadable": len(self.index.errors()),
            "bucket": self.index.source.name,
        }

    # -- refreshing -------------------------------------------------------------------

    def refresh(self) -> None:
        """One refresh; errors are kept for the page, the previous state stays."""
        start = time.monotonic()
        counter = self.index.requests
        before = counter.count if counter is not None else 0
        try:
            stats = self.index.refresh()
            self.rollouts.refresh()
        except EdgefleetError as exc:
            self.error = fleet.clean(str(exc))
            log.warning("dashboard refresh failed", extra={"fields": {"error": self.error}})
            return
        # Rows are rebuilt when reports changed, and once a minute for version labels a
        # registry could not give earlier (the lookup retries them after 60 s).
        stale_labels = time.monotonic() - self._built_at > VERSION_RETRY_SECONDS
        if stats.fetched or stats.removed or self.refreshed_at is None or stale_labels:
            self._built_at = time.monotonic()
            rows = self.index.rows()
            versions = self._lookup_versions(rows)
            with self._lock:
                self._versions = versions
                self._rows = [_with_versions(r, versions) for r in rows]
                self._models = data.models(self._rows, versions)
        now = self.now()
        self.series.append({"at": now.isoformat(), "models": self._models})
        self.error = None
        self.refreshed_at = now
        self.refresh_seconds = round(time.monotonic() - start, 3)
        self.last_refresh = {
            "fetched": stats.fetched,
            "removed": stats.removed,
            "requests": counter.count - before if counter is not None else None,
        }

    def _lookup_versions(self, rows: list[DeviceRow]) -> dict[str, str]:
        """digest -> version label, one lookup per distinct image (cached by the lookup)."""
        images = {image for r in rows for image in r.images}
        out: dict[str, str] = {}
        for image in sorted(images):
            version = self._version_of(image)
            if version:
                out[image.rsplit("@", 1)[1]] = fleet.clean(version, 80)
        return out

    def start(self, interval: float) -> None:
        """Refresh now and every ``interval`` seconds on a daemon thread until stop()."""

        def loop() -> None:
            while not self._stop.is_set():
                self.refresh()
                self._stop.wait(interval)

        self._thread = threading.Thread(target=loop, name="dashboard-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def _with_versions(row: DeviceRow, versions: dict[str, str]) -> DeviceRow:
    found = tuple(dict.fromkeys(versions[d] for d in row.digests if d in versions))
    return replace(row, versions=found) if found else row

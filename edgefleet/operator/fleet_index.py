"""An incremental index of the deploy bucket's status reports (and rollout states).

``edgefleet status`` used to read every ``status/*.json`` one by one: two requests per
device, ~60 s over 10,000 devices. The index lists the prefix with each object's metadata
(generation, MD5, size, write time: one request per 1,000 objects), fetches only the
objects whose generation changed since its last refresh (one request each, in parallel on
a bounded pool), and keeps everything else parsed in memory. The dashboard refreshes one
index every few seconds; ``edgefleet status`` builds one per run.

An object that cannot be fetched keeps its previous entry (the last good state stays in
force) and is fetched again next time; an object that cannot be parsed is remembered as
bad until its generation changes, so a broken report costs one fetch, not one per refresh.
Nothing here prints: callers render rows and errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from edgefleet.core.bucket import Blob, ObjectInfo, TooLarge
from edgefleet.core.errors import EdgefleetError, InvalidInput
from edgefleet.operator import fleet

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_WORKERS = 16
HISTORY_LENGTH = 20


class Source(Protocol):
    """What the index needs of a bucket (:class:`device.gcs_json.JsonBucket` has it)."""

    name: str

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def fetch(self, name: str, *, max_bytes: int | None = None) -> Blob | None: ...


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    """One object as last fetched: its metadata and parsed value, or why it is unusable."""

    info: ObjectInfo
    value: T | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RefreshStats:
    listed: int
    fetched: int
    removed: int
    failed: int
    seconds: float


class Mirror(Generic[T]):
    """The objects under ``prefix``, parsed by ``parse(data, info)``; :meth:`refresh`
    fetches only what changed. ``parse`` raises InvalidInput for an unusable object.
    With a ``cache``, the first refresh starts from the objects fetched by earlier runs
    (same generation: not fetched again) and every refresh stores what it fetched."""

    def __init__(
        self,
        source: Source,
        prefix: str,
        parse: Callable[[bytes, ObjectInfo], T],
        *,
        max_bytes: int,
        workers: int = DEFAULT_WORKERS,
        cache: DiskCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.prefix = prefix
        self._parse = parse
        self._max_bytes = max_bytes
        self._workers = max(1, workers)
        self._cache = cache
        self._clock = clock
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._entries: dict[str, Entry[T]] = {}
        self._from_cache = False  # the disk cache is read once, before the first listing
        self.refreshed = False

    def entries(self) -> dict[str, Entry[T]]:
        with self._lock:
            return dict(self._entries)

    def values(self) -> list[T]:
        return [e.value for e in self.entries().values() if e.value is not None]

    def errors(self) -> dict[str, str]:
        return {n: e.error for n, e in self.entries().items() if e.error}

    def refresh(self) -> RefreshStats:
        """List, fetch what changed (in parallel), forget what is gone. A failed listing
        raises (TransientError) and leaves the index as it was."""
        with self._refreshing:
            start = self._clock()
            if not self._from_cache and self._cache is not None:
                self._from_cache = True
                self._merge(
                    [
                        (info, self._entry(info, data))
                        for info, data in self._cache.load(self.prefix)
                    ],
                    [],
                )
            listing = {info.name: info for info in self.source.list_objects(self.prefix)}
            known = self.entries()
            changed = [i for n, i in listing.items() if _changed(known.get(n), i)]
            loaded: list[tuple[ObjectInfo, bytes] | None] = []
            if changed:
                with ThreadPoolExecutor(min(self._workers, len(changed))) as pool:
                    loaded = list(pool.map(self._fetch, changed))
            fetched = [(info, self._entry(info, data)) for info, data in filter(None, loaded)]
            gone = [n for n in known if n not in listing]
            self._merge(fetched, gone)
            if self._cache is not None:
                self._cache.save(self.prefix, [x for x in loaded if x is not None], gone)
            self.refreshed = True
            failed = len(changed) - len(fetched)
            return RefreshStats(
                len(listing), len(fetched), len(gone), failed, self._clock() - start
            )

    def _merge(self, fetched: list[tuple[ObjectInfo, Entry[T]]], gone: list[str]) -> None:
        with self._lock:
            for info, entry in fetched:
                self._entries[info.name] = entry
            for name in gone:
                self._entries.pop(name, None)
        self.changed(fetched, gone)

    def changed(self, fetched: list[tuple[ObjectInfo, Entry[T]]], gone: list[str]) -> None:
        """Hook for subclasses: called after each refresh with what it changed."""

    def _fetch(self, info: ObjectInfo) -> tuple[ObjectInfo, bytes] | None:
        """One object's bytes (and its metadata as fetched); None when it could not be
        fetched: the previous entry stays, and the next refresh tries again."""
        try:
            blob = self.source.fetch(info.name, max_bytes=self._max_bytes)
        except TooLarge:
            return info, b""  # remembered as unusable until its generation changes
        except EdgefleetError:
            return None
        if blob is None:
            return None  # deleted since the listing: the next listing drops it
        if blob.generation != info.generation:  # rewritten since the listing
            info = ObjectInfo(info.name, blob.generation, None, len(blob.data), None)
        return info, blob.data

    def _entry(self, info: ObjectInfo, data: bytes) -> Entry[T]:
        if not data and info.size:
            return Entry(info, None, f"{info.name} is {info.size} bytes, over {self._max_bytes}")
        try:
            return Entry(info, self._parse(data, info))
        except InvalidInput as exc:
            return Entry(info, None, str(exc))


def _changed(entry: Entry[Any] | None, info: ObjectInfo) -> bool:
    if entry is None:
        return True
    old = entry.info
    return old.generation != info.generation or (
        old.md5_hash is not None and info.md5_hash is not None and old.md5_hash != info.md5_hash
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a device ran at one report, as the index saw it change."""

    at: datetime | None
    channel: str
    digests: tuple[str, ...]
    health: str
    set_sequence: int | None


class FleetIndex(Mirror[fleet.DeviceRow]):
    """The fleet's status reports as rows, plus each device's recent history (what it
    ran at each report the index saw change, newest last)."""

    def __init__(self, source: Source, **kw: Any) -> None:
        super().__init__(
            source, fleet.STATUS_PREFIX, _parse_status, max_bytes=fleet.MAX_REPORT_BYTES, **kw
        )
        self.history: dict[str, deque[Snapshot]] = {}
        self.requests: CountingHttp | None = None  # set by open_index

    def rows(self) -> list[fleet.DeviceRow]:
        return self.values()

    def row(self, device_id: str) -> fleet.DeviceRow | None:
        entry = self.entries().get(f"{fleet.STATUS_PREFIX}{device_id}{fleet.STATUS_SUFFIX}")
        return entry.value if entry else None

    def changed(
        self, fetched: list[tuple[ObjectInfo, Entry[fleet.DeviceRow]]], gone: list[str]
    ) -> None:
        for _, entry in fetched:
            row = entry.value
            if row is None:
                continue
            snap = Snapshot(row.last_seen, row.channel, row.digests, row.health, row.set_sequence)
            past = self.history.setdefault(row.device_id, deque(maxlen=HISTORY_LENGTH))
            if not past or _differs(past[-1], snap):
                past.append(snap)
        for name in gone:
            self.history.pop(name[len(fleet.STATUS_PREFIX) : -len(fleet.STATUS_SUFFIX)], None)


def _differs(a: Snapshot, b: Snapshot) -> bool:
    return (a.channel, a.digests, a.health, a.set_sequence) != (
        b.channel,
        b.digests,
        b.health,
        b.set_sequence,
    )


def _parse_status(data: bytes, info: ObjectInfo) -> fleet.DeviceRow:
    return fleet.parse_report(data, info.name, updated=fleet.parse_time(info.updated))


class CountingHttp:
    """Wraps a urllib3-like ``request`` and counts calls (benches and tests read it)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.count = 0

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        with self._lock:
            self.count += 1
        return self._inner.request(method, url, **kwargs)


def connect(
    bucket: str, *, workers: int = DEFAULT_WORKERS, env: Mapping[str, str] | None = None
) -> tuple[Source, CountingHttp]:
    """A read-only bucket handle for an index (real GCS or the emulator) with ``workers``
    kept-alive connections, and the counter of its requests."""
    from device import gcs_json

    counters: list[CountingHttp] = []

    def count(http: Any) -> CountingHttp:
        counters.append(CountingHttp(http))
        return counters[0]

    handle = gcs_json.connect(
        bucket,
        env=os.environ if env is None else env,
        connections=workers,
        scope=gcs_json.READ_ONLY_SCOPE,
        retry=gcs_json.Retry(timeout=2.0),
        wrap=count,
    )
    return handle, counters[0]


class DiskCache:
    """Objects an index fetched, kept in one SQLite file per bucket so that the next run
    (``edgefleet status``, a restarted dashboard) fetches only what changed since.

    The raw bytes are kept and parsed again on load, under the current parsing rules: a
    cached report is as untrusted as the bucket's. The file lives in the operator's own
    cache folder (mode 0700); any failure to read or write it is logged and ignored, so
    the cache can only make a run faster, never wrong or failing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_bucket(cls, bucket: str, endpoint: str, env: Mapping[str, str]) -> DiskCache:
        base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgefleet" / "index"
        key = hashlib.sha256(f"{endpoint}\n{bucket}".encode()).hexdigest()[:20]
        return cls(base / f"{key}.sqlite")

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0)
        db.execute(
            "CREATE TABLE IF NOT EXISTS objects (name TEXT PRIMARY KEY, generation INTEGER,"
            " md5 TEXT, size INTEGER, updated TEXT, data BLOB)"
        )
        return db

    def load(self, prefix: str) -> list[tuple[ObjectInfo, bytes]]:
        try:
            with contextlib.closing(self._open()) as db:
                rows = db.execute(
                    "SELECT name, generation, md5, size, updated, data FROM objects"
                    " WHERE substr(name, 1, ?) = ?",
                    (len(prefix), prefix),
                ).fetchall()
        except (sqlite3.Error, OSError) as exc:
            log.warning(
                "fleet index cache unreadable", extra=_f(path=str(self.path), error=str(exc))
            )
            return []
        return [(ObjectInfo(n, int(g), m, int(z), u), bytes(d)) for n, g, m, z, u, d in rows]

    def save(self, prefix: str, fetched: list[tuple[ObjectInfo, bytes]], gone: list[str]) -> None:
        if not fetched and not gone:
            return
        try:
            with contextlib.closing(self._open()) as db, db:
                db.executemany(
                    "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)",
                    [(i.name, i.generation, i.md5_hash, i.size, i.updated, d) for i, d in fetched],
                )
                db.executemany("DELETE FROM objects WHERE name = ?", [(n,) for n in gone])
        except (sqlite3.Error, OSError) as exc:
            log.warning(
                "fleet index cache not written", extra=_f(path=str(self.path), error=str(exc))
            )


def _f(**values: Any) -> Mapping[str, Any]:
    return {"fields": values}


def open_index(
    bucket: str,
    *,
    env: Mapping[str, str] | None = None,
    workers: int = DEFAULT_WORKERS,
    cache: bool = True,
) -> FleetIndex:
    """The fleet index of ``bucket`` (real GCS or STORAGE_EMULATOR_HOST), with its disk
    cache unless ``cache`` is False. ``index.source.requests`` counts its requests."""
    from device import gcs_json

    env = os.environ if env is None else env
    source, counter = connect(bucket, workers=workers, env=env)
    endpoint = env.get("STORAGE_EMULATOR_HOST") or gcs_json.GCS_ENDPOINT
    disk = DiskCache.for_bucket(bucket, endpoint, env) if cache else None
    index = FleetIndex(source, workers=workers, cache=disk)
    index.requests = counter
    return index

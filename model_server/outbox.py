"""Store-and-forward outbox for telemetry: an SQLite file on local disk.

Why SQLite: one small file, atomic appends and deletes without a file per message, and it
survives process crashes (WAL journal; ``synchronous=NORMAL`` may lose the last
transactions on power loss, never corrupt the file). A message leaves the outbox only
after Pub/Sub acknowledged it, so delivery is at-least-once; consumers de-duplicate by the
message ``id``.

Bounded disk: at most ``max_messages`` are kept. When a new message would exceed that,
the OLDEST messages are dropped and counted (``dropped``): on a device offline for long,
recent predictions are worth more than old ones, and inference must never stop because
telemetry cannot be sent.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.core.errors import ConfigError
from edgefleet.core.logs import fields

log = logging.getLogger(__name__)

FILENAME = "outbox.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL
)
"""


@dataclass(frozen=True)
class Message:
    seq: int
    id: str
    body: bytes


class Outbox:
    """Thread-safe: request threads append, the publisher thread peeks and acknowledges."""

    def __init__(self, directory: Path, max_messages: int) -> None:
        self.max_messages = max_messages
        self.path = directory / FILENAME
        self.dropped = 0
        self._lock = threading.Lock()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the telemetry outbox {directory}: {exc.strerror}; set "
                "OUTBOX_DIR to a writable directory or --telemetry off"
            ) from None
        self._db = self._open()
        self._count = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)
        db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return db

    def _open(self) -> sqlite3.Connection:
        """Open the outbox; a corrupt file is moved aside (kept for forensics), not fatal."""
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
                raise ConfigError(f"cannot open the telemetry outbox {self.path}: {exc}") from None
            aside = self.path.with_name(f"{FILENAME}.corrupt-{int(time.time())}")
            log.error(
                "telemetry outbox is corrupt; moved aside, starting empty",
                extra=fields(path=str(self.path), moved_to=str(aside), error=str(exc)),
            )
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    self.path.with_name(FILENAME + suffix).unlink()
            return self._connect()

    def __len__(self) -> int:
        return self._count

    def put(self, message_id: str, body: bytes) -> int:
        """Append one message; returns how many old messages were dropped to make room."""
        with self._lock:
            self._db.execute(
                "INSERT INTO outbox (id, body, created) VALUES (?, ?, ?)",
                (message_id, body, time.time()),
            )
            self._count += 1
            excess = self._count - self.max_messages
            if excess <= 0:
                return 0
            cur = self._db.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                (excess,),
            )
            self._count -= cur.rowcount
            self.dropped += cur.rowcount
            return cur.rowcount

    def peek(self, limit: int) -> list[Message]:
        """The oldest ``limit`` messages, left in place until :meth:`ack`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, id, body FROM outbox ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [Message(int(seq), str(mid), bytes(body)) for seq, mid, body in rows]

    def ack(self, messages: list[Message]) -> None:
        """Delete messages Pub/Sub acknowledged (some may already have been dropped)."""
        if not messages:
            return
        with self._lock:
            cur = self._db.executemany(
                "DELETE FROM outbox WHERE seq = ?", [(m.seq,) for m in messages]
            )
            self._count -= cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

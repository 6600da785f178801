"""The device's status report, kept on disk and sent to ``status/DEVICE_ID.json``.

The report is always written locally first (``STATE_DIR/status.json``), so an operator on
the device sees it even when the bucket is unreachable; it is uploaded when its content
changed, when an earlier upload failed (offline), or as a heartbeat. A no-op poll with
nothing new therefore costs no upload.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.core.bucket import Conflict, DeviceBucket
from edgefleet.core.errors import TransientError
from edgefleet.core.fsutil import atomic_write

log = logging.getLogger(__name__)

# Fields that change on every poll; they do not make a report "new".
VOLATILE = ("reportedAt", "lastPoll", "lastSync")


def _compact(doc: dict[str, Any]) -> bytes:
    """A report or the outbox as compact JSON: json's C encoder (``indent`` would select
    its pure-Python one, ~3x slower, on every report of every device)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def fingerprint(status: dict[str, Any]) -> str:
    stable = {k: v for k, v in status.items() if k not in VOLATILE}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


@dataclass
class Outbox:
    status: dict[str, Any]
    sent: bool
    sent_fingerprint: str = ""
    sent_at: float = 0.0


class StatusReporter:
    def __init__(
        self,
        bucket: DeviceBucket,
        object_name: str,
        path: Path,
        *,
        heartbeat_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self.bucket = bucket
        self.object_name = object_name
        self.path = path
        self.heartbeat_seconds = heartbeat_seconds
        self.clock = clock
        self.outbox = self._load()

    def due(self, status_changed_hint: bool = False) -> bool:
        """Whether :meth:`report` would upload: a hint of new content, an unsent report,
        or a heartbeat."""
        return (
            status_changed_hint
            or not self.outbox.sent
            or self.clock() - self.outbox.sent_at >= self.heartbeat_seconds
        )

    def report(self, status: dict[str, Any]) -> bool:
        """Keep ``status`` on disk and upload it when needed; True when it was sent."""
        fp = fingerprint(status)
        new = fp != self.outbox.sent_fingerprint
        heartbeat = self.clock() - self.outbox.sent_at >= self.heartbeat_seconds
        must_send = new or heartbeat or not self.outbox.sent
        self.outbox = Outbox(
            status, not must_send, self.outbox.sent_fingerprint, self.outbox.sent_at
        )
        if must_send:
            try:
                self.bucket.write(
                    self.object_name,
                    _compact(status),
                    content_type="application/json",
                )
            except (TransientError, Conflict) as exc:
                log.warning(
                    "status kept on disk: bucket unreachable",
                    extra={"fields": {"error": str(exc)}},
                )
            else:
                self.outbox = Outbox(status, True, fp, self.clock())
        self._save()
        return self.outbox.sent and must_send

    def _load(self) -> Outbox:
        try:
            doc = json.loads(self.path.read_bytes())
            return Outbox(
                dict(doc["status"]),
                bool(doc["sent"]),
                str(doc.get("sentFingerprint") or ""),
                float(doc.get("sentAt") or 0.0),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return Outbox({}, True)

    def _save(self) -> None:
        doc = {
            "status": self.outbox.status,
            "sent": self.outbox.sent,
            "sentFingerprint": self.outbox.sent_fingerprint,
            "sentAt": self.outbox.sent_at,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, _compact(doc))

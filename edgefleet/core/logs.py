"""Structured logs: one JSON object per line, in Cloud Logging's structured format.

``severity`` and ``message`` are the fields Cloud Logging reads; anything passed as
``extra={"fields": {...}}`` is merged into the entry, so a log line can be searched by
image, channel, device and so on.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "severity": record.levelname,
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(component: str, level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Route the root logger to ``stream`` (stderr) as JSON lines. Call once from a main."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def fields(**values: Any) -> dict[str, Any]:
    """``log.info("msg", extra=fields(image=..., channel=...))``."""
    return {"fields": values}

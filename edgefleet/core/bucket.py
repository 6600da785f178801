"""The object-store contract every side shares: what a bucket read returns, the errors a
write or a size bound raises, and the small protocol a device's sync agent needs.

Two adapters implement :class:`DeviceBucket`: :class:`edgefleet.cloud.storage.Bucket`
(google-cloud-storage, control plane) and :class:`device.gcs_json.JsonBucket` (urllib3
over the JSON API, lean enough for a device). Both raise these errors, so callers never
see a library's own exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from edgefleet.core.errors import EdgefleetError


class Conflict(EdgefleetError):
    """A generation precondition failed: someone else wrote first."""


class TooLarge(EdgefleetError):
    """An object is larger than the caller accepts."""


@dataclass(frozen=True, slots=True)
class Blob:
    name: str
    data: bytes
    generation: int


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """An object's metadata as a listing returns it."""

    name: str
    generation: int
    md5_hash: str | None
    size: int
    updated: str | None = None  # RFC 3339 time the store wrote this generation, when known


class DeviceBucket(Protocol):
    """The part of :class:`Bucket` a device's sync agent uses, so that it can run on the
    lean :class:`device.gcs_json.JsonBucket` (same errors, same return values)."""

    name: str

    def generation(self, name: str) -> int: ...

    def read(self, name: str, *, max_bytes: int | None = None) -> Blob | None: ...

    def fetch(self, name: str, *, max_bytes: int | None = None) -> Blob | None: ...

    def write(
        self,
        name: str,
        data: bytes,
        *,
        if_generation_match: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> int: ...

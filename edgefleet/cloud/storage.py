"""Thin adapter over Google Cloud Storage (or fake-gcs-server via STORAGE_EMULATOR_HOST).

Only what the components need: read with generation, metadata-only generation checks,
writes and deletes guarded by generation preconditions, listing. Errors are mapped to
edgefleet's: a failed precondition is :class:`Conflict`, anything a retry may fix is
:class:`~edgefleet.core.errors.TransientError`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from edgefleet.core.bucket import Blob, Conflict, ObjectInfo, TooLarge
from edgefleet.core.errors import ConfigError, TransientError

if TYPE_CHECKING:
    from google.cloud import storage

LOCAL_PROJECT = "edgefleet-local"


@functools.cache
def _errors() -> tuple[ModuleType, tuple[type[BaseException], ...]]:
    """google.api_core's exceptions and the transient ones, imported on first use: this
    importing this module must not cost a process that never talks to GCS ~45 MiB."""
    import requests
    from google.api_core import exceptions as gexc

    transient = (
        gexc.TooManyRequests,
        gexc.InternalServerError,
        gexc.BadGateway,
        gexc.ServiceUnavailable,
        gexc.GatewayTimeout,
        gexc.RetryError,
        ConnectionError,
        TimeoutError,
        # A refused or dropped connection, once the retry (if any) gives up.
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
    )
    return gexc, transient


def make_client(project: str | None = None) -> storage.Client:
    """A client for real GCS, or for the emulator when STORAGE_EMULATOR_HOST is set."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or LOCAL_PROJECT, credentials=AnonymousCredentials())
    return storage.Client(project=project)


class Bucket:
    """One bucket. ``timeout`` bounds every request, so an outage never hangs a caller."""

    def __init__(
        self,
        client: storage.Client,
        name: str,
        *,
        timeout: float = 10.0,
        retry: Any = None,
    ) -> None:
        """``retry``: a ``google.api_core.retry.Retry`` for every call (None = the library's
        default, which keeps retrying a refused connection for up to two minutes)."""
        if not name:
            raise ConfigError("no bucket name: set BUCKET / DEPLOY_BUCKET")
        self.name = name
        self._client = client
        self._bucket = client.bucket(name)
        self._timeout = timeout
        self._retry: dict[str, Any] = {} if retry is None else {"retry": retry}

    def read(self, name: str, *, max_bytes: int | None = None) -> Blob | None:
        """The object's bytes and generation, or ``None`` when it does not exist."""
        gexc, transient = _errors()
        blob = self._bucket.blob(name)
        try:
            blob.reload(timeout=self._timeout, **self._retry)
            if max_bytes is not None and (blob.size or 0) > max_bytes:
                raise TooLarge(f"gs://{self.name}/{name} is {blob.size} bytes, over {max_bytes}")
            data = blob.download_as_bytes(
                if_generation_match=blob.generation, timeout=self._timeout, **self._retry
            )
        except gexc.NotFound:
            return None
        except gexc.PreconditionFailed as exc:
            raise Conflict(f"gs://{self.name}/{name} changed while being read") from exc
        except transient as exc:
            raise TransientError(f"reading gs://{self.name}/{name}: {exc}") from exc
        return Blob(name, data, int(blob.generation or 0))

    def fetch(self, name: str, *, max_bytes: int | None = None) -> Blob | None:
        """Like :meth:`read` in ONE request (the generation comes from the download's
        ``x-goog-generation`` header): for hot paths that count storage operations."""
        gexc, transient = _errors()
        blob = self._bucket.blob(name)
        try:
            data = blob.download_as_bytes(timeout=self._timeout, **self._retry)
        except gexc.NotFound:
            return None
        except transient as exc:
            raise TransientError(f"reading gs://{self.name}/{name}: {exc}") from exc
        if max_bytes is not None and len(data) > max_bytes:
            raise TooLarge(f"gs://{self.name}/{name} is {len(data)} bytes, over {max_bytes}")
        if not blob.generation:
            return self.read(name, max_bytes=max_bytes)  # no header: fall back to two requests
        return Blob(name, data, int(blob.generation))

    def generation(self, name: str) -> int:
        """Metadata-only: the live generation, 0 when the object does not exist."""
        _, transient = _errors()
        try:
            blob = self._bucket.get_blob(name, timeout=self._timeout, **self._retry)
        except transient as exc:
            raise TransientError(f"reading gs://{self.name}/{name}: {exc}") from exc
        return int(blob.generation) if blob is not None and blob.generation else 0

    def write(
        self,
        name: str,
        data: bytes,
        *,
        if_generation_match: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> int:
        """Write ``data``; with ``if_generation_match`` (0 = must not exist) or raise Conflict."""
        gexc, transient = _errors()
        blob = self._bucket.blob(name)
        try:
            blob.upload_from_string(
                data,
                content_type=content_type,
                if_generation_match=if_generation_match,
                timeout=self._timeout,
                **self._retry,
            )
        except gexc.PreconditionFailed as exc:
            raise Conflict(f"gs://{self.name}/{name} was written by someone else") from exc
        except transient as exc:
            raise TransientError(f"writing gs://{self.name}/{name}: {exc}") from exc
        return int(blob.generation or 0)

    def delete(self, name: str, *, if_generation_match: int | None = None) -> bool:
        """Delete; False when already gone. Raise Conflict when the generation moved."""
        gexc, transient = _errors()
        try:
            self._bucket.blob(name).delete(
                if_generation_match=if_generation_match, timeout=self._timeout, **self._retry
            )
        except gexc.NotFound:
            return False
        except gexc.PreconditionFailed as exc:
            raise Conflict(f"gs://{self.name}/{name} changed before delete") from exc
        except transient as exc:
            raise TransientError(f"deleting gs://{self.name}/{name}: {exc}") from exc
        return True

    def list(self, prefix: str) -> Iterator[str]:
        _, transient = _errors()
        try:
            for blob in self._client.list_blobs(
                self.name, prefix=prefix, timeout=self._timeout, **self._retry
            ):
                yield blob.name
        except transient as exc:
            raise TransientError(f"listing gs://{self.name}/{prefix}: {exc}") from exc

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        """Like :meth:`list`, with each object's generation and MD5 (one request per page)."""
        _, transient = _errors()
        try:
            for blob in self._client.list_blobs(
                self.name, prefix=prefix, timeout=self._timeout, **self._retry
            ):
                yield ObjectInfo(
                    blob.name, int(blob.generation or 0), blob.md5_hash, int(blob.size or 0)
                )
        except transient as exc:
            raise TransientError(f"listing gs://{self.name}/{prefix}: {exc}") from exc

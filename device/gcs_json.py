"""The device's GCS adapter: the few JSON API calls the sync agent makes, over urllib3.

google-cloud-storage (with requests and google-api-core) keeps ~45 MiB resident in a
process whose only job is to poll one object, which alone breaks the device's 40 MiB
budget. This adapter implements :class:`edgefleet.cloud.storage.DeviceBucket` with the same
errors and return values as :class:`edgefleet.cloud.storage.Bucket`: an object's generation
(metadata GET), its bytes (media GET, bounded), and an upload. Credentials come from
``google.auth`` (application default credentials, urllib3 transport); against the
emulator (STORAGE_EMULATOR_HOST) requests are anonymous, as ``storage.make_client`` does.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from edgefleet.core.bucket import Blob, Conflict, ObjectInfo, TooLarge
from edgefleet.core.errors import ConfigError, EdgefleetError, TransientError
from edgefleet.core.google_http import Http, authorized, drop, emulator_endpoint, read_at_most

GCS_ENDPOINT = "https://storage.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
# Statuses a retry may fix (the ones google-cloud-storage retries).
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class StorageError(EdgefleetError):
    """GCS answered with an error no retry fixes (e.g. 401/403: credentials, permissions)."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Back-off for transient failures, like ``google.api_core.retry.Retry``: sleep
    ``initial`` seconds, times ``multiplier`` up to ``maximum``; give up (TransientError)
    once ``timeout`` seconds of retrying are spent. ``timeout=0``: one attempt only."""

    initial: float = 0.2
    maximum: float = 1.0
    multiplier: float = 2.0
    timeout: float = 5.0


NO_RETRY = Retry(timeout=0.0)


class JsonBucket:
    """One bucket over the GCS JSON API. ``timeout`` bounds every connect and read, and
    ``retry`` bounds the retrying, so a refused connection or an outage never hangs."""

    def __init__(
        self,
        name: str,
        http: Http,
        *,
        endpoint: str = GCS_ENDPOINT,
        timeout: float = 10.0,
        retry: Retry = Retry(),
        transient_errors: tuple[type[BaseException], ...] = (),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``transient_errors``: more exceptions of ``http`` a retry may fix (besides
        urllib3's and OSError), e.g. google.auth's TransportError."""
        if not name:
            raise ConfigError("no bucket name: set BUCKET / DEPLOY_BUCKET")
        self.name = name
        self._http = http
        self._base = endpoint.rstrip("/")
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._retry = retry
        self._transient = (urllib3.exceptions.HTTPError, OSError, *transient_errors)
        self._sleep = sleep
        self._clock = clock

    # -- the DeviceBucket calls -----------------------------------------------------------

    def generation(self, name: str) -> int:
        """Metadata-only: the live generation, 0 when the object does not exist."""
        meta = self._metadata(name, "generation", "reading")
        return int(meta.get("generation") or 0) if meta is not None else 0

    def read(self, name: str, *, max_bytes: int | None = None) -> Blob | None:
        """The object's bytes and generation, or ``None`` when it does not exist. Two
        requests: the size is checked before the download, and the download is pinned to
        the generation seen (Conflict when the object was replaced in between)."""
        meta = self._metadata(name, "generation,size", "reading")
        if meta is None:
            return None
        generation = int(meta.get("generation") or 0)
        size = int(meta.get("size") or 0)
        if max_bytes is not None and size > max_bytes:
            raise TooLarge(f"gs://{self.name}/{name} is {size} bytes, over {max_bytes}")
        params = {"alt": "media", "ifGenerationMatch": str(generation)}
        got = self._download(name, params, max_bytes, conflict="changed while being read")
        if got is None:
            return None
        if got[1] and got[1] != generation:  # the emulator ignores ifGenerationMatch here
            raise Conflict(f"gs://{self.name}/{name} changed while being read")
        return Blob(name, got[0], generation)

    def fetch(self, name: str, *, max_bytes: int | None = None) -> Blob | None:
        """Like :meth:`read` in ONE request (the generation comes from the download's
        ``x-goog-generation`` header): for hot paths that count storage operations."""
        got = self._download(name, {"alt": "media"}, max_bytes, conflict="changed")
        if got is None:
            return None
        data, generation = got
        if not generation:
            return self.read(name, max_bytes=max_bytes)  # no header: fall back to two requests
        return Blob(name, data, generation)

    def write(
        self,
        name: str,
        data: bytes,
        *,
        if_generation_match: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> int:
        """Write ``data``; with ``if_generation_match`` (0 = must not exist) or raise Conflict.
        A retried write whose first attempt landed can also end in Conflict."""
        params = {"uploadType": "multipart"}
        if if_generation_match is not None:
            params["ifGenerationMatch"] = str(if_generation_match)
        url = f"{self._base}/upload/storage/v1/b/{_q(self.name)}/o?{_query(params)}"
        # Multipart (metadata + media), as google-cloud-storage sends small objects: the
        # emulator enforces ifGenerationMatch on this upload type.
        boundary = "==edgefleet-" + os.urandom(12).hex() + "=="
        meta = json.dumps({"name": name, "contentType": content_type}).encode()
        body = b"".join(
            (
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                meta,
                f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            )
        )
        resp = self._request(
            "POST", url, f"writing gs://{self.name}/{name}", body=body,
            headers={"Content-Type": f'multipart/related; boundary="{boundary}"'},
        )  # fmt: skip
        body = _finish(resp)
        if resp.status == 412:
            raise Conflict(f"gs://{self.name}/{name} was written by someone else")
        self._check(resp.status, body, f"writing gs://{self.name}/{name}")
        return int(_json(body, f"writing gs://{self.name}/{name}").get("generation") or 0)

    def list_objects(self, prefix: str, *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` with its generation, MD5, size and write time:
        one request per ``page_size`` objects, only the fields an index compares."""
        what = f"listing gs://{self.name}/{prefix}"
        params = {
            "prefix": prefix,
            "maxResults": str(page_size),
            "fields": "items(name,generation,md5Hash,size,updated),nextPageToken",
        }
        while True:
            url = f"{self._base}/storage/v1/b/{_q(self.name)}/o?{_query(params)}"
            resp = self._request("GET", url, what)
            body = _finish(resp)
            self._check(resp.status, body, what)
            page = _json(body, what)
            for item in page.get("items") or []:
                if not isinstance(item, dict) or not item.get("name"):
                    continue
                yield ObjectInfo(
                    str(item["name"]),
                    int(item.get("generation") or 0),
                    item.get("md5Hash"),
                    int(item.get("size") or 0),
                    item.get("updated"),
                )
            token = page.get("nextPageToken")
            if not token:
                return
            params["pageToken"] = str(token)

    # -- HTTP ---------------------------------------------------------------------------

    def _object_url(self, name: str, *, download: bool = False) -> str:
        prefix = "/download" if download else ""
        return f"{self._base}{prefix}/storage/v1/b/{_q(self.name)}/o/{_q(name)}"

    def _metadata(self, name: str, fields: str, verb: str) -> dict[str, Any] | None:
        what = f"{verb} gs://{self.name}/{name}"
        resp = self._request("GET", f"{self._object_url(name)}?{_query({'fields': fields})}", what)
        body = _finish(resp)
        if resp.status == 404:
            return None
        self._check(resp.status, body, what)
        return _json(body, what)

    def _download(
        self, name: str, params: Mapping[str, str], max_bytes: int | None, *, conflict: str
    ) -> tuple[bytes, int] | None:
        """(bytes, generation from the header or 0), None on 404. Never reads more than
        ``max_bytes`` + 1 bytes of the body: an oversized object is cut off, not fetched."""
        what = f"reading gs://{self.name}/{name}"
        url = f"{self._object_url(name, download=True)}?{_query(params)}"
        resp = self._request("GET", url, what, preload=False)
        if resp.status != 200:
            body = _finish(resp)
            if resp.status == 404:
                return None
            if resp.status == 412:
                raise Conflict(f"gs://{self.name}/{name} {conflict}")
            self._check(resp.status, body, what)
        length = resp.headers.get("Content-Length")
        try:
            if max_bytes is not None and length is not None and int(length) > max_bytes:
                drop(resp)
                raise TooLarge(f"gs://{self.name}/{name} is {length} bytes, over {max_bytes}")
            data = read_at_most(resp, None if max_bytes is None else max_bytes + 1)
        except self._transient as exc:
            drop(resp)
            raise TransientError(f"{what}: {exc}") from exc
        if max_bytes is not None and len(data) > max_bytes:
            drop(resp)
            raise TooLarge(f"gs://{self.name}/{name} is over {max_bytes} bytes")
        _finish(resp)
        generation = resp.headers.get("x-goog-generation") or "0"
        return data, int(generation) if generation.isdigit() else 0

    def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        preload: bool = True,
    ) -> urllib3.BaseHTTPResponse:
        """One call, retried on transient failures until the retry budget is spent."""
        give_up = self._clock() + self._retry.timeout
        delay = self._retry.initial
        while True:
            try:
                resp = self._http.request(
                    method,
                    url,
                    body=body,
                    headers=dict(headers or {}),
                    timeout=self._timeout,
                    retries=False,
                    redirect=False,
                    preload_content=preload,
                )
            except self._transient as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status not in _TRANSIENT_STATUS:
                    return resp
                error = f"HTTP {resp.status}"
                drop(resp)
            if self._clock() + delay > give_up:
                raise TransientError(f"{what}: {error}")
            self._sleep(delay)
            delay = min(delay * self._retry.multiplier, self._retry.maximum)

    def _check(self, status: int, body: bytes, what: str) -> None:
        if status >= 300:
            message = body[:300].decode("utf-8", "replace")
            raise StorageError(f"{what}: HTTP {status}: {' '.join(message.split())}")


def connect(
    name: str,
    *,
    timeout: float = 10.0,
    retry: Retry = Retry(),
    env: Mapping[str, str] = os.environ,
    connections: int = 2,
    scope: str = SCOPE,
    wrap: Callable[[Http], Http] = lambda http: http,
) -> JsonBucket:
    """The bucket on real GCS (application default credentials) or, when
    STORAGE_EMULATOR_HOST is set, on the emulator (anonymous, plain HTTP allowed).
    ``connections``: kept-alive connections (a device needs 2; an operator's index more);
    ``wrap``: wraps the HTTP client (e.g. to count requests)."""
    http = urllib3.PoolManager(maxsize=connections)
    emulator = env.get("STORAGE_EMULATOR_HOST", "").strip()
    if emulator:
        endpoint = emulator_endpoint(emulator)
        return JsonBucket(name, wrap(http), endpoint=endpoint, timeout=timeout, retry=retry)
    signed, transient = authorized(http, scope, f"gs://{name}")
    return JsonBucket(name, wrap(signed), timeout=timeout, retry=retry, transient_errors=transient)


def _q(segment: str) -> str:
    """One URL path segment: object names hold '/', which must be escaped."""
    return quote(segment, safe="")


def _query(params: Mapping[str, str]) -> str:
    return urlencode(params, quote_via=quote, safe="")


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise TransientError(f"{what}: the answer is not JSON") from exc
    if not isinstance(doc, dict):
        raise TransientError(f"{what}: the answer is not a JSON object")
    return doc


def _finish(resp: urllib3.BaseHTTPResponse) -> bytes:
    """The (already read or small) body; the connection goes back to the pool."""
    body = resp.data
    resp.release_conn()
    return body

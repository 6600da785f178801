"""urllib3 for Google's JSON APIs: the credentials, the bounded read, the failure kinds.

The device's processes speak the few Google APIs they need (GCS in the sync agent,
Pub/Sub in the model server) as plain HTTPS + JSON over urllib3 instead of through the
client libraries: google-cloud-storage and google-cloud-pubsub bring requests, gRPC,
protobuf and google-api-core, tens of MiB resident on a board whose memory is the
model's. This module is what those adapters share. Against an emulator requests are
anonymous (the emulator's host is given); off it, ``google.auth``'s application default
credentials sign every request (imported only then: ~12 MiB).
"""

from __future__ import annotations

from typing import Any, Protocol

import urllib3

from edgefleet.core.errors import ConfigError

CHUNK = 64 * 1024


class Http(Protocol):
    """What the adapters need of urllib3's PoolManager (or google.auth's AuthorizedHttp)."""

    def request(self, method: str, url: str, **kwargs: Any) -> urllib3.BaseHTTPResponse: ...


def authorized(
    pool: urllib3.PoolManager, scope: str, what: str
) -> tuple[Http, tuple[type[Exception], ...]]:
    """``pool`` signed with the application default credentials for ``scope``, and the
    exceptions that mean "credentials could not be fetched right now" (a retry may help).
    ``what`` names the resource for the error when there are no credentials at all."""
    import google.auth
    from google.auth import exceptions as auth_exc
    from google.auth.transport.urllib3 import AuthorizedHttp

    try:
        credentials, _ = google.auth.default(scopes=[scope])
    except auth_exc.DefaultCredentialsError as exc:
        raise ConfigError(
            f"no Google credentials for {what}: {exc} "
            "(set GOOGLE_APPLICATION_CREDENTIALS or run on a machine with a service account)"
        ) from exc
    return AuthorizedHttp(credentials, http=pool), (auth_exc.TransportError, auth_exc.RefreshError)


def emulator_endpoint(host: str) -> str:
    """An emulator's ``host:port`` (or URL) as the base URL of its plain-HTTP API."""
    return host if "://" in host else f"http://{host}"


def read_at_most(resp: urllib3.BaseHTTPResponse, limit: int | None) -> bytes:
    """The body, but never more than ``limit`` bytes of it (None: all)."""
    chunks: list[bytes] = []
    size = 0
    while limit is None or size < limit:
        want = CHUNK if limit is None else min(CHUNK, limit - size)
        chunk = resp.read(want)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def drop(resp: urllib3.BaseHTTPResponse) -> None:
    """Give up on a body without reading it: close the connection, do not drain it."""
    resp.close()
    resp.release_conn()

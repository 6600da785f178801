"""The device's lean GCS adapter (device.gcs_json) against the real fake-gcs-server,
checked against edgefleet.cloud.storage.Bucket on the same bucket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import urllib3

from device import gcs_json
from edgefleet.core.bucket import Blob, Conflict, TooLarge
from edgefleet.core.errors import TransientError

# A name needing every kind of escaping: '/' inside a path segment, space, '?', '#', '%'.
ODD_NAME = "x86_64/beta/web pod?v=1#frag%2F+ä.json"


@pytest.fixture
def lean(bucket, gcs) -> gcs_json.JsonBucket:
    """The adapter on the ``bucket`` fixture's emulator bucket, made by the device's factory."""
    return gcs_json.connect(bucket.name, timeout=5.0, retry=gcs_json.NO_RETRY, env=gcs.env())


def test_round_trip_with_the_full_client_and_escaped_names(bucket, lean) -> None:
    gen = lean.write(ODD_NAME, b"from lean", content_type="application/json")
    assert gen > 0
    assert bucket.read(ODD_NAME) == Blob(ODD_NAME, b"from lean", gen)
    assert list(bucket.list("x86_64/beta/")) == [ODD_NAME]
    gen2 = bucket.write(ODD_NAME, b"from full client")
    assert lean.generation(ODD_NAME) == gen2 == bucket.generation(ODD_NAME)
    assert lean.read(ODD_NAME) == Blob(ODD_NAME, b"from full client", gen2)
    assert (
        lean.fetch(ODD_NAME) == bucket.fetch(ODD_NAME) == Blob(ODD_NAME, b"from full client", gen2)
    )
    # The parent "folder" is not the object: escaping kept the name whole.
    assert lean.generation("x86_64/beta") == 0


def test_missing_object(lean) -> None:
    assert lean.generation("nope/none.json") == 0
    assert lean.read("nope/none.json") is None
    assert lean.fetch("nope/none.json", max_bytes=10) is None


def test_generation_preconditions(bucket, lean) -> None:
    first = lean.write("s/a.json", b"1", if_generation_match=0)
    with pytest.raises(Conflict):
        lean.write("s/a.json", b"2", if_generation_match=0)
    with pytest.raises(Conflict):
        lean.write("s/a.json", b"2", if_generation_match=first + 12345)
    second = lean.write("s/a.json", b"2", if_generation_match=first)
    assert second != first
    assert bucket.read("s/a.json") == Blob("s/a.json", b"2", second)


class Recording:
    """Wraps the real PoolManager: counts body bytes the adapter reads and can run a hook
    after each request (to change the object between two requests)."""

    def __init__(self) -> None:
        self.http = urllib3.PoolManager()
        self.body_bytes = 0
        self.calls: list[str] = []
        self.after: Any = None

    def request(self, method: str, url: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
        resp = self.http.request(method, url, **kwargs)
        self.calls.append(f"{method} {url}")
        if not kwargs.get("preload_content", True):
            real_read = resp.read

            def read(amt: int | None = None, **kw: Any) -> bytes:
                data = real_read(amt, **kw)
                self.body_bytes += len(data)
                return data

            resp.read = read  # type: ignore[method-assign]
        if self.after is not None:
            hook, self.after = self.after, None
            hook()
        return resp


def test_oversized_object_is_not_downloaded(bucket, gcs) -> None:
    big = b"x" * (3 * 1024 * 1024)
    gen = bucket.write("big.json", big)
    rec = Recording()
    lean = gcs_json.JsonBucket(bucket.name, rec, endpoint=gcs.endpoint, retry=gcs_json.NO_RETRY)
    with pytest.raises(TooLarge, match="over 1000"):
        lean.read("big.json", max_bytes=1000)
    assert len(rec.calls) == 1  # the size came from the metadata: no download at all
    with pytest.raises(TooLarge, match="over 1000"):
        lean.fetch("big.json", max_bytes=1000)
    assert rec.body_bytes <= 1001
    # Within the limit, and the pool still works after the dropped connection.
    assert lean.fetch("big.json", max_bytes=len(big)) == Blob("big.json", big, gen)
    assert lean.read("big.json", max_bytes=len(big)) == Blob("big.json", big, gen)


def test_object_replaced_between_metadata_and_download_is_a_conflict(bucket, gcs) -> None:
    bucket.write("set.json", b"old")
    rec = Recording()
    lean = gcs_json.JsonBucket(bucket.name, rec, endpoint=gcs.endpoint, retry=gcs_json.NO_RETRY)
    rec.after = lambda: bucket.write("set.json", b"new")
    with pytest.raises(Conflict):
        lean.read("set.json")
    assert lean.read("set.json").data == b"new"  # type: ignore[union-attr]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_transient_within_the_retry_budget() -> None:
    slept: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    lean = gcs_json.JsonBucket(
        "b",
        urllib3.PoolManager(),
        endpoint=f"http://127.0.0.1:{_free_port()}",
        retry=gcs_json.Retry(initial=0.2, maximum=1.0, multiplier=2.0, timeout=3.0),
        sleep=sleep,
        clock=lambda: now[0],
    )
    with pytest.raises(TransientError, match=r"reading gs://b/s/a\.json"):
        lean.generation("s/a.json")
    assert slept == [0.2, 0.4, 0.8, 1.0] and sum(slept) <= 3.0
    for call in (lambda: lean.read("s/a.json"), lambda: lean.write("s/a.json", b"x")):
        with pytest.raises(TransientError):
            call()


@pytest.fixture
def odd_server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server: /hang never answers in time, anything else is 503."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            if "hang" in self.path:
                threading.Event().wait(3)
                return
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_timeouts_and_5xx_are_transient(odd_server) -> None:
    endpoint, seen = odd_server
    lean = gcs_json.JsonBucket(
        "b", urllib3.PoolManager(), endpoint=endpoint, timeout=0.3, retry=gcs_json.NO_RETRY
    )
    with pytest.raises(TransientError, match=r"ReadTimeout|timed out"):
        lean.generation("hang")
    slept: list[float] = []
    retrying = gcs_json.JsonBucket(
        "b",
        urllib3.PoolManager(),
        endpoint=endpoint,
        retry=gcs_json.Retry(initial=0.01, maximum=0.01, timeout=0.035),
        sleep=slept.append,
        clock=lambda: 0.01 * len(slept),
    )
    seen.clear()
    with pytest.raises(TransientError, match="HTTP 503"):
        retrying.generation("busy")
    assert len(seen) == len(slept) + 1 == 4  # every attempt reached the server

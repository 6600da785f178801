"""Background publishing of the outbox to Pub/Sub: batched, with backoff, never blocking
inference. One publish request (Pub/Sub's REST API) per batch; the batch is deleted from
the outbox only when Pub/Sub acknowledged it (at-least-once; every message carries its
``id`` attribute).
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
from collections.abc import Callable
from urllib.parse import quote

import urllib3

from edgefleet.core import google_http
from edgefleet.core.errors import EdgefleetError, one_line
from edgefleet.core.logs import fields
from model_server.outbox import Message, Outbox

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.5
PUBSUB_ENDPOINT = "https://pubsub.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/pubsub"
# A publish answer is one id per message (at most 1,000 per request): a few tens of kB.
MAX_ANSWER_BYTES = 256 * 1024


class PublishError(EdgefleetError):
    """Pub/Sub refused or garbled a publish request; the batch stays in the outbox."""


class PubsubSender:
    """Sends one batch per request to Pub/Sub's REST API (``topics.publish``) over urllib3.

    Why not google-cloud-pubsub: its gRPC stack (grpcio, protobuf, google-api-core) kept
    ~35 MiB resident in the server from the first publish on, a quarter of its memory,
    and 11 MB of every image, to send a few small JSON requests a second. Against the
    emulator (``emulator_host``) requests are anonymous plain HTTP, as the client library
    does; off it, application default credentials sign them
    (:mod:`edgefleet.core.google_http`). A batch counts as sent only when Pub/Sub returned
    one message id per message; anything else raises and the batch is kept."""

    def __init__(
        self,
        project: str,
        topic: str,
        *,
        emulator_host: str = "",
        timeout: float = 10.0,
        attributes: dict[str, str] | None = None,
    ) -> None:
        self.topic_path = f"projects/{project}/topics/{topic}"
        self.emulator_host = emulator_host
        base = google_http.emulator_endpoint(emulator_host) if emulator_host else PUBSUB_ENDPOINT
        self.url = f"{base.rstrip('/')}/v1/{quote(self.topic_path, safe='/')}:publish"
        self.timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self.attributes = {k: v for k, v in (attributes or {}).items() if v}
        self._http: google_http.Http | None = None  # built at the first send
        self._pool: urllib3.PoolManager | None = None  # its connections

    def _client(self) -> google_http.Http:
        if self._http is None:
            pool = urllib3.PoolManager(maxsize=1)
            if self.emulator_host:
                self._http = pool
            else:
                self._http, _transient = google_http.authorized(
                    pool, SCOPE, f"Pub/Sub topic {self.topic_path}"
                )
            self._pool = pool
        return self._http

    def __call__(self, batch: list[Message]) -> None:
        body = json.dumps(
            {
                "messages": [
                    {
                        "data": base64.b64encode(m.body).decode("ascii"),
                        "attributes": {**self.attributes, "id": m.id},
                    }
                    for m in batch
                ]
            }
        ).encode()
        try:
            resp = self._client().request(
                "POST",
                self.url,
                body=body,
                headers={"Content-Type": "application/json"},
                timeout=self.timeout,
                retries=False,
                redirect=False,
                preload_content=False,
            )
        except BaseException:
            self.reset()  # a restarted endpoint: connect afresh on the next try
            raise
        try:
            answer = google_http.read_at_most(resp, MAX_ANSWER_BYTES)
        except BaseException:
            google_http.drop(resp)
            raise
        if len(answer) < MAX_ANSWER_BYTES:
            resp.release_conn()  # read to its end: the next publish reuses the connection
        else:
            google_http.drop(resp)  # cut at the bound: the rest is never read
        if resp.status != 200:
            raise PublishError(
                f"Pub/Sub answered HTTP {resp.status} to a publish to {self.topic_path}: "
                f"{one_line(answer.decode('utf-8', 'replace'), 300)}"
            )
        ids = _message_ids(answer)
        if len(ids) != len(batch):
            raise PublishError(
                f"Pub/Sub returned {len(ids)} message ids for {len(batch)} messages "
                f"published to {self.topic_path}"
            )

    def reset(self) -> None:
        """Forget the pooled connections (the next send connects afresh); the credentials
        and their token are kept."""
        if self._pool is not None:
            self._pool.clear()


def _message_ids(answer: bytes) -> list[str]:
    try:
        doc = json.loads(answer)
    except ValueError as exc:
        raise PublishError("Pub/Sub's answer to a publish is not JSON") from exc
    ids = doc.get("messageIds") if isinstance(doc, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise PublishError("Pub/Sub's answer to a publish has no list of messageIds")
    return ids


class Publisher:
    """A daemon thread draining the outbox in batches."""

    def __init__(
        self,
        outbox: Outbox,
        send: Callable[[list[Message]], None],
        *,
        batch: int,
        interval: float,
        backoff_max: float,
        on_published: Callable[[int], None] = lambda n: None,
        on_failure: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self.outbox = outbox
        self.send = send
        self.batch = batch
        self.interval = interval
        self.backoff_max = backoff_max
        self.on_published = on_published
        self.on_failure = on_failure
        self.published = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="telemetry-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def publish_once(self) -> int:
        """Send the oldest batch; returns how many were sent. Raises when sending failed."""
        batch = self.outbox.peek(self.batch)
        if not batch:
            return 0
        self.send(batch)
        self.outbox.ack(batch)
        self.published += len(batch)
        self.on_published(len(batch))
        return len(batch)

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _run(self) -> None:
        backoff = BACKOFF_INITIAL
        failing_since_sent = 0
        while not self._stop.is_set():
            try:
                sent = self.publish_once()
            except Exception as exc:  # any failure: keep the batch, back off
                kind = type(exc).__name__
                self.last_error = f"{kind}: {' '.join(str(exc).split())[:300]}"
                self.on_failure(kind)
                if failing_since_sent == 0:
                    log.warning(
                        "telemetry publish failed; kept in the outbox, retrying with backoff",
                        extra=fields(error=self.last_error, queued=len(self.outbox)),
                    )
                failing_since_sent += 1
                # Full jitter keeps a fleet that lost its uplink together from retrying in step.
                self._sleep(random.uniform(backoff / 2, backoff))
                backoff = min(backoff * 2, self.backoff_max)
                continue
            if failing_since_sent:
                log.info(
                    "telemetry publishing recovered",
                    extra=fields(failed_attempts=failing_since_sent, queued=len(self.outbox)),
                )
                failing_since_sent = 0
                self.last_error = ""
            backoff = BACKOFF_INITIAL
            if sent < self.batch:
                self._sleep(self.interval)

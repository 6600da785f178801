"""Background publishing of the outbox to Pub/Sub: batched, with backoff, never blocking
inference. One publish request per batch; the batch is deleted from the outbox only when
Pub/Sub acknowledged it (at-least-once; every message carries its ``id`` attribute).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from edgefleet.core.logs import fields
from model_server.outbox import Message, Outbox

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.5


class PubsubSender:
    """Sends one batch per request; the gRPC client is rebuilt after any failure, so a
    restarted endpoint is reached again without waiting for gRPC's reconnect backoff."""

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
        self.timeout = timeout
        self.attributes = {k: v for k, v in (attributes or {}).items() if v}
        self._client: Any = None

    def _make_client(self) -> Any:
        # Imported here: gRPC and the Pub/Sub client are heavy and only needed to send.
        from google.pubsub_v1 import PublisherClient

        if self.emulator_host:
            import grpc
            from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

            channel = grpc.insecure_channel(self.emulator_host)
            return PublisherClient(transport=PublisherGrpcTransport(channel=channel))
        return PublisherClient()

    def __call__(self, batch: list[Message]) -> None:
        from google.pubsub_v1 import PubsubMessage

        if self._client is None:
            self._client = self._make_client()
        messages = [
            PubsubMessage(data=m.body, attributes={**self.attributes, "id": m.id}) for m in batch
        ]
        try:
            self._client.publish(
                topic=self.topic_path, messages=messages, timeout=self.timeout, retry=None
            )
        except BaseException:
            self.reset()
            raise

    def reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # a broken channel may fail to close
                client.transport.close()


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

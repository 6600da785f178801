"""The control plane's side of the MQTT wake-up: tell devices a set was just written.

Every writer of manifest sets (``tag_monitor``, the rollout controller, ``edgefleet
bootstrap``) calls :meth:`WakeupPublisher.publish` after a write (through
``SetStore(on_written=...)``): one retained QoS 1 message ``{"generation", "sequence"}``
on ``edgefleet/v1/sets/ARCH/CHANNEL`` (contract in :mod:`edgefleet.core.mqtt`). The
message is a hint: a failed publish is logged and returns False, the set stays written,
and devices still find it on their next (slow) poll.

A Cloud Function handles one event at a time and may sit idle for hours, so the publisher
connects per publish (a few milliseconds to a broker in the same region) instead of
holding a connection the platform may freeze.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from edgefleet.core import mqtt
from edgefleet.core.logs import fields

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 5.0


class WakeupPublisher:
    def __init__(self, target: mqtt.BrokerTarget, *, timeout: float = PUBLISH_TIMEOUT) -> None:
        self.target = target
        self.timeout = timeout
        self._lock = threading.Lock()  # one publish at a time per publisher

    def publish(self, arch: str, channel: str, generation: int, sequence: int) -> bool:
        """Publish the wake-up for ``sets/ARCH/CHANNEL.json``; True once the broker has
        acknowledged it. Never raises for broker trouble (logged instead)."""
        topic = mqtt.topic(arch, channel)
        payload = mqtt.encode_hint(generation, sequence)
        with self._lock:
            try:
                self._publish(topic, payload)
            except Exception as exc:  # paho and ssl raise many types; none may fail a write
                log.warning(
                    "wake-up not published; devices find the set on their next poll",
                    extra=fields(
                        event="wakeup-failed",
                        broker=self.target.redacted(),
                        topic=topic,
                        error=f"{type(exc).__name__}: {exc}",
                    ),
                )
                return False
        log.info(
            "wake-up published",
            extra=fields(event="wakeup-published", topic=topic, generation=generation),
        )
        return True

    def __call__(self, result: Any) -> None:
        """``SetStore(on_written=publisher)``: publish for a :class:`WriteResult`."""
        self.publish(result.arch, result.channel, result.generation, result.manifest_set.sequence)

    def _publish(self, topic: str, payload: bytes) -> None:
        client = mqtt.make_client(self.target, f"edgefleet-pub-{uuid.uuid4().hex[:12]}")
        connected = threading.Event()
        refused: list[str] = []

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if getattr(reason, "is_failure", False):
                refused.append(str(reason))
            connected.set()

        client.on_connect = on_connect
        mqtt.connect_async(client, self.target)
        client.loop_start()
        try:
            if not connected.wait(self.timeout) or refused:
                why = refused[0] if refused else f"no answer in {self.timeout:g} s"
                raise ConnectionError(f"broker {self.target.redacted()}: {why}")
            info = client.publish(topic, payload, qos=1, retain=True)
            info.wait_for_publish(self.timeout)
            if not info.is_published():
                raise TimeoutError(f"no PUBACK in {self.timeout:g} s")
        finally:
            client.disconnect()
            client.loop_stop()


def from_env(env: Mapping[str, str] | None = None) -> WakeupPublisher | None:
    """The publisher ``MQTT_URL`` names (``MQTT_CA_FILE`` for a private CA), or None."""
    target = mqtt.target_from_env(os.environ if env is None else env)
    return WakeupPublisher(target) if target is not None else None


def publish_set_written(
    arch: str, channel: str, generation: int, sequence: int, *, env: Mapping[str, str] | None = None
) -> bool:
    """One-shot helper for code without a configured publisher (False without MQTT_URL)."""
    publisher = from_env(env)
    return publisher.publish(arch, channel, generation, sequence) if publisher else False

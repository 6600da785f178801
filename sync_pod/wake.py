"""The agent's wait between polls, and the MQTT wake-up that can end it early.

The agent sleeps between polls through one call, ``wait(timeout) -> reason``. Without a
broker that is a plain timed wait (:class:`sync_pod.wait.Waiter`). With ``MQTT_URL``,
:class:`MqttWake` keeps a subscription to the device's topic
``edgefleet/v1/sets/ARCH/CHANNEL`` (see :mod:`edgefleet.core.mqtt`) and ends the wait as
soon as a wake-up message names a set generation the agent has not seen: a rollout then
reaches the device in about one round trip instead of one poll interval, and the poll
interval itself can be long (10 minutes by default with a broker), which is what makes a
large fleet cheap.

A message carries no authority: it only makes the agent poll now, and the poll fetches
and verifies the set exactly as a timed one does. A forged or replayed message therefore
costs one poll (one bounded download of the set, judged like any other); messages
that are malformed or oversized are dropped and counted. The broker being down changes
nothing but latency: paho reconnects in the background with backoff (1 s -> 2 min), and
the retained message brings the newest generation on every reconnect.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgefleet.core import mqtt
from edgefleet.core.errors import InvalidInput
from edgefleet.core.logs import fields
from sync_pod.wait import Waiter

log = logging.getLogger(__name__)

WAIT_MQTT = "mqtt"  # the reason a wait ended early: a wake-up message


@dataclass
class WakeStats:
    """Counters a status report or a benchmark can read."""

    connects: int = 0
    messages: int = 0
    invalid: int = 0
    ignored: int = 0  # a generation the agent already has (e.g. the retained one)
    wakes: int = 0
    last_message_at: float | None = None  # epoch seconds of the last valid message
    last_hint: mqtt.Hint | None = None


class MqttWake(Waiter):
    """A :class:`~sync_pod.wait.Waiter` that a wake-up message on the device's topic ends
    early (reason :data:`WAIT_MQTT`).

    ``known_generation()`` is the set generation the agent has already seen: a message
    naming it (the retained one on every reconnect, a replay) does not wake the agent.
    """

    def __init__(
        self,
        target: mqtt.BrokerTarget,
        topic: str,
        client_id: str,
        *,
        known_generation: Callable[[], int] = lambda: 0,
        client_factory: Callable[[mqtt.BrokerTarget, str], Any] = mqtt.make_client,
        clock: Callable[[], float] = time.time,
        spread: float = 0.0,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        """``spread``: wake at a random moment within this many seconds of the message
        (WAKE_SPREAD_SECONDS), so that a very large fleet does not hit the bucket in the
        same second; 0 wakes at once."""
        super().__init__()
        self.spread = spread
        self._rng = rng
        self._timer: threading.Timer | None = None
        self.target = target
        self.topic = topic
        self.client_id = client_id
        self.known_generation = known_generation
        self.stats = WakeStats()
        self.connected = threading.Event()
        self._clock = clock
        self._client = client_factory(target, client_id)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def status(self) -> dict[str, Any]:
        """For the device status: is the wake-up working (broker without password)."""
        at = self.stats.last_message_at
        return {
            "broker": self.target.redacted(),
            "connected": self.connected.is_set(),
            "messages": self.stats.messages,
            "wakes": self.stats.wakes,
            "dropped": self.stats.invalid,
            "lastMessageAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)) if at else None,
        }

    def start(self) -> MqttWake:
        """Connect in the background; never blocks, never fails on an unreachable broker."""
        mqtt.connect_async(self._client, self.target)
        self._client.loop_start()
        log.info(
            "wake-up subscription starting",
            extra=fields(broker=self.target.redacted(), topic=self.topic),
        )
        return self

    def stop(self) -> None:
        super().stop()
        if self._timer is not None:
            self._timer.cancel()
        self.close()

    def close(self) -> None:
        """Disconnect and end the network thread (idempotent)."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
        finally:
            client.loop_stop()

    # -- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning(
                "wake-up broker refused the connection; retrying with backoff",
                extra=fields(broker=self.target.redacted(), reason=str(reason)),
            )
            return
        self.stats.connects += 1
        # QoS 0: the session is clean (nothing survives a reconnect) and every (re)connect
        # brings the retained message, so QoS 1 would add only a PUBACK per message and
        # in-flight state per device on the broker.
        client.subscribe(self.topic, qos=0)
        self.connected.set()
        log.info("wake-up subscription connected", extra=fields(broker=self.target.redacted()))

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        if not self.stopped:
            log.warning(
                "wake-up broker connection lost; reconnecting with backoff",
                extra=fields(broker=self.target.redacted(), reason=str(reason)),
            )

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self.stats.messages += 1
        if message.topic != self.topic:
            self.stats.invalid += 1
            return
        try:
            hint = mqtt.decode_hint(bytes(message.payload))
        except InvalidInput as exc:
            self.stats.invalid += 1
            if self.stats.invalid == 1 or self.stats.invalid % 100 == 0:
                log.warning(
                    "wake-up message dropped",
                    extra=fields(error=str(exc), dropped=self.stats.invalid),
                )
            return
        self.stats.last_message_at = self._clock()
        self.stats.last_hint = hint
        if hint.generation == self.known_generation():
            self.stats.ignored += 1
            return
        self.stats.wakes += 1
        delay = self._rng(0.0, self.spread) if self.spread > 0 else 0.0
        if delay <= 0:
            self.wake(WAIT_MQTT)
        elif self._timer is None or not self._timer.is_alive():
            self._timer = threading.Timer(delay, self.wake, args=(WAIT_MQTT,))
            self._timer.daemon = True
            self._timer.start()

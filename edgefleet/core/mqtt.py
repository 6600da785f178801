"""The MQTT wake-up contract shared by the control plane (publisher) and devices (subscriber).

After writing ``sets/ARCH/CHANNEL.json`` the control plane publishes, retained, on topic
``edgefleet/v1/sets/ARCH/CHANNEL`` the payload ``{"generation": N, "sequence": N}``.
A device subscribed to its own topic polls at once when a message arrives. The message is
a hint, never an authority: the device still fetches the set from the bucket and verifies
it as on any poll, so a forged, replayed or lost message costs at most one poll (or one
fallback-poll interval). Retained, so a device that (re)connects learns the newest set
without waiting for the next write.

``MQTT_URL`` is ``mqtt://[USER[:PASSWORD]@]HOST[:PORT]`` (plain, default port 1883) or
``mqtts://…`` (TLS, default port 8883, server certificate checked against the system CAs
or ``MQTT_CA_FILE``). This module is pure; clients are built by :func:`make_client`,
which imports paho-mqtt only when called.
"""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from edgefleet.core import layout
from edgefleet.core.errors import ConfigError, InvalidInput

TOPIC_PREFIX = "edgefleet/v1/sets"
SCHEMES = {"mqtt": (1883, False), "mqtts": (8883, True)}
# A hint is two integers: anything bigger is not one (the broker is told this limit too).
MAX_PAYLOAD_BYTES = 256
MAX_PACKET_BYTES = 1024
MAX_INT = 2**63 - 1
KEEPALIVE_SECONDS = 60
# How often an idle client's network thread wakes (paho's loop wakes every second). The
# keepalive is checked on each wake, so a ping leaves 60-75 s after the last packet, well
# inside the broker's 1.5 x keepalive (90 s). Traffic and publish() still wake it at once.
NETWORK_WAKE_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class BrokerTarget:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None

    def redacted(self) -> str:
        """The URL without its password, for logs and errors."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Hint:
    generation: int
    sequence: int


def parse_url(url: str, *, ca_file: str | None = None, var: str = "MQTT_URL") -> BrokerTarget:
    """Validate ``MQTT_URL``; raise :class:`ConfigError` naming what is wrong."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{var}: {exc}: use mqtt://HOST:PORT or mqtts://HOST:PORT") from None
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"{var}={_redact(text)!r} must start with mqtt:// or mqtts:// (TLS)")
    if not parts.hostname:
        raise ConfigError(f"{var}={_redact(text)!r} names no host: use mqtt://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{var}={_redact(text)!r} must not have a path or query")
    default_port, tls = SCHEMES[parts.scheme]
    if ca_file and not tls:
        raise ConfigError(f"MQTT_CA_FILE is set but {var} is not mqtts://: use mqtts://")
    return BrokerTarget(
        host=parts.hostname,
        port=port or default_port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        ca_file=ca_file or None,
    )


def target_from_env(env: Mapping[str, str]) -> BrokerTarget | None:
    """The broker named by ``MQTT_URL`` (+ ``MQTT_CA_FILE``), or None when unset."""
    url = (env.get("MQTT_URL") or "").strip()
    if not url:
        return None
    return parse_url(url, ca_file=(env.get("MQTT_CA_FILE") or "").strip() or None)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def topic(arch: str, channel: str) -> str:
    return f"{TOPIC_PREFIX}/{layout.check_arch(arch)}/{layout.check_channel(channel)}"


def encode_hint(generation: int, sequence: int) -> bytes:
    return json.dumps({"generation": generation, "sequence": sequence}, sort_keys=True).encode()


def decode_hint(payload: bytes) -> Hint:
    """Parse a wake-up payload; raise :class:`InvalidInput` (bounded before parsing)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidInput(f"wake-up message is {len(payload)} bytes, over {MAX_PAYLOAD_BYTES}")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"wake-up message is not UTF-8 JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput("wake-up message is not a JSON object")
    values = []
    for key in ("generation", "sequence"):
        value = doc.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
            raise InvalidInput(f"wake-up message field {key!r} must be a non-negative integer")
        values.append(value)
    return Hint(values[0], values[1])


def make_client(target: BrokerTarget, client_id: str) -> Any:
    """A paho-mqtt client (MQTT 5) for ``target``: TLS and credentials applied, the largest
    automatic reconnects backing off 1 s -> 2 min. Not connected yet (see
    :func:`connect_async`)."""
    import paho.mqtt.client as paho

    client = _client_class()(
        paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
    )
    if target.username is not None:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        context = ssl.create_default_context(cafile=target.ca_file)
        client.tls_set_context(context)
    client.reconnect_delay_set(min_delay=1, max_delay=120)
    return client


@functools.cache
def _client_class() -> type:
    """paho's Client whose ``loop_start`` thread wakes every :data:`NETWORK_WAKE_SECONDS`
    when idle instead of every second.

    Why: the thread only has work when a packet arrives, a publish is queued (paho wakes
    it through its socket pair) or the keepalive is due; a wake-up a second is 86,400
    wasted wake-ups a day on every device (~60 us each here) and, in the 1,000-agent
    simulation, 1.8 ms of host CPU per agent per rollout. paho's ``loop_start`` runs
    ``loop_forever()`` with its default 1 s select timeout and offers no setting, so this
    overrides the one method its thread runs (``Client._thread_main``, unchanged since
    paho 1.x) with the same body and a longer timeout. ``tests/test_wake.py`` measures
    the wake-ups, so a paho that renamed it fails there rather than silently."""
    import paho.mqtt.client as paho

    class Client(paho.Client):
        def _thread_main(self) -> None:
            try:
                self.loop_forever(timeout=NETWORK_WAKE_SECONDS, retry_first_connection=True)
            finally:
                self._thread = None

    return Client


def connect_async(client: Any, target: BrokerTarget) -> None:
    """Start connecting in the background (the network loop retries until it succeeds)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.MaximumPacketSize = MAX_PACKET_BYTES
    client.connect_async(
        target.host,
        target.port,
        keepalive=KEEPALIVE_SECONDS,
        clean_start=True,
        properties=props,
    )

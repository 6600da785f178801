"""The MQTT wake-up against the real broker (mosquitto) and the real GCS emulator.

The control plane's SetStore publishes after a write (edgefleet.cloud.wakeup); a sync
agent's MqttWake ends its wait; the message is a hint only (the set is still fetched and
verified); the broker's credentials and TLS are honoured; a subscription survives a
broker restart; the set's poll hint sets the pace, within the device's bounds.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import threading
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from support.sync import (
    FAKE_DIGEST,
    TEST_REGISTRY,
    SetPublisher,
    agent_env,
    entries,
    pod_yaml,
    wait_for,
)

from device.runtime import KubeletRuntime
from edgefleet.cloud.set_store import SetStore
from edgefleet.cloud.wakeup import WakeupPublisher
from edgefleet.core import layout, manifest_set, mqtt
from edgefleet.core.errors import ConfigError, InvalidInput, InvalidManifestSet
from edgefleet.localstack.mosquitto import Mosquitto
from edgefleet.localstack.process import free_port
from sync_pod.agent import APPLIED, UNCHANGED, Agent
from sync_pod.config import DEFAULT_POLL_SECONDS, DEFAULT_POLL_SECONDS_WITH_MQTT, from_env
from sync_pod.pace import Pace
from sync_pod.pipeline import WAIT_STOP as STOPPED
from sync_pod.pipeline import WAIT_TIMEOUT as TIMEOUT
from sync_pod.wake import WAIT_MQTT as WOKEN
from sync_pod.wake import MqttWake

IMAGE = f"{TEST_REGISTRY}/edgefleet/web@{FAKE_DIGEST}"
TOPIC = mqtt.topic("x86_64", "beta")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with Mosquitto(tmp_path_factory.mktemp("mqtt")) as b:
        yield b


def subscriber(target: mqtt.BrokerTarget, known: int = 0, client_id: str = "dev-1") -> MqttWake:
    wake = MqttWake(target, TOPIC, f"test-{client_id}-{time.monotonic_ns()}",
                    known_generation=lambda: known).start()  # fmt: skip
    assert wake.connected.wait(10), "subscriber never connected"
    return wake


def clear_retained(target: mqtt.BrokerTarget) -> None:
    """An empty retained message deletes the topic's retained one (MQTT spec 3.3.1.3)."""
    publisher = WakeupPublisher(target)
    publisher._publish(TOPIC, b"")


# -- the contract (pure) -------------------------------------------------------------------


def test_hint_payload_is_validated_and_bounded() -> None:
    assert mqtt.decode_hint(b'{"generation": 7, "sequence": 9}') == mqtt.Hint(7, 9)
    assert mqtt.decode_hint(mqtt.encode_hint(3, 4)) == mqtt.Hint(3, 4)
    for bad in (
        b"x" * (mqtt.MAX_PAYLOAD_BYTES + 1),
        b"[]",
        b"\xff",
        b'{"generation": true, "sequence": 1}',
        b'{"generation": -1, "sequence": 1}',
        b'{"generation": 1}',
        b'{"generation": 1.5, "sequence": 1}',
        b'{"generation": 1, "sequence": 99999999999999999999999}',
    ):
        with pytest.raises(InvalidInput):
            mqtt.decode_hint(bad)


def test_broker_url_takes_tls_and_credentials_and_rejects_the_rest() -> None:
    plain = mqtt.parse_url("mqtt://broker.local")
    assert (plain.host, plain.port, plain.tls, plain.username) == (
        "broker.local",
        1883,
        False,
        None,
    )
    tls = mqtt.parse_url("mqtts://dev%40x:p%3Aw@10.0.0.5", ca_file="/ca.pem")
    assert (tls.port, tls.tls, tls.username, tls.password) == (8883, True, "dev@x", "p:w")
    assert "p:w" not in tls.redacted()
    for bad in ("http://h:1", "mqtt://", "mqtt://h:99999", "mqtt://h/path", "h:1883"):
        with pytest.raises(ConfigError):
            mqtt.parse_url(bad)
    with pytest.raises(ConfigError, match="mqtts"):
        mqtt.parse_url("mqtt://h", ca_file="/ca.pem")
    with pytest.raises(ConfigError) as info:
        mqtt.parse_url("ftp://u:secret@h")
    assert "secret" not in str(info.value)


def test_mqtt_makes_the_fallback_poll_ten_minutes_unless_poll_seconds_is_set(tmp_path) -> None:
    base = agent_env("b", tmp_path)
    assert from_env(base).poll_seconds == DEFAULT_POLL_SECONDS
    assert from_env(base).mqtt is None
    with_mqtt = from_env({**base, "MQTT_URL": "mqtt://127.0.0.1:1883"})
    assert with_mqtt.poll_seconds == DEFAULT_POLL_SECONDS_WITH_MQTT == 600
    assert from_env({**base, "MQTT_URL": "mqtt://h", "POLL_SECONDS": "30"}).poll_seconds == 30
    with pytest.raises(ConfigError, match="MQTT_URL"):
        from_env({**base, "MQTT_URL": "tcp://h"})
    with pytest.raises(ConfigError, match="MQTT_CA_FILE"):
        from_env({**base, "MQTT_URL": "mqtts://h", "MQTT_CA_FILE": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match="POLL_MAX_SECONDS"):
        from_env({**base, "POLL_MIN_SECONDS": "10", "POLL_MAX_SECONDS": "5"})


def test_poll_hint_is_bounded_by_the_device() -> None:
    pace = Pace(default=600, minimum=5, maximum=3600)
    assert pace.interval(None) == 600
    assert pace.interval(30) == 30
    assert pace.interval(1) == 5
    assert pace.interval(86400) == 3600


def test_poll_hint_travels_signed_in_the_set_and_successors_keep_it() -> None:
    now = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
    key = Ed25519PrivateKey.generate()
    first = manifest_set.next_set(None, "x86_64", "beta", [], now=now, poll_seconds=15)
    signed = manifest_set.decode(manifest_set.encode(first, [key]))
    assert signed.manifest_set.poll_seconds == 15
    manifest_set.verify(signed, [key.public_key()], arch="x86_64", channel="beta", now=now)
    kept = manifest_set.next_set(first, "x86_64", "beta", [], now=now)
    assert kept.poll_seconds == 15 and kept.same_content(first)
    dropped = manifest_set.next_set(first, "x86_64", "beta", [], now=now, poll_seconds=None)
    assert not dropped.same_content(first)
    assert "pollSeconds" not in dropped.to_dict()
    for bad in (0, True, "10", 86401):
        doc = first.to_dict() | {"pollSeconds": bad}
        with pytest.raises(InvalidManifestSet, match="pollSeconds"):
            manifest_set.decode(manifest_set.canonical_json(doc))


# -- against mosquitto ---------------------------------------------------------------------


def test_set_write_publishes_a_retained_hint_that_wakes_a_subscriber(bucket, broker) -> None:
    target = mqtt.parse_url(broker.url)
    clear_retained(target)
    wake = subscriber(target)
    try:
        store = SetStore(bucket, on_written=WakeupPublisher(target))
        started = time.monotonic()
        result = store.update(
            "x86_64", "beta", lambda snap: entries({"web": pod_yaml("web", IMAGE)})
        )
        assert wake(5) == WOKEN
        assert time.monotonic() - started < 2
        assert wake.stats.last_hint == mqtt.Hint(result.generation, result.manifest_set.sequence)
        assert wake(0.2) == TIMEOUT  # one message, one wake
    finally:
        wake.stop()
    # Retained: a device connecting later learns the newest generation at once...
    late = subscriber(target, client_id="late")
    try:
        assert late(5) == WOKEN
        assert late.stats.last_hint.generation == result.generation
    finally:
        late.stop()
    # ...but a device that already has that generation is not woken by it.
    known = subscriber(target, known=result.generation, client_id="known")
    try:
        assert known(1.0) == TIMEOUT
        assert known.stats.ignored == 1 and known.stats.wakes == 0
    finally:
        known.stop()
    assert known(5) == STOPPED


def _thread_wakeups(thread: threading.Thread) -> int:
    """How many times the kernel has scheduled ``thread`` (schedstat's third field)."""
    with open(f"/proc/self/task/{thread.native_id}/schedstat") as fh:
        return int(fh.read().split()[2])


def test_an_idle_subscription_sleeps_yet_a_message_and_a_stop_are_prompt(broker) -> None:
    """The network thread wakes every NETWORK_WAKE_SECONDS when idle, not every second as
    paho's loop_start does (edgefleet.core.mqtt._client_class), and that costs neither a
    message's latency nor a stop's."""
    assert mqtt.NETWORK_WAKE_SECONDS >= 10
    target = mqtt.parse_url(broker.url)
    clear_retained(target)
    wake = subscriber(target, client_id="idle")
    thread = wake._client._thread
    assert thread is not None and thread.is_alive()
    time.sleep(0.5)  # the subscription's SUBACK is taken in
    before = _thread_wakeups(thread)
    time.sleep(4.0)
    assert _thread_wakeups(thread) - before <= 1  # paho's own loop: 4
    started = time.monotonic()
    WakeupPublisher(target).publish("x86_64", "beta", 41, 1)
    assert wake(5) == WOKEN
    assert time.monotonic() - started < 1.5
    started = time.monotonic()
    wake.stop()
    assert time.monotonic() - started < 2
    assert not thread.is_alive()


def test_unreachable_broker_never_fails_the_set_write(bucket, caplog) -> None:
    target = mqtt.parse_url(f"mqtt://127.0.0.1:{free_port()}")
    store = SetStore(bucket, on_written=WakeupPublisher(target, timeout=1.0))
    with caplog.at_level(logging.WARNING):
        result = store.update("x86_64", "beta", lambda s: entries({"web": pod_yaml("web", IMAGE)}))
    assert result.written
    assert bucket.generation("sets/x86_64/beta.json") == result.generation
    assert any(getattr(r, "fields", {}).get("event") == "wakeup-failed" for r in caplog.records)


def test_malformed_and_oversized_messages_are_dropped(broker) -> None:
    target = mqtt.parse_url(broker.url)
    clear_retained(target)
    wake = subscriber(target)
    try:
        publisher = WakeupPublisher(target)
        publisher._publish(TOPIC, b"not json")
        publisher._publish(TOPIC, b'{"generation": "1", "sequence": 1}')
        with pytest.raises(Exception):  # noqa: B017 - the broker refuses what we announced
            publisher._publish(TOPIC, b"{" + b" " * 5000 + b"}")
        assert wake(1.0) == TIMEOUT
        assert wake.stats.invalid == 2 and wake.stats.wakes == 0
    finally:
        wake.stop()
        clear_retained(target)


def test_forged_wakeup_costs_one_poll_and_applies_nothing(bucket, broker, tmp_path) -> None:
    pub = SetPublisher(bucket, "x86_64", "beta")
    pub.publish(entries({"web": pod_yaml("web", IMAGE)}))
    target = mqtt.parse_url(broker.url)
    config = from_env(agent_env(bucket.name, tmp_path, MQTT_URL=broker.url))
    agent = Agent(config, bucket, KubeletRuntime())
    agent.recover()
    assert agent.poll_once() == APPLIED
    applied = agent.state.applied
    wake = MqttWake(
        target, TOPIC, "forged-test", known_generation=lambda: agent.state.seen_generation
    )
    wake.start()
    try:
        assert wake.connected.wait(10)
        # A forged message naming a generation that does not exist: the agent polls once,
        # finds the set it already has, and changes nothing.
        WakeupPublisher(target).publish("x86_64", "beta", applied.generation + 1000, 1)
        assert wake(5) == WOKEN
        assert agent.poll_once(woken=True) == UNCHANGED
        assert agent.state.applied == applied
    finally:
        wake.stop()
        clear_retained(target)


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (what an operator's PKI would issue)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for p in paths:
        p.chmod(0o644)
    directory.chmod(0o755)
    return paths


def test_tls_and_credentials_are_required_and_honoured(tmp_path) -> None:
    ca, cert, key = _tls_files(tmp_path)
    with Mosquitto(tmp_path / "b", username="fleet", password="s3cret", tls=(cert, key)) as b:
        good = mqtt.parse_url(f"mqtts://fleet:s3cret@127.0.0.1:{b.tls_port}", ca_file=str(ca))
        assert WakeupPublisher(good).publish("x86_64", "beta", 5, 6)
        wake = subscriber(good)
        try:
            assert wake(5) == WOKEN and wake.stats.last_hint == mqtt.Hint(5, 6)
        finally:
            wake.stop()
        wrong_password = mqtt.parse_url(
            f"mqtts://fleet:nope@127.0.0.1:{b.tls_port}", ca_file=str(ca)
        )
        assert not WakeupPublisher(wrong_password, timeout=2).publish("x86_64", "beta", 1, 1)
        untrusted_ca = mqtt.parse_url(f"mqtts://fleet:s3cret@127.0.0.1:{b.tls_port}")
        assert not WakeupPublisher(untrusted_ca, timeout=2).publish("x86_64", "beta", 1, 1)
        anonymous = mqtt.parse_url(f"mqtt://127.0.0.1:{b.port}")
        assert not WakeupPublisher(anonymous, timeout=2).publish("x86_64", "beta", 1, 1)


def test_subscription_survives_a_broker_restart(tmp_path) -> None:
    port = free_port()
    first = Mosquitto(tmp_path, port=port).start()
    target = mqtt.parse_url(first.url)
    wake = subscriber(target)
    try:
        first.stop()
        deadline = time.monotonic() + 5
        while wake.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not wake.connected.is_set()
        with Mosquitto(tmp_path, port=port):
            assert wake.connected.wait(15), "did not reconnect"
            assert WakeupPublisher(target).publish("x86_64", "beta", 42, 43)
            assert wake(5) == WOKEN
            assert wake.stats.connects == 2
    finally:
        wake.stop()


def test_agent_follows_the_sets_poll_hint_within_its_bounds(bucket, tmp_path) -> None:
    pub = SetPublisher(bucket, "x86_64", "beta")
    config = from_env(agent_env(bucket.name, tmp_path, POLL_SECONDS="60", POLL_MIN_SECONDS="5"))
    agent = Agent(config, bucket, KubeletRuntime())
    agent.recover()
    assert agent.poll_interval() == 60
    first = manifest_set.next_set(None, "x86_64", "beta", entries({"web": pod_yaml("web", IMAGE)}),
                                  now=dt.datetime.now(dt.UTC), poll_seconds=2)  # fmt: skip
    pub.last = first
    pub.write_raw(manifest_set.encode(first))
    assert agent.poll_once() == APPLIED
    assert agent.poll_interval() == 5  # hinted 2 s, bounded at POLL_MIN_SECONDS
    # Kept across a restart, dropped when a later set carries no hint.
    again = Agent(config, bucket, KubeletRuntime())
    assert again.poll_interval() == 5
    calm = manifest_set.next_set(first, "x86_64", "beta", pub.last.entries,
                                 now=dt.datetime.now(dt.UTC), poll_seconds=None)  # fmt: skip
    pub.write_raw(manifest_set.encode(calm))
    again.recover()
    again.poll_once()
    assert again.poll_interval() == 60


def test_local_stack_runs_mosquitto_and_hands_its_url_to_clients(pubsub, tmp_path) -> None:
    from edgefleet.localstack import process
    from edgefleet.localstack.mosquitto import broker_path
    from edgefleet.localstack.stack import LocalStack, StackConfig, down, read_state

    s = LocalStack(StackConfig(workdir=tmp_path, functions=()), pubsub=pubsub).start()
    try:
        assert s.mosquitto is not None
        assert s.env()["MQTT_URL"] == s.mosquitto.url
        state = read_state(tmp_path)
        assert "mosquitto" in {p["name"] for p in state["processes"]}
        assert state["ports"]["mqtt"] == s.mosquitto.port
        assert WakeupPublisher(mqtt.parse_url(s.env()["MQTT_URL"])).publish("x86_64", "beta", 1, 2)
        pid = s.mosquitto.process.pid
    finally:
        stopped = down(tmp_path)  # as `edgefleet down` does, from what stack.json records
    assert any(item.startswith("mosquitto") for item in stopped)
    assert not process.pid_alive(pid)
    assert not broker_path(tmp_path.resolve()).exists()


def test_gcp_plan_gives_tag_monitor_the_broker_url() -> None:
    from edgefleet.operator import gcp_plan

    url = "mqtts://fleet:pw@broker.example:8883"
    script = gcp_plan.render(gcp_plan.plan(gcp_plan.GcpConfig("proj-12345", mqtt_url=url)))
    deploy = next(ln for ln in script.splitlines() if "--entry-point=tag_monitor" in ln)
    assert f"MQTT_URL={url}" in deploy
    without = gcp_plan.render(gcp_plan.plan(gcp_plan.GcpConfig("proj-12345")))
    assert "MQTT_URL" not in without
    with pytest.raises(ConfigError, match="--mqtt-url"):
        gcp_plan.GcpConfig("proj-12345", mqtt_url="http://broker").check()


def test_the_agent_process_applies_a_set_at_once_on_a_wakeup(bucket, broker, tmp_path) -> None:
    """`python -m sync_pod` with MQTT_URL: a 10-minute poll, yet a written set is applied
    within seconds, because tag_monitor's SetStore publishes the wake-up."""
    import os
    import subprocess
    import sys

    target = mqtt.parse_url(broker.url)
    clear_retained(target)
    store = SetStore(bucket, on_written=WakeupPublisher(target))
    store.update("x86_64", "beta", lambda s: entries({"web": pod_yaml("web", IMAGE)}))
    env = {
        **os.environ,
        **agent_env(bucket.name, tmp_path, MQTT_URL=broker.url, KUBELET_API="off"),
        "LOG_LEVEL": "INFO",
    }
    env.pop("POLL_SECONDS", None)
    log = tmp_path / "agent.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "sync_pod"], env=env, stdout=fh, stderr=fh)
    try:
        pods = tmp_path / "device" / "pods"
        web = pods / "web-pod.yaml"

        assert wait_for(web.is_file, 60), log.read_text()[-2000:]  # the first poll at start
        assert wait_for(lambda: "wake-up subscription connected" in log.read_text(), 30)
        v2 = pod_yaml("web", IMAGE, command=["/bin/busybox", "true"])
        store.update("x86_64", "beta", lambda s: entries({"web": v2}))
        # Within seconds, not the 600 s (±20 %) fallback poll.
        # Devices write the canonical JSON of what they checked (docs/security.md).
        assert wait_for(lambda: json.loads(web.read_text()) == yaml.safe_load(v2), 15), (
            log.read_text()[-2000:]
        )
        status = json.loads((tmp_path / "state" / "status.json").read_text())["status"]
        assert status["pollSeconds"] == 600
        assert status["wakeup"]["connected"] is True and status["wakeup"]["wakes"] >= 1
        assert status["wakeup"]["broker"] == broker.url
    finally:
        proc.terminate()
        assert proc.wait(20) == 0  # SIGTERM ends the wait and the subscription cleanly


@pytest.mark.stack
def test_tag_monitor_function_publishes_the_wakeup_after_writing_the_set(
    stack_functions, monkeypatch
) -> None:
    """The real path: a tag pushed to the registry -> Pub/Sub -> tag_monitor (under
    functions-framework, MQTT_URL from the stack) writes the set and publishes."""
    from edgefleet.cloud.storage import Bucket, make_client

    env = stack_functions.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    target = mqtt.parse_url(env["MQTT_URL"])
    deploy = Bucket(make_client(), stack_functions.config.deploy_bucket)
    name = layout.set_object("x86_64", "alpha")
    before = deploy.generation(name)
    wake = MqttWake(target, mqtt.topic("x86_64", "alpha"), f"e2e-{time.monotonic_ns()}",
                    known_generation=lambda: before).start()  # fmt: skip
    try:
        assert wake.connected.wait(10)
        reg = stack_functions.registry
        reg.push_minimal_image(f"edgefleet/wake{time.monotonic_ns() % 10**8}", "alpha",
                               arch="amd64", salt="wake")  # fmt: skip
        assert wake(60) == WOKEN
        assert wake.stats.last_hint.generation == deploy.generation(name) != before
    finally:
        wake.stop()


def test_wake_spread_delays_the_poll_by_a_random_moment_within_it(broker) -> None:
    target = mqtt.parse_url(broker.url)
    clear_retained(target)
    drawn: list[tuple[float, float]] = []

    def rng(low: float, high: float) -> float:
        drawn.append((low, high))
        return 0.6

    wake = MqttWake(target, TOPIC, f"spread-{time.monotonic_ns()}", spread=5.0, rng=rng).start()
    try:
        assert wake.connected.wait(10)
        published = time.monotonic()
        assert WakeupPublisher(target).publish("x86_64", "beta", 77, 78)
        assert wake(0.3) == TIMEOUT  # not at once...
        assert wake(5) == WOKEN  # ...but at the drawn moment
        assert 0.5 <= time.monotonic() - published < 3
        assert drawn == [(0.0, 5.0)]
    finally:
        wake.stop()
        clear_retained(target)

"""Telemetry from the model server to the real Pub/Sub emulator: batched publishing, the
on-disk outbox across an emulator outage and across a crash (SIGKILL) and a new server
process."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from support.model_server_proc import ServerProcess

from edgefleet.localstack.process import free_port
from edgefleet.localstack.pubsub import PubsubEmulator
from model_server.config import ServerConfig
from model_server.serve import serve_in_background

CORAL = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "coral"
MODEL = CORAL / "mobilenet_v1_0.25_128_quant.tflite"
LABELS = CORAL / "imagenet_labels.txt"
IMAGE = CORAL / "grace_hopper.bmp"


@pytest.fixture(autouse=True)
def _testdata() -> None:
    if not MODEL.is_file():
        pytest.fail(f"test model missing: {MODEL} (see ../shared/testdata/README.md)")


def telemetry_config(outbox: Path, emulator_host: str, project: str, topic: str) -> ServerConfig:
    return ServerConfig(
        model=MODEL,
        labels=LABELS,
        workers=1,
        telemetry="on",
        pubsub_project=project,
        pubsub_topic=topic,
        pubsub_emulator_host=emulator_host,
        outbox_dir=outbox,
        device_id="device-7",
        container_digest="sha256:" + "ef" * 32,
        publish_interval=0.2,
        publish_timeout=3.0,
        backoff_max=1.0,
    )


def predict(url: str) -> str:
    r = requests.post(
        f"{url}/predict/", data=IMAGE.read_bytes(), headers={"Content-Type": "image/bmp"}
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def pull_ids(emulator: Any, subscription: str, want: set[str], timeout: float = 60.0) -> dict:
    """Pull until every id in ``want`` arrived; returns id -> (data, attributes)."""
    got: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
    deadline = time.monotonic() + timeout
    while not want <= got.keys():
        assert time.monotonic() < deadline, f"missing after {timeout}s: {want - got.keys()}"
        for message in emulator.pull(subscription, timeout=5.0):
            attrs = dict(message.attributes)
            got[attrs["id"]] = (json.loads(message.data), attrs)
        time.sleep(0.1)
    return got


def metric(url: str, name: str) -> float:
    for line in requests.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached after {timeout}s"
        time.sleep(0.1)


def test_predictions_reach_pubsub(pubsub: Any, tmp_path: Path) -> None:
    topic, sub = f"results-{uuid.uuid4().hex[:8]}", f"sub-{uuid.uuid4().hex[:8]}"
    pubsub.create_pull_subscription(topic, sub)
    cfg = telemetry_config(tmp_path / "outbox", pubsub.host, pubsub.project, topic)
    with serve_in_background(cfg) as (server, url):
        ids = {predict(url) for _ in range(5)}
        got = pull_ids(pubsub, sub, ids)
        data, attrs = got[next(iter(ids))]
        assert attrs["device_id"] == "device-7"
        assert data["device_id"] == "device-7"
        assert data["container_digest"] == "sha256:" + "ef" * 32
        assert (data["index"], data["label"].split(",")[0]) == (401, "academic gown")
        assert abs(data["score"] - 0.328) < 0.001
        assert data["model"] == "mobilenet_v1_0.25_128_quant"
        assert data["latency_ms"] > 0 and data["time"].endswith("+00:00")
        wait_until(lambda: len(server.outbox) == 0, 10, "empty outbox")
        assert metric(url, "edgefleet_telemetry_published_total") == 5
        assert metric(url, "edgefleet_telemetry_outbox_messages") == 0


def test_predictions_reach_pubsub_in_batches(pubsub: Any, tmp_path: Path) -> None:
    """Five predictions made between two publish rounds go out in publish requests of at
    most ``publish_batch`` (2) messages each, not one request per prediction. The real
    sender is wrapped to record the size of every publish request it makes."""
    topic, sub = f"results-{uuid.uuid4().hex[:8]}", f"sub-{uuid.uuid4().hex[:8]}"
    pubsub.create_pull_subscription(topic, sub)
    cfg = replace(
        telemetry_config(tmp_path / "outbox", pubsub.host, pubsub.project, topic),
        publish_batch=2,
        publish_interval=60.0,  # no round on its own during the test: only wake() starts one
    )
    with serve_in_background(cfg) as (server, url):
        wait_until(lambda: server.selftest.passed, 30, "self-test passed")
        sizes: list[int] = []
        real_send = server.publisher.send

        def recording_send(batch: list[Any]) -> None:
            real_send(batch)
            sizes.append(len(batch))

        server.publisher.send = recording_send
        ids = {predict(url) for _ in range(5)}
        server.publisher.wake()
        assert set(pull_ids(pubsub, sub, ids)) == ids
        wait_until(lambda: len(server.outbox) == 0, 10, "empty outbox")
        # Every request carried at most a batch, at least one a full batch of 2, and the 5
        # messages took 3 requests (one stray round before the wake-up can split them
        # 1 + 2 + 2 instead of 2 + 2 + 1; never one request per message).
        assert sum(sizes) == 5 and max(sizes) == 2 and len(sizes) == 3, sizes
        assert metric(url, "edgefleet_telemetry_publish_requests_total") == len(sizes)
        assert metric(url, "edgefleet_telemetry_published_total") == 5


class TcpRelay:
    """A loopback TCP relay in front of the emulator. While it is down, the server cannot
    reach Pub/Sub; it lets the test bring the emulator back (and recreate its in-memory
    topic and subscription) before the server can publish again."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpRelay:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture
def own_emulator(tmp_path: Path) -> Iterator[PubsubEmulator]:
    emulator = PubsubEmulator(tmp_path / "pubsub").start()
    yield emulator
    emulator.stop()


def test_message_produced_while_the_emulator_is_down_arrives_after_it_is_back(
    own_emulator: PubsubEmulator, tmp_path: Path
) -> None:
    topic, sub = "edge-inference-results", "results-pull"
    own_emulator.create_pull_subscription(topic, sub)
    relay = TcpRelay(own_emulator.host).start()
    cfg = telemetry_config(tmp_path / "outbox", relay.host, own_emulator.project, topic)
    try:
        with serve_in_background(cfg) as (server, url):
            before = predict(url)
            pull_ids(own_emulator, sub, {before})

            own_emulator.stop()  # the cloud is gone
            during = predict(url)  # inference goes on; telemetry waits on disk
            wait_until(
                lambda: metric(url, "edgefleet_telemetry_publish_failures_total") >= 2,
                30,
                "failed publish attempts",
            )
            assert len(server.outbox) == 1
            assert metric(url, "edgefleet_telemetry_outbox_messages") == 1

            relay.stop()
            # The emulator comes back empty (it keeps topics in memory): recreate them
            # before the link is restored, as a real topic would simply still be there.
            restarted = PubsubEmulator(tmp_path / "pubsub2", port=own_emulator.port).start()
            try:
                restarted.create_pull_subscription(topic, sub)
                relay.start()
                got = pull_ids(restarted, sub, {during})
                assert got[during][0]["id"] == during
                wait_until(lambda: len(server.outbox) == 0, 10, "empty outbox")
            finally:
                restarted.stop()
    finally:
        relay.stop()


def outbox_rows(outbox: Path) -> int:
    """Messages in the outbox file, read with sqlite3 itself (not the server's view)."""
    with contextlib.closing(sqlite3.connect(outbox / "outbox.sqlite3")) as db:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])


def test_outbox_survives_a_server_crash_and_a_new_process_delivers_it(
    pubsub: Any, tmp_path: Path
) -> None:
    """A server process that could not publish is killed with SIGKILL (no shutdown code
    runs); a NEW process on the same outbox, now online, delivers what the dead one kept."""
    topic, sub = f"results-{uuid.uuid4().hex[:8]}", f"sub-{uuid.uuid4().hex[:8]}"
    pubsub.create_pull_subscription(topic, sub)
    outbox = tmp_path / "outbox"
    args = ["--model", str(MODEL), "--labels", str(LABELS), "--host", "127.0.0.1"]
    env = {
        "EDGEFLEET_TELEMETRY": "on",
        "PUBSUB_PROJECT": pubsub.project,
        "PUBSUB_TOPIC": topic,
        "OUTBOX_DIR": str(outbox),
        "DEVICE_ID": "device-7",
        "EDGEFLEET_PUBLISH_INTERVAL": "0.2",
        "EDGEFLEET_PUBLISH_TIMEOUT": "2",
        "EDGEFLEET_BACKOFF_MAX": "1",
    }
    nobody = f"127.0.0.1:{free_port()}"  # offline: nothing listens there
    first = ServerProcess(args, {**env, "PUBSUB_EMULATOR_HOST": nobody}, tmp_path / "1.log")
    with first:
        offline_ids = {predict(first.url) for _ in range(3)}
        wait_until(
            lambda: metric(first.url, "edgefleet_telemetry_publish_failures_total") >= 1,
            30,
            "a failed publish attempt",
        )
        first.kill()
    assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
    assert outbox_rows(outbox) == 3

    second = ServerProcess(args, {**env, "PUBSUB_EMULATOR_HOST": pubsub.host}, tmp_path / "2.log")
    with second:
        got = pull_ids(pubsub, sub, offline_ids)
        assert set(got) == offline_ids
        assert {data["device_id"] for data, _ in got.values()} == {"device-7"}
        wait_until(lambda: outbox_rows(outbox) == 0, 10, "empty outbox")
        assert metric(second.url, "edgefleet_telemetry_published_total") == 3


# --- the REST sender on its own -------------------------------------------------------


def _message(n: int) -> Any:
    from model_server.outbox import Message

    return Message(n, f"m-{n}", json.dumps({"n": n}).encode())


def test_sender_publishes_a_batch_over_rest_with_its_attributes(pubsub: Any) -> None:
    from model_server.publisher import PubsubSender

    topic, sub = f"telemetry-{uuid.uuid4().hex[:8]}", f"sub-{uuid.uuid4().hex[:8]}"
    pubsub.create_pull_subscription(topic, sub)
    send = PubsubSender(
        pubsub.project, topic, emulator_host=pubsub.host, attributes={"device_id": "d-1"}
    )
    send([_message(1), _message(2)])
    got = pull_ids(pubsub, sub, {"m-1", "m-2"})
    assert got["m-2"] == ({"n": 2}, {"device_id": "d-1", "id": "m-2"})


def test_sender_names_the_topic_and_status_when_pubsub_refuses(pubsub: Any) -> None:
    from model_server.publisher import PublishError, PubsubSender

    send = PubsubSender(pubsub.project, "telemetry-missing", emulator_host=pubsub.host)
    with pytest.raises(PublishError, match=r"HTTP 404 .*topics/telemetry-missing.*not found"):
        send([_message(1)])


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (b'{"messageIds": ["1"]}', "1 message ids for 2 messages"),
        (b"<html>proxy</html>", "not JSON"),
        (b'{"messageIds": "1,2"}', "no list of messageIds"),
        (b'{"messageIds": ["' + b"9" * 400_000 + b'"]}', "not JSON"),  # cut at the bound
    ],
)
def test_sender_refuses_an_answer_that_does_not_acknowledge_the_batch(
    answer: bytes, match: str
) -> None:
    """An endpoint that answers 200 but not with one id per message (a proxy, a broken
    emulator) must not make the server drop the batch from its outbox."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from model_server.publisher import PublishError, PubsubSender

    class Answer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(answer)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        send = PubsubSender("p", "t", emulator_host=f"127.0.0.1:{server.server_port}")
        with pytest.raises(PublishError, match=match):
            send([_message(1), _message(2)])
    finally:
        server.shutdown()
        server.server_close()


def test_sender_off_the_emulator_without_credentials_says_how_to_give_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgefleet.core.errors import ConfigError
    from model_server.publisher import PubsubSender

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    send = PubsubSender("p", "telemetry")
    with pytest.raises(ConfigError, match=r"no Google credentials for Pub/Sub topic .*telemetry"):
        send([_message(1)])

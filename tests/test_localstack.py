"""The local stack's process handling and emulators, on the real binaries."""

from __future__ import annotations

import sys
import time

import pytest

from edgefleet.cloud.storage import Bucket, make_client
from edgefleet.core.bucket import Conflict
from edgefleet.localstack import process
from edgefleet.localstack.gcs import GcsEmulator
from edgefleet.localstack.process import ManagedProcess, StackError
from edgefleet.localstack.pubsub import PubsubEmulator

SPAWN_CHILD = (
    "import subprocess, sys, time;"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
    "print(p.pid, flush=True); time.sleep(60)"
)


def _child_pid(proc: ManagedProcess) -> int:
    process.wait_for(lambda: proc.log_tail().strip() != "", timeout=10, what="child pid")
    return int(proc.log_tail().split()[0])


def test_stop_ends_the_whole_process_group(tmp_path):
    proc = ManagedProcess("spawner", [sys.executable, "-c", SPAWN_CHILD], workdir=tmp_path)
    proc.start()
    child = _child_pid(proc)
    assert process.pid_alive(child)
    proc.stop(timeout=2)
    assert not process.pid_alive(child)
    assert not proc.alive()


def test_sigterm_ignoring_process_is_killed(tmp_path):
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print('x', flush=True); time.sleep(60)"
    )
    proc = ManagedProcess("stubborn", [sys.executable, "-c", code], workdir=tmp_path).start()
    process.wait_for(lambda: "x" in proc.log_tail(), timeout=10, what="stubborn")
    started = time.monotonic()
    proc.stop(timeout=0.5)
    assert not proc.alive()
    assert time.monotonic() - started < 10


def test_readiness_failure_shows_the_log_tail(tmp_path):
    code = "import sys; print('boom: port taken', flush=True); sys.exit(3)"
    proc = ManagedProcess("failing", [sys.executable, "-c", code], workdir=tmp_path).start()
    with pytest.raises(
        StackError, match=r"(?s)failing exited before it was ready.*boom: port taken"
    ):
        proc.wait_ready(lambda: False, timeout=10)


def test_readiness_timeout_names_the_component(tmp_path):
    proc = ManagedProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(30)"], workdir=tmp_path
    ).start()
    try:
        with pytest.raises(StackError, match="sleeper not ready after 1s"):
            proc.wait_ready(lambda: False, timeout=1)
    finally:
        proc.stop()


def test_missing_binary_is_a_one_line_error_naming_make_install(tmp_path):
    proc = ManagedProcess("ghost", ["/nonexistent/edgefleet-tool"], workdir=tmp_path)
    with pytest.raises(process.MissingTool, match="make install"):
        proc.start()


def test_stop_recorded_never_signals_a_recycled_pid(tmp_path):
    proc = ManagedProcess(
        "victim", [sys.executable, "-c", "import time; time.sleep(30)"], workdir=tmp_path
    ).start()
    try:
        record = proc.record()
        forged = dict(record, start_time=record["start_time"] - 1)
        assert process.stop_recorded(forged) is False
        assert proc.alive()
        assert process.stop_recorded(record) is True
        assert not proc.alive() or proc._proc.wait(timeout=5) is not None
    finally:
        proc.stop()
    assert process.stop_recorded(record) is False  # already gone: nothing to do


# --- fake-gcs-server ------------------------------------------------------------------


def test_bucket_fixture_enforces_generation_preconditions(bucket):
    gen = bucket.write("sets/x86_64/beta.json", b"one", if_generation_match=0)
    assert gen > 0
    with pytest.raises(Conflict):
        bucket.write("sets/x86_64/beta.json", b"two", if_generation_match=0)
    with pytest.raises(Conflict):
        bucket.write("sets/x86_64/beta.json", b"two", if_generation_match=gen + 12345)
    gen2 = bucket.write("sets/x86_64/beta.json", b"two", if_generation_match=gen)
    assert gen2 != gen
    assert bucket.generation("sets/x86_64/beta.json") == gen2
    # Note: fake-gcs-server does NOT enforce ifGenerationMatch on DELETE (docs/local-stack.md).
    blob = bucket.read("sets/x86_64/beta.json")
    assert blob is not None and blob.data == b"two" and blob.generation == gen2


def test_each_test_gets_a_fresh_bucket(bucket, gcs):
    assert list(bucket.list("")) == []
    assert gcs.env()["STORAGE_EMULATOR_HOST"] == gcs.endpoint


def test_request_counting_sees_each_served_request(bucket, gcs):
    bucket.write("a/obj", b"x")
    mark = gcs.mark()
    bucket.generation("a/obj")
    bucket.generation("a/missing")
    served = gcs.requests(mark, bucket=bucket.name)
    assert [(r.method, r.status) for r in served] == [("GET", 200), ("GET", 404)]
    assert served[0].path == f"/storage/v1/b/{bucket.name}/o/a%2Fobj" or served[0].path.endswith(
        "/o/a/obj"
    )


def test_gcs_emulator_start_and_stop(tmp_path):
    emulator = GcsEmulator(tmp_path).start()
    endpoint = emulator.endpoint
    assert process.http_ok(f"{endpoint}/storage/v1/b")
    emulator.stop()
    assert not process.http_ok(f"{endpoint}/storage/v1/b")


# --- Pub/Sub emulator -----------------------------------------------------------------


def test_pubsub_publish_and_pull(pubsub):
    pubsub.create_topic("t-roundtrip")
    pubsub.create_pull_subscription("t-roundtrip", "s-roundtrip")
    pubsub.create_topic("t-roundtrip")  # idempotent
    pubsub.publish("t-roundtrip", b'{"hello": 1}', origin="test")
    got = []
    process.wait_for(
        lambda: bool(got.extend(pubsub.pull("s-roundtrip", timeout=2)) or got),
        timeout=10,
        what="message",
    )
    assert got[0].data == b'{"hello": 1}'
    assert dict(got[0].attributes) == {"origin": "test"}
    assert pubsub.env()["PUBSUB_EMULATOR_HOST"] == pubsub.host


def test_pubsub_stop_leaves_no_java_behind(tmp_path):
    emulator = PubsubEmulator(tmp_path).start()
    group = emulator.process.pid
    members = process._group_members(group)
    assert len(members) >= 2  # gcloud wrapper and the Java server
    emulator.stop()
    assert process._group_members(group) == []
    assert not process.port_open("127.0.0.1", emulator.port)


def test_request_counting_can_keep_to_one_bucket(bucket, gcs):
    other = f"{bucket.name}-other"
    gcs.create_bucket(other)
    mark = gcs.mark()
    bucket.generation("x")
    Bucket(make_client(), other).generation("x")
    everything = gcs.requests(mark)
    mine = gcs.requests(mark, bucket=bucket.name)
    assert any(r.path.endswith(f"/b/{other}/o/x") for r in everything)
    assert mine and all(r.path.split("/")[4] == bucket.name for r in mine)
    assert len(mine) < len(everything)


def test_readiness_timeout_says_why_the_check_kept_failing(tmp_path):
    """A component that keeps answering 5xx (or refusing connections) times out with the
    last reason, not silently."""
    import http.server
    import threading

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/healthz"
    try:
        with pytest.raises(StackError, match=r"web not ready after 1s \(last check: .*HTTP 503\)"):
            process.wait_for(lambda: process.http_ready(url), timeout=1, what="web")
    finally:
        server.shutdown()
        server.server_close()
    closed = f"http://127.0.0.1:{process.free_port()}/"
    with pytest.raises(StackError, match=r"last check: .*Connection refused"):
        process.wait_for(lambda: process.http_ready(closed), timeout=1, what="web")


def test_a_broken_readiness_check_fails_at_once_naming_its_error(tmp_path):
    proc = ManagedProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(30)"], workdir=tmp_path
    ).start()
    try:
        started = time.monotonic()
        with pytest.raises(StackError, match=r"sleeper: the readiness check failed: KeyError"):
            proc.wait_ready(lambda: {}["port"], timeout=20)
        assert time.monotonic() - started < 5
    finally:
        proc.stop()

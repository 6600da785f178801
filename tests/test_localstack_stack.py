"""LocalStack end to end: events reach functions by push, stack.json drives ``down``,
and simulated devices get their own network namespace."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from podman_images import image_exists, import_image

from edgefleet.cloud import storage
from edgefleet.localstack import netns, process
from edgefleet.localstack.process import StackError
from edgefleet.localstack.stack import LocalStack, StackConfig, down, read_state

HERE = Path(__file__).resolve().parent
TEST_FUNCTIONS = HERE / "localstack_functions" / "main.py"


def _records(path: Path, want: int) -> list[dict]:
    def enough() -> bool:
        return path.exists() and len(path.read_text().splitlines()) >= want

    process.wait_for(enough, timeout=30, what=f"{want} event(s) in {path.name}")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def recorded_stack(tmp_path_factory):  # type: ignore[no-untyped-def]
    record_dir = tmp_path_factory.mktemp("records")
    config = StackConfig(
        workdir=tmp_path_factory.mktemp("recorded-stack"),
        function_source=TEST_FUNCTIONS,
        function_env={"RECORD_DIR": str(record_dir), "EXTRA": "passed"},
    )
    with LocalStack(config) as s:
        yield s, record_dir


def test_registry_push_reaches_tag_monitor_as_a_cloudevent(recorded_stack):
    s, record_dir = recorded_stack
    digest = s.registry.push_minimal_image("fleet/model-server", "beta", salt="stack")
    [event] = _records(record_dir / "tag_monitor.jsonl", 1)
    assert event["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    payload = json.loads(base64.b64decode(event["data"]["message"]["data"]))
    name = f"{s.registry.host}/fleet/model-server"
    assert payload == {"action": "INSERT", "digest": f"{name}@{digest}", "tag": f"{name}:beta"}
    assert event["env"] == {
        "DEPLOY_BUCKET": "edgefleet-deploy",
        "INSECURE_REGISTRIES": s.registry.host,
        "EXTRA": "passed",
    }


def test_model_bucket_finalize_reaches_model_done_watcher(recorded_stack, monkeypatch):
    s, record_dir = recorded_stack
    for key, value in s.env().items():
        monkeypatch.setenv(key, value)
    client = storage.make_client()
    storage.Bucket(client, "edgefleet-deploy").write("x86_64/beta/ignored.yaml", b"x")
    storage.Bucket(client, "edgefleet-models").write("mnist/mnist_1_1700000000/TRAINER-DONE", b"")
    [event] = _records(record_dir / "model_done_watcher.jsonl", 1)
    attrs = event["data"]["message"]["attributes"]
    assert attrs["eventType"] == "OBJECT_FINALIZE"
    assert attrs["bucketId"] == "edgefleet-models"
    assert attrs["objectId"] == "mnist/mnist_1_1700000000/TRAINER-DONE"


def test_state_file_and_second_start_refused(recorded_stack):
    s, _ = recorded_stack
    state = read_state(s.workdir)
    names = {p["name"] for p in state["processes"]}
    assert {"pubsub-emulator", "fake-gcs-server", "registry", "registry-bridge"} <= names
    assert {"function-tag_monitor", "function-model_done_watcher"} <= names
    assert state["env"]["STORAGE_EMULATOR_HOST"] == s.gcs.endpoint
    with pytest.raises(StackError, match="already running"):
        LocalStack(StackConfig(workdir=s.workdir, functions=())).start()
    assert all(process.pid_alive(p["pid"]) for p in state["processes"])


def _edgefleet(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.operator.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )


def test_cli_up_devices_down(tmp_path):
    workdir = tmp_path / "cli"
    up = _edgefleet("up", "--workdir", str(workdir), "--no-functions", "--devices", "2")
    try:
        assert up.returncode == 0, up.stderr
        assert "export STORAGE_EMULATOR_HOST=" in up.stdout
        state = read_state(workdir)
        pids = [p["pid"] for p in state["processes"]]
        assert all(process.pid_alive(pid) for pid in pids)
        devices = state["devices"]
        assert [d["name"] for d in devices] == ["ef-dev1", "ef-dev2"]
        # What a build through the stack leaves in podman's storage: `down` removes it.
        built = import_image(tmp_path, f"127.0.0.1:{state['ports']['registry']}/edgefleet/t:1")
        endpoint = state["env"]["STORAGE_EMULATOR_HOST"]
        for device in devices:
            # Each device binds its own 127.0.0.1:5000 and reaches the host's emulator
            # at the host's address.
            server = subprocess.Popen(
                netns.ns_command(
                    device["name"], [sys.executable, "-m", "http.server", "5000", "-b", "127.0.0.1"]
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                probe = f"{endpoint}/storage/v1/b"
                got = netns.run_in(
                    device["name"],
                    [
                        sys.executable,
                        "-c",
                        "import sys, urllib.request, time\n"
                        "for _ in range(50):\n"
                        "    try: urllib.request.urlopen('http://127.0.0.1:5000/', timeout=1)\n"
                        "    except OSError: time.sleep(0.1)\n"
                        "    else: break\n"
                        f"print(urllib.request.urlopen({probe!r}, timeout=5).status)",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert got.stdout.strip() == "200", got.stderr
            finally:
                server.terminate()
                server.wait(timeout=5)
        again = _edgefleet("up", "--workdir", str(workdir), "--no-functions")
        assert again.returncode == 1
        error = again.stderr.strip().splitlines()[-1]
        assert error.startswith("edgefleet: a local stack is already running")
        assert "edgefleet down --workdir" in error
    finally:
        stopped = _edgefleet("down", "--workdir", str(workdir))
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped device ef-dev1" in stopped.stdout
    assert not any(process.pid_alive(pid) for pid in pids)
    assert not Path("/run/netns/ef-dev1").exists()
    assert not Path("/sys/class/net/efh-dev2").exists()
    assert read_state(workdir) is None
    assert not image_exists(built), "down left the stack registry's image in podman's storage"
    assert down(workdir) == []  # idempotent
    assert "nothing running" in _edgefleet("down", "--workdir", str(workdir)).stdout


def test_device_link_down_is_offline_and_teardown_removes_everything(gcs, tmp_path):
    import uuid

    record = netns.create_device(
        f"t{uuid.uuid4().hex[:6]}", workdir=tmp_path, forward_ports=[gcs.port]
    )
    probe = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "3"]
    url = f"{gcs.endpoint}/storage/v1/b"
    try:
        assert (
            netns.run_in(record["name"], [*probe, url], capture_output=True, text=True).stdout
            == "200"
        )
        netns.set_online(record, False)
        offline = netns.run_in(record["name"], [*probe, url], capture_output=True, text=True)
        assert offline.stdout != "200"
        netns.set_online(record, True)
        assert (
            netns.run_in(record["name"], [*probe, url], capture_output=True, text=True).stdout
            == "200"
        )
    finally:
        netns.teardown_recorded(record)
    assert not Path(f"/run/netns/{record['name']}").exists()
    assert not Path(f"/sys/class/net/{record['host_if']}").exists()
    assert not process.pid_alive(record["forwarder"]["pid"])
    netns.teardown_recorded(record)  # idempotent


def test_device_ids_are_validated():
    from edgefleet.core.errors import InvalidInput

    for bad in ("", "UPPER", "x" * 12, "-lead", "a/b"):
        with pytest.raises(InvalidInput):
            netns.check_id(bad)


@pytest.mark.podman
def test_stop_failure_is_named_the_rest_stopped_and_down_finishes(pubsub, tmp_path):
    """A component that cannot be stopped cleanly (here the podman service's socket path
    was replaced by a directory, so removing it fails) is named in the error; every other
    component is still stopped, and stack.json stays so 'edgefleet down' can finish."""
    workdir = tmp_path / "stack"
    s = LocalStack(StackConfig(workdir=workdir, functions=(), podman_service=True), pubsub=pubsub)
    s.start()
    assert s.podman_service is not None and s.gcs is not None
    pids = [p["pid"] for p in read_state(workdir)["processes"]]
    sock = s.podman_service.socket_path
    sock.unlink()
    sock.mkdir()
    (sock / "keep").write_text("not a socket")
    with pytest.raises(StackError) as failed:
        s.stop()
    message = str(failed.value)
    assert "podman-service: IsADirectoryError" in message and "edgefleet down" in message
    assert not any(process.pid_alive(pid) for pid in pids)
    assert read_state(workdir) is not None  # kept for 'down'
    (sock / "keep").unlink()
    sock.rmdir()
    assert down(workdir) == []  # nothing left running; the record is cleared
    assert read_state(workdir) is None


def test_rollout_tick_reaches_rollout_controller_periodically(recorded_stack):
    """The local stand-in for Cloud Scheduler: ticks arrive as Pub/Sub CloudEvents."""
    s, record_dir = recorded_stack
    ticks = _records(record_dir / "rollout_controller.jsonl", 2)
    assert {t["type"] for t in ticks} == {"google.cloud.pubsub.topic.v1.messagePublished"}
    times = [json.loads(base64.b64decode(t["data"]["message"]["data"]))["tick"] for t in ticks]
    assert times[1] - times[0] >= s.config.rollout_tick_seconds * 0.9


def test_leftovers_of_an_interrupted_run_are_refused_with_the_commands_that_remove_them(
    tmp_path,
):
    """A run killed while it created a device (no teardown) leaves the host link or the
    namespace behind: the next one must say what to remove, and remove nothing itself
    (they may belong to a stack that is running)."""
    import uuid

    device_id = f"t{uuid.uuid4().hex[:6]}"
    name, host_if = f"{netns.PREFIX}{device_id}", f"{netns.HOST_IF_PREFIX}{device_id}"
    peer = f"efd-{device_id}"  # as create_device names it before the move
    subprocess.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", peer], check=True)
    try:
        with pytest.raises(StackError, match=rf"link {host_if} already exists: .*interrupted"):
            netns.create_device(device_id, workdir=tmp_path)
        assert Path(f"/sys/class/net/{host_if}").exists()  # not touched
        assert not Path(f"/run/netns/{name}").exists()  # nothing created either
        subprocess.run(["ip", "netns", "add", name], check=True)
        with pytest.raises(StackError) as refused:
            netns.create_device(device_id, workdir=tmp_path)
        message = str(refused.value)
        assert f"network namespace {name} and link {host_if} already exist" in message
        assert f"'ip netns del {name}; ip link del {host_if}'" in message
        assert Path(f"/run/netns/{name}").exists()
    finally:
        subprocess.run(["ip", "link", "del", host_if], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)

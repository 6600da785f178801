"""Pure logic of simulated devices, the podman manifest adaptation and the VERSION column
(the real thing runs in tests/test_e2e.py)."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from device.podman import adapt_for_podman
from edgefleet.core.errors import InvalidInput
from edgefleet.localstack import devices as dev
from edgefleet.localstack.process import StackError
from edgefleet.operator import fleet

DIGEST = "sha256:" + "ab" * 32


def test_channels_are_assigned_round_robin() -> None:
    assert dev.assign_channels(5, ("latest", "beta", "stable")) == [
        "latest",
        "beta",
        "stable",
        "latest",
        "beta",
    ]
    with pytest.raises(StackError):
        dev.assign_channels(1, ())


def test_each_device_gets_its_own_storage_and_settings(tmp_path: Path) -> None:
    a = dev.DevicePaths.of(tmp_path, "dev1")
    b = dev.DevicePaths.of(tmp_path, "dev2")
    env = dev.agent_env(
        a,
        device_id="dev1",
        channel="beta",
        registry_host="127.0.0.1:5001",
        poll_seconds=2,
        trusted_keys="/k.pub",
        arch="x86_64",
    )
    assert env["RUNTIME"] == "podman" and env["CHANNEL"] == "beta" and env["POLL_SECONDS"] == "2"
    assert env["ALLOWED_REGISTRIES"] == env["INSECURE_REGISTRIES"] == "127.0.0.1:5001"
    assert env["TRUSTED_KEYS"] == "/k.pub"
    assert Path(env["MANIFEST_DIR"]).parent == Path(env["STATE_DIR"]).parent == a.root
    storage = tomllib.loads(Path(env["CONTAINERS_STORAGE_CONF"]).read_text())["storage"]
    assert storage["graphroot"] == str(a.graphroot)
    assert storage["runroot"] == str(a.runroot) != str(b.runroot)
    assert len(storage["runroot"]) <= 50  # podman refuses longer runroots
    conf = tomllib.loads(Path(env["CONTAINERS_CONF"]).read_text())
    assert conf["engine"]["runtime"] == "runc" and conf["engine"]["tmp_dir"] == str(a.tmpdir)
    assert conf["containers"]["default_ulimits"]  # the project's settings are kept
    argv = dev.podman_argv(a, ["pod", "ps"])
    assert argv[argv.index("--root") + 1] == str(a.graphroot)
    assert argv[argv.index("--runroot") + 1] == str(a.runroot)
    with pytest.raises(InvalidInput):
        dev.agent_env(a, device_id="dev1", channel="Bad!", registry_host="h:1")


def test_teardown_only_touches_device_directories(tmp_path: Path) -> None:
    stranger = tmp_path / "not-devices" / "dev1"
    stranger.mkdir(parents=True)
    dev.teardown_storage({"id": "dev1", "device_dir": str(stranger)})
    assert stranger.exists()
    wrong_id = tmp_path / "devices" / "dev2"
    wrong_id.mkdir(parents=True)
    dev.teardown_storage({"id": "dev1", "device_dir": str(wrong_id)})
    assert wrong_id.exists()
    mine = dev.DevicePaths.of(tmp_path, "dev3")
    mine.state_dir.mkdir(parents=True)
    dev.teardown_storage({"id": "dev3", "device_dir": str(mine.root)})
    assert not mine.root.exists()


def test_signing_key_is_generated_once(tmp_path: Path) -> None:
    key, pub = dev.ensure_signing_key(tmp_path)
    first = key.read_bytes()
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY")
    assert dev.ensure_signing_key(tmp_path) == (key, pub) and key.read_bytes() == first


def test_unknown_namespace_is_an_os_error() -> None:
    with pytest.raises(OSError):
        dev.connect_in_netns("ef-does-not-exist", 5000)
    assert dev.device_json("ef-does-not-exist", "GET", "/version/") is None


def test_long_annotations_are_dropped_for_podman() -> None:
    image = "127.0.0.1:5000/edgefleet/mobilenet@" + DIGEST
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "m", "annotations": {"edgefleet.dev/image": image, "short": "x"}},
        "spec": {"containers": [{"name": "c", "image": image}]},
    }
    adapted = yaml.safe_load(adapt_for_podman(yaml.safe_dump(pod).encode()))
    assert adapted["metadata"]["annotations"] == {"short": "x"}
    assert adapted["spec"]["containers"][0]["image"] == image
    text = yaml.safe_dump({**pod, "metadata": {"name": "m", "annotations": {"a": "b"}}}).encode()
    assert adapt_for_podman(text) == text


def test_version_column_comes_from_the_running_images() -> None:
    image = "127.0.0.1:5000/edgefleet/mobilenet@" + DIGEST
    report = {
        "deviceId": "dev1",
        "channel": "beta",
        "health": "healthy",
        "reportedAt": datetime.now(UTC).isoformat(),
        "pods": [{"name": "mobilenet", "containers": [{"image": image, "imageDigest": DIGEST}]}],
    }
    [row] = fleet.with_versions(
        [fleet.parse_report(json.dumps(report).encode(), "status/dev1.json")],
        {image: "mobilenet_2_1764000000"}.get,
    )
    assert row.images == (image,) and row.versions == ("mobilenet_2_1764000000",)
    assert "mobilenet_2_1764000000" in fleet.table([row], datetime.now(UTC), 300)
    [unknown] = fleet.with_versions([row], lambda _i: None)
    assert unknown.versions == row.versions  # unchanged when nothing is known


def test_arm64_devices_need_qemu_and_say_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.packaging import podman_builder

    monkeypatch.setattr(podman_builder, "runnable_arches", lambda: frozenset({"x86_64"}))
    with pytest.raises(StackError, match=r"qemu-aarch64 is not enabled.*make install"):
        dev.check_emulation("aarch64")
    monkeypatch.setattr(podman_builder, "runnable_arches", lambda: frozenset({"x86_64", "aarch64"}))
    assert dev.check_emulation("aarch64") == "aarch64"


def test_up_bounds_the_number_of_emulated_devices(capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.operator.cli import main

    assert main(["up", "--arm64-devices", "9", "--workdir", "/nonexistent/x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["edgefleet: --arm64-devices 9: choose 0 to 8 (emulated)"]

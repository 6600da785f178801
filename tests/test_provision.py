"""`edgefleet provision`: what it writes, idempotence, dry-run, errors, and that the agent
takes over the provisioned folder (keeping the provisioned sync pod)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.sync import FAKE_DIGEST, SetPublisher, entries, pod_yaml

from device.runtime import KubeletRuntime
from edgefleet.core import layout, policy, signing
from edgefleet.operator.cli import main
from sync_pod.agent import APPLIED, Agent
from sync_pod.config import from_env

REG = "127.0.0.1:5999"
SYNC_IMAGE = f"{REG}/edgefleet/sync@{FAKE_DIGEST}"
SYNC_FILE = layout.manifest_file_name(layout.SYNC_POD_NAME)


def _args(root: Path, runtime: str = "kubelet", *extra: str) -> list[str]:
    out = [
        "provision",
        "--arch", "x86_64",
        "--channel", "beta",
        "--bucket", "deploy",
        "--runtime", runtime,
        "--device-id", "dev-9",
        "--allowed-registries", REG,
        "--root", str(root),
    ]  # fmt: skip
    if runtime == "kubelet":
        out += ["--sync-image", SYNC_IMAGE]
    return out + list(extra)


def _states(out: str) -> list[str]:
    return [ln.split("  /")[0].strip() for ln in out.splitlines() if "  /" in ln]


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = "/" + str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_text()
    return out


def test_kubelet_device_files_and_idempotence(tmp_path: Path, capsys) -> None:
    key = signing.generate(tmp_path / "keys" / "fleet")
    root = tmp_path / "root"
    root.mkdir()
    args = _args(root, "kubelet", "--trusted-keys", str(tmp_path / "keys" / "fleet.pub"))
    assert main(args) == 0
    first = capsys.readouterr().out
    tree = _tree(root)
    kid = signing.key_id(key.public_key())
    assert tree["/etc/edgefleet/device-id"] == "dev-9\n"
    assert (
        tree[f"/etc/edgefleet/trusted/{kid}.pub"] == signing.public_pem(key.public_key()).decode()
    )
    unit = tree["/etc/systemd/system/kubelet.service"]
    assert "--pod-manifest-path=/opt/device/pods" in unit
    assert tree["/opt/device/pods"] == "-> ../../var/lib/edgefleet/sets/provisioned"
    sync = tree[f"/var/lib/edgefleet/sets/provisioned/{SYNC_FILE}"]
    assert SYNC_IMAGE in sync and f"/etc/edgefleet/trusted/{kid}.pub" in sync
    assert (root / "opt/device/pods" / SYNC_FILE).read_text() == sync  # the link resolves
    assert _states(first) == ["written"] * 5
    assert main(args) == 0
    second = capsys.readouterr().out
    assert _states(second) == ["unchanged"] * 5
    assert "wrote 0, 5 unchanged" in second
    assert _tree(root) == tree


def test_podman_device_gets_an_agent_unit(tmp_path: Path, capsys) -> None:
    assert main(_args(tmp_path, "podman")) == 0
    tree = _tree(tmp_path)
    assert set(tree) == {
        "/etc/edgefleet/device-id",
        "/etc/edgefleet/sync.env",
        "/etc/systemd/system/edgefleet-sync.service",
    }
    env = dict(
        line.split("=", 1) for line in tree["/etc/edgefleet/sync.env"].splitlines() if "=" in line
    )
    assert env["RUNTIME"] == "podman" and env["CHANNEL"] == "beta" and env["BUCKET"] == "deploy"
    # The env file is exactly what the agent accepts.
    assert from_env(env).device_id == "dev-9"
    unit = tree["/etc/systemd/system/edgefleet-sync.service"]
    assert "EnvironmentFile=/etc/edgefleet/sync.env" in unit
    assert "ExecStart=/usr/bin/python3 -m sync_pod" in unit


def test_dry_run_writes_nothing(tmp_path: Path, capsys) -> None:
    assert main([*_args(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would write" in out and "kind: Pod" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (["--sync-image", f"{REG}/edgefleet/sync:latest"], "not pinned by digest"),
        (["--sync-image", f"10.1.1.1:5000/x/sync@{FAKE_DIGEST}"], "not allowed"),
        (["--arch", "sparc"], "unknown arch"),
        (["--channel", "all"], "invalid channel"),
        (["--device-id", "../x"], "invalid device id"),
        (["--manifest-dir", "pods"], "absolute path"),
        (["--trusted-keys", "/nonexistent.pub"], "cannot read trusted key"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, change: list[str], needle: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgefleet.operator.cli", *_args(tmp_path), *change],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgefleet: ") and needle in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_agent_takes_over_a_provisioned_device(bucket, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert main(_args(root)) == 0
    provisioned_sync = (root / "opt/device/pods" / SYNC_FILE).read_text()
    env = {
        "BUCKET": bucket.name,
        "ARCH": "x86_64",
        "CHANNEL": "beta",
        "DEVICE_ID_FILE": str(root / "etc/edgefleet/device-id"),
        "MANIFEST_DIR": str(root / "opt/device/pods"),
        "STATE_DIR": str(root / "var/lib/edgefleet"),
        "ALLOWED_REGISTRIES": REG,
        "EDGEFLEET_INSECURE_ALLOW_UNSIGNED": "1",  # unsigned sets in this test
    }
    agent = Agent(from_env(env), bucket, KubeletRuntime())
    assert agent.config.device_id == "dev-9"
    agent.recover()
    web = pod_yaml("web", f"{REG}/edgefleet/web@{FAKE_DIGEST}")
    SetPublisher(bucket, "x86_64", "beta").publish(entries({"web": web}))
    assert agent.poll_once() == APPLIED
    folder = {p.name: p.read_text() for p in (root / "opt/device/pods").iterdir()}
    # The device writes the canonical JSON of what it checked (edgefleet.core.policy).
    assert folder == {"web-pod.yaml": policy.canonical(yaml.safe_load(web)).decode(),
                      SYNC_FILE: provisioned_sync}  # fmt: skip

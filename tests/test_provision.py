"""`edgefleet provision`: what it writes, idempotence, dry-run, errors, and that the agent
takes over the provisioned folder (keeping the provisioned sync pod)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.kubelet import KubeletStandIn
from support.sync import FAKE_DIGEST, SetPublisher, entries, pod_yaml

from device import gcs_json
from edgefleet.core import layout, signing
from edgefleet.localstack.process import free_port
from edgefleet.operator.cli import main
from sync_pod.__main__ import make_agent
from sync_pod.agent import APPLIED
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
    assert "--config=/etc/kubernetes/kubelet/config.yaml" in unit
    assert "--pod-manifest-path" not in unit and "--kubeconfig" not in unit
    config = yaml.safe_load(tree["/etc/kubernetes/kubelet/config.yaml"])
    assert config["kind"] == "KubeletConfiguration"
    assert config["staticPodPath"] == "/opt/device/pods"
    assert config["fileCheckFrequency"] == "5s"
    assert config["readOnlyPort"] == 0 and config["address"] == "127.0.0.1"
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert (
        config["authentication"]["x509"]["clientCAFile"] == "/etc/kubernetes/kubelet/client-ca.crt"
    )
    assert config["authorization"]["mode"] == "AlwaysAllow"  # standalone: no API server
    # The folder kubelet watches is a real directory holding the sync pod.
    assert not (root / "opt/device/pods").is_symlink()
    sync = tree[f"/opt/device/pods/{SYNC_FILE}"]
    assert SYNC_IMAGE in sync and f"/etc/edgefleet/trusted/{kid}.pub" in sync
    # One device CA: kubelet trusts it for clients, the agent for kubelet's certificate.
    assert tree["/etc/kubernetes/kubelet/client-ca.crt"] == tree["/etc/edgefleet/kubelet/ca.crt"]
    for key in ("/etc/kubernetes/kubelet/kubelet.key", "/etc/edgefleet/kubelet/agent.key"):
        assert (root / key.lstrip("/")).stat().st_mode & 0o777 == 0o600, key
    assert _states(first) == ["written"] * 11
    assert main(args) == 0
    second = capsys.readouterr().out
    assert _states(second) == ["unchanged"] * 11
    assert "wrote 0, 11 unchanged" in second
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


def test_a_cluster_node_kubelet_uses_webhook_authorization(tmp_path: Path) -> None:
    assert main(_args(tmp_path, "kubelet", "--kubeconfig", "/etc/kubernetes/kubelet.conf")) == 0
    config = yaml.safe_load((tmp_path / "etc/kubernetes/kubelet/config.yaml").read_text())
    assert config["authorization"]["mode"] == "Webhook"
    assert config["authentication"]["webhook"]["enabled"] is True
    assert config["authentication"]["anonymous"]["enabled"] is False
    unit = (tmp_path / "etc/systemd/system/kubelet.service").read_text()
    assert "--kubeconfig=/etc/kubernetes/kubelet.conf" in unit


def test_dry_run_writes_nothing(tmp_path: Path, capsys) -> None:
    assert main([*_args(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would write" in out and "kind: Pod" in out
    assert "PRIVATE KEY" not in out and "(a private key: not shown)" in out
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
        (["--file-check-frequency", "often"], "use a duration"),
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


def test_agent_takes_over_a_provisioned_device_under_kubelet(bucket, tmp_path: Path) -> None:
    """Provisioned files only: a stand-in kubelet configured from the provisioned
    KubeletConfiguration, the agent wired as `python -m sync_pod` wires it (device GCS
    adapter, kubelet credentials from the provisioned folder)."""
    root = tmp_path / "root"
    root.mkdir()
    assert main(_args(root)) == 0
    manifest_dir = root / "opt/device/pods"
    provisioned_sync = (manifest_dir / SYNC_FILE).read_text()
    kubelet_dir = root / "etc/kubernetes/kubelet"
    config = yaml.safe_load((kubelet_dir / "config.yaml").read_text())
    assert root / config["staticPodPath"].lstrip("/") == manifest_dir
    kubelet = KubeletStandIn(
        str(manifest_dir), period=float(config["fileCheckFrequency"].rstrip("s")), start_delay=0.1
    ).start()
    try:
        url = kubelet.serve(
            free_port(),
            cert=root / config["tlsCertFile"].lstrip("/"),
            key=root / config["tlsPrivateKeyFile"].lstrip("/"),
            client_ca=root / config["authentication"]["x509"]["clientCAFile"].lstrip("/"),
        )
        env = {
            "BUCKET": bucket.name,
            "ARCH": "x86_64",
            "CHANNEL": "beta",
            "DEVICE_ID_FILE": str(root / "etc/edgefleet/device-id"),
            "MANIFEST_DIR": str(manifest_dir),
            "STATE_DIR": str(root / "var/lib/edgefleet"),
            "ALLOWED_REGISTRIES": REG,
            "KUBELET_API": url,
            "KUBELET_CREDENTIALS": str(root / "etc/edgefleet/kubelet"),
            "HEALTH_TIMEOUT": "10",
        }
        agent = make_agent(from_env(env))
        assert isinstance(agent.bucket, gcs_json.JsonBucket)
        assert agent.config.device_id == "dev-9"
        agent.recover()
        web = pod_yaml("web", f"{REG}/edgefleet/web@{FAKE_DIGEST}")
        SetPublisher(bucket, "x86_64", "beta").publish(entries({"web": web}))
        assert agent.poll_once() == APPLIED
        folder = {p.name: p.read_text() for p in manifest_dir.iterdir()}
        assert folder == {"web-pod.yaml": web, SYNC_FILE: provisioned_sync}
        assert set(kubelet.running()) == {"web", layout.SYNC_POD_NAME}
    finally:
        kubelet.stop()

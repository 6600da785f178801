"""Agent configuration: parsed once from env, one-line errors naming the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.core import signing
from edgefleet.core.errors import ConfigError
from sync_pod.config import from_env

BASE = {"BUCKET": "b", "ARCH": "aarch64", "CHANNEL": "beta", "DEVICE_ID": "pi-7"}


def test_defaults_and_track_alias() -> None:
    c = from_env({**{k: v for k, v in BASE.items() if k != "CHANNEL"}, "TRACK": "stable"})
    assert (c.arch, c.channel, c.device_id) == ("aarch64", "stable", "pi-7")
    assert c.manifest_dir == Path("/opt/device/pods")
    assert c.state_dir == Path("/var/lib/edgefleet")
    assert c.runtime == "kubelet" and c.poll_seconds == 60.0
    assert c.set_object == "sets/aarch64/stable.json"
    assert c.status_object == "status/pi-7.json"
    # Fail closed: no registry is allowed and no key trusted until provisioned.
    assert c.allowed_registries == () and c.trusted_keys == () and c.root_keys == ()
    assert c.insecure_unsigned is False and c.trust().signing_keys() == ()
    # The allowlist's walk is the device's check; the V1Pod model is opt-in (docs/device.md).
    assert c.v1pod_check is False
    assert from_env({**BASE, "V1POD_CHECK": "on"}).v1pod_check is True


def test_sync_pod_may_mount_its_own_folders() -> None:
    c = from_env({**BASE, "MANIFEST_DIR": "/srv/k/pods", "STATE_DIR": "/srv/state"})
    paths = c.sync_pod_paths()
    assert "/srv/k" in paths and "/srv/state" in paths and "/etc/edgefleet" in paths
    assert c.policy().allowance("edgefleet-sync").host_paths == paths


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"BUCKET": ""}, "BUCKET is not set"),
        ({"ARCH": "sparc"}, "ARCH: unknown arch"),
        ({"CHANNEL": ""}, "CHANNEL is not set"),
        ({"CHANNEL": "all"}, "CHANNEL: invalid channel"),
        ({"TRACK": "alpha"}, "disagree"),
        ({"DEVICE_ID": "a/b"}, "DEVICE_ID: invalid device id"),
        ({"MANIFEST_DIR": "pods"}, "must be an absolute path"),
        ({"MANIFEST_DIR": "/var/lib/edgefleet/pods"}, "must not contain each other"),
        ({"RUNTIME": "docker"}, "RUNTIME='docker' is unknown"),
        ({"POLL_SECONDS": "soon"}, "not a number"),
        ({"POLL_SECONDS": "0"}, "at least"),
        ({"HEALTH_TIMEOUT": "nan"}, "at least"),
        ({"TLS_VERIFY": "maybe"}, "true or false"),
        ({"TRUSTED_KEYS": "/nonexistent/key.pub"}, "cannot read trusted key"),
        ({"ROOT_KEYS": "/nonexistent/root.pub"}, "cannot read trusted key"),
        ({"ALLOWED_REGISTRIES": "europe-docker.pkg.dev"}, "admits every repository"),
        ({"EDGEFLEET_INSECURE_ALLOW_UNSIGNED": "maybe"}, "true or false"),
        ({"V1POD_CHECK": "child"}, "V1POD_CHECK='child' must be true or false"),
    ],
)
def test_bad_config_is_one_line(override: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_env({**BASE, **override})
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_trusted_keys_and_registries(tmp_path: Path) -> None:
    a = signing.generate(tmp_path / "a")
    b = signing.generate(tmp_path / "b")
    c = from_env(
        {
            **BASE,
            "TRUSTED_KEYS": f"{tmp_path}/a.pub, {tmp_path}/b.pub",
            "ALLOWED_REGISTRIES": "127.0.0.1:5000/edgefleet/, localhost:5001",
        }
    )
    assert [signing.key_id(k) for k in c.trusted_keys] == [
        signing.key_id(a.public_key()),
        signing.key_id(b.public_key()),
    ]
    assert c.allowed_registries == ("127.0.0.1:5000/edgefleet", "localhost:5001")
    assert c.trust().signing_keys() == c.trusted_keys


def test_root_keys_replace_direct_trust_and_insecure_is_explicit(tmp_path: Path) -> None:
    signing.generate(tmp_path / "root")
    signing.generate(tmp_path / "online")
    c = from_env(
        {**BASE, "ROOT_KEYS": f"{tmp_path}/root.pub", "TRUSTED_KEYS": f"{tmp_path}/online.pub"}
    )
    # Until a root document names signing keys, nothing is trusted: TRUSTED_KEYS is ignored
    # when a root key is provisioned (a revoked key must not stay trusted through it).
    assert len(c.root_keys) == 1 and c.trust().signing_keys() == ()
    assert from_env({**BASE, "EDGEFLEET_INSECURE_ALLOW_UNSIGNED": "1"}).trust().insecure


def test_main_prints_one_line_and_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sync_pod", "--once"],
        env={"PATH": "/usr/bin:/bin", "ARCH": "x86_64", "CHANNEL": "beta"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "edgefleet: BUCKET is not set: name the deploy bucket, e.g. BUCKET=edgefleet-deploy"
    ]

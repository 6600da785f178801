"""Issue 12, freshness, recovery and crash loops: the device agent against the real GCS
emulator (kubelet runtime: files only), with a provisioned ROOT key and ``trust/root.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.sync import FAKE_DIGEST, TEST_REGISTRY, SetPublisher, agent_env, entries, pod_yaml

from device.runtime import KubeletRuntime
from edgefleet.core import layout, manifest_set, signing, trust
from sync_pod.agent import APPLIED, REJECTED, UNCHANGED, Agent
from sync_pod.config import from_env

IMAGE = f"{TEST_REGISTRY}/edgefleet/web@{FAKE_DIGEST}"


class Keys:
    def __init__(self, tmp_path: Path) -> None:
        self.root = signing.generate(tmp_path / "root.pem")
        self.root_pub = str(tmp_path / "root.pem.pub")
        self.online = Ed25519PrivateKey.generate()
        self.next = Ed25519PrivateKey.generate()


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def publish_root(bucket, root_signers, version: int, signing_keys, **extra) -> None:
    root = trust.Root(
        version=version,
        root_keys=tuple(k.public_key() for k in root_signers),
        signing_keys=tuple(k.public_key() for k in signing_keys),
        **extra,
    )
    bucket.write(trust.ROOT_OBJECT, trust.encode(root, root_signers))


def secure_agent(bucket, tmp_path: Path, keys: Keys) -> Agent:
    env = agent_env(bucket.name, tmp_path, ROOT_KEYS=keys.root_pub)
    del env["EDGEFLEET_INSECURE_ALLOW_UNSIGNED"]
    agent = Agent(from_env(env), bucket, KubeletRuntime())
    agent.recover()
    return agent


def web(*command: str) -> list:
    return entries({"web": pod_yaml("web", IMAGE, command=list(command) or None)})


def last_reason(agent: Agent) -> str:
    assert agent.state.last_rejection is not None
    return agent.state.last_rejection.reason


def test_no_trusted_key_fails_closed_unless_the_insecure_switch_is_set(bucket, tmp_path) -> None:
    env = agent_env(bucket.name, tmp_path)
    del env["EDGEFLEET_INSECURE_ALLOW_UNSIGNED"]
    agent = Agent(from_env(env), bucket, KubeletRuntime())
    agent.recover()
    SetPublisher(bucket, "x86_64", "beta").publish(web())
    assert agent.poll_once() == REJECTED
    assert last_reason(agent) == manifest_set.REJECT_NO_TRUST
    insecure = Agent(from_env(agent_env(bucket.name, tmp_path / "b")), bucket, KubeletRuntime())
    insecure.recover()
    assert insecure.poll_once() == APPLIED
    assert insecure.status()["trust"]["insecure"] is True


def test_signing_key_rotation_and_revocation_without_touching_devices(
    bucket, tmp_path, keys
) -> None:
    publish_root(bucket, [keys.root], 1, [keys.online])
    agent = secure_agent(bucket, tmp_path, keys)
    pub = SetPublisher(bucket, "x86_64", "beta")
    pub.publish(web(), signers=[keys.online])
    assert agent.poll_once() == APPLIED
    # Rotate: root v2 authorises the next key and revokes the old one. Same device config.
    publish_root(
        bucket, [keys.root], 2, [keys.online, keys.next],
        revoked=frozenset({signing.key_id(keys.online.public_key())}),
    )  # fmt: skip
    pub.publish(web("old"), signers=[keys.online])
    assert agent.poll_once() == REJECTED
    assert last_reason(agent) == manifest_set.REJECT_UNTRUSTED_KEY
    pub.publish(web("new"), signers=[keys.next])
    assert agent.poll_once() == APPLIED
    assert agent.status()["trust"]["rootVersion"] == 2


def test_forged_or_rolled_back_root_is_refused_and_old_trust_stays(bucket, tmp_path, keys) -> None:
    publish_root(bucket, [keys.root], 2, [keys.online])
    agent = secure_agent(bucket, tmp_path, keys)
    pub = SetPublisher(bucket, "x86_64", "beta")
    pub.publish(web(), signers=[keys.online])
    assert agent.poll_once() == APPLIED
    # A bucket writer's root, signed with a key of its own, authorising its own key.
    attacker = Ed25519PrivateKey.generate()
    publish_root(bucket, [attacker], 3, [attacker])
    pub.publish(web("evil"), signers=[attacker])
    assert agent.poll_once() == REJECTED
    assert trust.REJECT_ROOT_SIGNATURE in [r.reason for r in agent.state.rejections]
    assert agent.roots.trust.root is not None and agent.roots.trust.root.version == 2
    # An old, validly signed root cannot roll trust back either.
    publish_root(bucket, [keys.root], 1, [attacker])
    pub.publish(web("evil2"), signers=[attacker])
    assert agent.poll_once() == REJECTED
    assert trust.REJECT_ROOT_ROLLBACK in [r.reason for r in agent.state.rejections]


def test_root_signed_reset_recovers_from_a_fast_forward(bucket, tmp_path, keys) -> None:
    publish_root(bucket, [keys.root], 1, [keys.online])
    agent = secure_agent(bucket, tmp_path, keys)
    pub = SetPublisher(bucket, "x86_64", "beta")
    huge = manifest_set.ManifestSet(
        "x86_64", "beta", 2**62, pub.build(web()).issued_at, pub.build(web()).expires_at,
        tuple(web("huge")),
    )  # fmt: skip
    bucket.write(pub.object_name, manifest_set.encode(huge, [keys.online]))
    assert agent.poll_once() == APPLIED
    pub.last = None
    pub.publish(web("after"), signers=[keys.online])
    assert agent.poll_once() == REJECTED
    assert last_reason(agent) == manifest_set.REJECT_REPLAYED
    # Recovery: the root key signs a reset for this channel; devices apply the next set.
    publish_root(bucket, [keys.root], 2, [keys.online], sequence_resets={"x86_64/beta": 2})
    pub.publish(web("recovered"), signers=[keys.online])
    assert agent.poll_once() == APPLIED
    # Only once: the reset does not make older sets acceptable again.
    old = pub.history[0][1]
    bucket.write(pub.object_name, old)
    assert agent.poll_once() == REJECTED


@pytest.mark.parametrize(
    ("attack", "data"),
    [
        pytest.param("lone-surrogate", None, id="lone-surrogate"),
        pytest.param("nested-brackets", b"[" * 200_000, id="nested-brackets"),
        pytest.param("huge", b" " * (manifest_set.MAX_SET_BYTES + 10), id="huge-document"),
        pytest.param("duplicates", b'{"kind": "ManifestSet", "kind": "x"}', id="duplicate-keys"),
    ],
)
def test_decode_failure_is_one_recorded_rejection_not_a_crash_loop(
    bucket, tmp_path, attack: str, data: bytes | None
) -> None:
    agent = Agent(from_env(agent_env(bucket.name, tmp_path)), bucket, KubeletRuntime())
    agent.recover()
    pub = SetPublisher(bucket, "x86_64", "beta")
    if data is None:
        doc = json.loads(manifest_set.encode(pub.build(web())))
        doc["manifests"][0]["yaml"] += "# \ud800"  # json.dumps writes the \\ud800 escape
        data = json.dumps(doc).encode()
    pub.write_raw(data)
    assert agent.poll_once() == REJECTED, attack
    assert last_reason(agent) in ("invalid-set", "too-large")
    # Recorded once; the next poll sees the same generation and does not download it again.
    assert agent.poll_once() == UNCHANGED
    assert len(agent.state.rejections) == 1


def test_a_set_cannot_switch_device_trust_off(bucket, tmp_path, keys) -> None:
    """A stolen signing key ships a sync pod that turns verification off: refused."""
    publish_root(bucket, [keys.root], 1, [keys.online])
    agent = secure_agent(bucket, tmp_path, keys)
    evil = pod_yaml(
        layout.SYNC_POD_NAME,
        IMAGE,
        container_extra={"env": [{"name": "EDGEFLEET_INSECURE_ALLOW_UNSIGNED", "value": "1"}]},
    )
    SetPublisher(bucket, "x86_64", "beta").publish(
        entries({layout.SYNC_POD_NAME: evil}, "all"), signers=[keys.online]
    )
    assert agent.poll_once() == REJECTED
    assert last_reason(agent) == "policy"


def test_status_reports_the_running_sets_expiry(bucket, tmp_path, keys) -> None:
    from datetime import UTC, datetime, timedelta

    publish_root(bucket, [keys.root], 1, [keys.online])
    agent = secure_agent(bucket, tmp_path, keys)
    pub = SetPublisher(bucket, "x86_64", "beta")
    pub.publish(web(), signers=[keys.online], ttl=timedelta(hours=2))
    assert agent.poll_once() == APPLIED
    status = agent.status()
    assert status["setFreshness"] == "stale" and status["setExpiresAt"]
    agent.clock = lambda: (datetime.now(UTC) + timedelta(hours=3)).timestamp()
    assert agent.status()["setFreshness"] == "expired"


def test_provisioned_root_key_and_keys_authorize_cli(bucket, tmp_path, capsys) -> None:
    """The operator flow: root key offline, its public half provisioned; the CLI authorises
    and later revokes signing keys; the device is never touched again."""
    from edgefleet.operator.cli import main

    for name in ("root.pem", "online.pem", "next.pem"):
        assert main(["keys", "generate", str(tmp_path / name)]) == 0
    device = tmp_path / "device"
    device.mkdir()
    args = ["provision", "--arch", "x86_64", "--channel", "beta", "--bucket", bucket.name,
            "--runtime", "podman", "--device-id", "dev-1", "--allowed-registries", TEST_REGISTRY,
            "--root-keys", f"{tmp_path}/root.pem.pub", "--root", str(device)]  # fmt: skip
    assert main(args) == 0
    installed = list((device / "etc/edgefleet/root-keys").glob("*.pub"))
    assert len(installed) == 1
    assert "ROOT_KEYS=/etc/edgefleet/root-keys/" in (device / "etc/edgefleet/sync.env").read_text()

    authorize = ["keys", "authorize", "--bucket", bucket.name, "--root", f"{tmp_path}/root.pem"]
    assert main([*authorize, "--signing", f"{tmp_path}/online.pem.pub"]) == 0
    env = agent_env(bucket.name, tmp_path, ROOT_KEYS_DIR=str(installed[0].parent))
    del env["EDGEFLEET_INSECURE_ALLOW_UNSIGNED"]
    agent = Agent(from_env(env), bucket, KubeletRuntime())
    agent.recover()
    online = signing.load_private_key(tmp_path / "online.pem")
    pub = SetPublisher(bucket, "x86_64", "beta")
    pub.publish(web(), signers=[online])
    assert agent.poll_once() == APPLIED
    # Rotate with the CLI: authorise the next key, revoke the online one.
    old_id = signing.key_id(online.public_key())
    assert main([*authorize, "--signing", f"{tmp_path}/next.pem.pub", "--revoke", old_id]) == 0
    pub.publish(web("stolen"), signers=[online])
    assert agent.poll_once() == REJECTED
    pub.publish(web("next"), signers=[signing.load_private_key(tmp_path / "next.pem")])
    assert agent.poll_once() == APPLIED
    assert "version 2" in capsys.readouterr().out


def test_root_rotation_survives_a_restart(bucket, tmp_path, keys) -> None:
    """Root v2 moves trust to a new root key (signed by old and new); v3 is signed by the new
    root alone. A restarted device still follows: it keeps the root it accepted."""
    new_root = Ed25519PrivateKey.generate()
    publish_root(bucket, [keys.root], 1, [keys.online])
    agent = secure_agent(bucket, tmp_path, keys)
    pub = SetPublisher(bucket, "x86_64", "beta")
    pub.publish(web(), signers=[keys.online])
    assert agent.poll_once() == APPLIED
    v2 = trust.Root(2, (new_root.public_key(),), (keys.online.public_key(),))
    bucket.write(trust.ROOT_OBJECT, trust.encode(v2, [keys.root, new_root]))
    pub.publish(web("v2"), signers=[keys.online])
    assert agent.poll_once() == APPLIED
    publish_root(bucket, [new_root], 3, [keys.next])
    pub.publish(web("v3"), signers=[keys.next])
    assert agent.poll_once() == APPLIED
    # Restart: v3 is signed by the new root only, which the provisioned files never named.
    restarted = secure_agent(bucket, tmp_path, keys)
    pub.publish(web("after-restart"), signers=[keys.next])
    assert restarted.poll_once() == APPLIED
    assert restarted.roots.trust.root is not None and restarted.roots.trust.root.version == 3

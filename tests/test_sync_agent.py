"""The sync agent against the real GCS emulator (kubelet runtime without its API here:
tests/test_device_kubelet.py gates on a kubelet stand-in).

The agent reads through the device's adapter (device.gcs_json.JsonBucket, what
`python -m sync_pod` uses); where the adapter's behaviour matters (size bounds, request
counts, outages) the test runs over both adapters of the DeviceBucket protocol. Sets are
produced exactly like the control plane does (next_set + encode + storage.Bucket.write).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.sync import (
    FAKE_DIGEST,
    TEST_REGISTRY,
    SetPublisher,
    agent_env,
    entries,
    pod_yaml,
)

from device import gcs_json
from device.runtime import KubeletRuntime
from edgefleet.cloud import storage
from edgefleet.core import layout, manifest_set, policy, signing
from edgefleet.operator import fleet
from sync_pod.agent import (
    APPLIED,
    OFFLINE,
    REJECTED,
    ROLLBACK_FAILED,
    ROLLED_BACK,
    UNCHANGED,
    Agent,
)
from sync_pod.config import from_env

REG = TEST_REGISTRY
IMAGE = f"{REG}/edgefleet/web@{FAKE_DIGEST}"
SYNC = layout.manifest_file_name(layout.SYNC_POD_NAME)


def make_agent(adapter, tmp_path: Path, **extra: str) -> Agent:  # type: ignore[no-untyped-def]
    config = from_env(agent_env(adapter.name, tmp_path, **extra))
    return Agent(config, adapter, KubeletRuntime())


@pytest.fixture
def device(bucket, gcs) -> gcs_json.JsonBucket:  # type: ignore[no-untyped-def]
    """The device's adapter on the test bucket, made by the device's own factory."""
    return gcs_json.connect(bucket.name, timeout=5.0, retry=gcs_json.NO_RETRY, env=gcs.env())


@pytest.fixture(params=["device-adapter", "control-plane-adapter"])
def either(request, bucket, device):  # type: ignore[no-untyped-def]
    """Both DeviceBucket adapters, for tests whose outcome depends on the adapter."""
    return device if request.param == "device-adapter" else bucket


def ran(yaml_text: str) -> str:
    """What the device writes for a manifest: the canonical JSON of what it checked."""
    return policy.canonical(yaml.safe_load(yaml_text)).decode()


def folder_files(agent: Agent) -> dict[str, str]:
    d = agent.config.manifest_dir
    return {p.name: p.read_text() for p in sorted(d.iterdir())} if d.exists() else {}


def uploaded_status(bucket) -> dict:
    blob = bucket.read(layout.status_object("dev-1"))
    assert blob is not None, "no status uploaded"
    return json.loads(blob.data)


@pytest.fixture
def pub(bucket) -> SetPublisher:
    return SetPublisher(bucket, "x86_64", "beta")


def test_applies_channel_and_fleet_wide_with_channel_winning(bucket, device, tmp_path, pub) -> None:
    agent = make_agent(device, tmp_path)
    items = entries({"web": pod_yaml("web", IMAGE), "shared": pod_yaml("shared", IMAGE)}, "all")
    channel_shared = pod_yaml("shared", IMAGE, command=["/bin/busybox", "true"])
    items += entries({"shared": channel_shared})
    s = pub.publish(items)
    agent.recover()
    assert agent.poll_once() == APPLIED
    files = folder_files(agent)
    assert sorted(files) == ["shared-pod.yaml", "web-pod.yaml"]
    assert files["shared-pod.yaml"] == ran(channel_shared)
    # One stable real folder: kubelet's inotify watch on it stays valid across sets.
    assert agent.config.manifest_dir.is_dir() and not agent.config.manifest_dir.is_symlink()
    assert agent.state.applied is not None and agent.state.applied.sequence == s.sequence
    agent.report(force=True)
    status = uploaded_status(bucket)
    assert status["applied"]["digest"] == s.digest()
    assert status["applied"]["manifests"]["web-pod.yaml"] == manifest_set.sha256_hex(
        ran(pod_yaml("web", IMAGE))
    )
    assert status["offline"] is False and status["channel"] == "beta"


def test_noop_poll_is_one_request_and_state_survives_restart(
    bucket, gcs, either, tmp_path, pub
) -> None:
    pub.publish(entries({"web": pod_yaml("web", IMAGE)}))
    agent = make_agent(either, tmp_path)
    agent.recover()
    assert agent.poll_once() == APPLIED
    mark = gcs.mark()
    assert agent.poll_once() == UNCHANGED
    served = gcs.requests(mark)
    assert len(served) == 1 and served[0].method == "GET", served
    # A restarted agent remembers what it applied: still nothing to download.
    again = make_agent(either, tmp_path)
    again.recover()
    mark = gcs.mark()
    assert again.poll_once() == UNCHANGED
    assert len(gcs.requests(mark)) == 1


def test_new_set_costs_two_requests_polled_and_one_woken(
    bucket, gcs, either, tmp_path, pub
) -> None:
    """A timed poll asks for the generation, then downloads; a woken poll (a wake-up
    message said a new set is out) downloads at once and learns the generation from the
    download; a woken poll that finds nothing new (a replayed message) changes nothing."""
    pub.publish(entries({"web": pod_yaml("web", IMAGE)}))
    agent = make_agent(either, tmp_path)
    agent.recover()
    mark = gcs.mark()
    assert agent.poll_once() == APPLIED
    reads = [r for r in gcs.requests(mark) if r.method == "GET"]
    assert len(reads) == 2, reads
    pub.publish(entries({"web": pod_yaml("web", IMAGE, container_extra={"args": ["v2"]})}))
    mark = gcs.mark()
    assert agent.poll_once(woken=True) == APPLIED
    reads = [r for r in gcs.requests(mark) if r.method == "GET"]
    assert len(reads) == 1, reads
    assert agent.state.seen_generation == bucket.generation(layout.set_object("x86_64", "beta"))
    applied = agent.state.applied
    mark = gcs.mark()
    assert agent.poll_once(woken=True) == UNCHANGED
    assert len(gcs.requests(mark)) == 1
    assert agent.state.applied == applied


def test_removed_manifest_disappears_but_own_sync_pod_stays(bucket, device, tmp_path, pub) -> None:
    sync = pod_yaml(layout.SYNC_POD_NAME, IMAGE)
    pub.publish(entries({"web": pod_yaml("web", IMAGE), layout.SYNC_POD_NAME: sync}, "all"))
    agent = make_agent(device, tmp_path)
    agent.recover()
    assert agent.poll_once() == APPLIED
    pub.publish(entries({"other": pod_yaml("other", IMAGE)}))
    assert agent.poll_once() == APPLIED
    files = folder_files(agent)
    assert sorted(files) == sorted(["other-pod.yaml", SYNC])
    assert files[SYNC] == ran(sync)


def _bad_sets(pub: SetPublisher) -> dict[str, tuple[str, bytes]]:
    """name -> (expected reason, raw set document)."""

    def doc(pods: dict[str, str]) -> bytes:
        return manifest_set.encode(pub.build(entries(pods)))

    unpinned = pod_yaml("web", f"{REG}/edgefleet/web:latest")
    foreign = pod_yaml("web", f"10.9.9.9:5000/evil/web@{FAKE_DIGEST}")
    privileged = pod_yaml("web", IMAGE, container_extra={"securityContext": {"privileged": True}})
    host_path = pod_yaml(
        "web",
        IMAGE,
        extra_spec={"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
    )
    deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
    traversal = json.loads(doc({"web": pod_yaml("web", IMAGE)}))
    traversal["manifests"][0]["name"] = "../../etc/cron.d/x"
    return {
        "corrupt-yaml": ("invalid-manifest", doc({"web": "apiVersion: v1\nkind: Pod\n  : ["})),
        "non-pod": ("invalid-manifest", doc({"web": deployment})),
        "unpinned": ("policy", doc({"web": unpinned})),
        "disallowed-registry": ("policy", doc({"web": foreign})),
        "privileged": ("policy", doc({"web": privileged})),
        "host-path": ("policy", doc({"web": host_path})),
        "path-traversal": ("invalid-set", json.dumps(traversal).encode()),
        "not-json": ("invalid-set", b"{not json"),
        "oversized": ("too-large", b" " * (manifest_set.MAX_SET_BYTES + 1)),
    }


def test_bad_content_is_rejected_and_the_previous_set_kept(bucket, either, tmp_path, pub) -> None:
    good = pub.publish(entries({"web": pod_yaml("web", IMAGE)}))
    agent = make_agent(either, tmp_path)
    agent.recover()
    assert agent.poll_once() == APPLIED
    before = folder_files(agent)
    for name, (reason, data) in _bad_sets(pub).items():
        pub.write_raw(data)
        assert agent.poll_once() == REJECTED, name
        assert folder_files(agent) == before, name
        assert agent.state.applied.digest == good.digest()
        agent.report(force=True)
        status = uploaded_status(bucket)
        assert status["lastRejection"]["reason"] == reason, (name, status["lastRejection"])
        # The same bad object is not downloaded again.
        assert agent.poll_once() == UNCHANGED, name
    assert not any(p.name.startswith("..") for p in tmp_path.rglob("*"))
    assert not (tmp_path / "etc").exists()


def _keys(tmp_path: Path, name: str) -> tuple[Ed25519PrivateKey, str]:
    key = signing.generate(tmp_path / "keys" / name)
    return key, str(tmp_path / "keys" / f"{name}.pub")


def test_signed_sets_reject_unsigned_tampered_untrusted_expired_replayed(
    bucket, device, tmp_path, pub
) -> None:
    key, pub_path = _keys(tmp_path, "fleet")
    rogue, _ = _keys(tmp_path, "rogue")
    agent = make_agent(device, tmp_path, TRUSTED_KEYS=pub_path)
    agent.recover()
    first = pub.publish(entries({"web": pod_yaml("web", IMAGE)}), signers=[key])
    first_doc = pub.history[-1][1]
    assert agent.poll_once() == APPLIED
    second = pub.publish(
        entries({"web": pod_yaml("web", IMAGE, command=["/bin/busybox", "true"])}),
        signers=[key],
    )
    assert agent.poll_once() == APPLIED
    applied = folder_files(agent)

    tampered = json.loads(
        manifest_set.encode(pub.build(entries({"web": pod_yaml("web", IMAGE)})), [key])
    )
    evil = pod_yaml("web", IMAGE, container_extra={"command": ["/bin/sh", "-c", "evil"]})
    tampered["manifests"][0].update(yaml=evil, sha256=manifest_set.sha256_hex(evil))
    # A bucket writer without the key edits the signed set of the running one (`second`):
    # injects a privileged pod beside it, or swaps the web pod's digest.
    running = json.loads(pub.history[-1][1])
    injected = json.loads(json.dumps(running))
    privileged = pod_yaml("miner", IMAGE, container_extra={"securityContext": {"privileged": True}})
    injected["manifests"].append(
        {"name": "miner", "scope": "channel", "yaml": privileged,
         "sha256": manifest_set.sha256_hex(privileged)}
    )  # fmt: skip
    swapped = json.loads(json.dumps(running))
    other = running["manifests"][0]["yaml"].replace(FAKE_DIGEST, "sha256:" + "cd" * 32)
    assert other != running["manifests"][0]["yaml"]
    swapped["manifests"][0].update(yaml=other, sha256=manifest_set.sha256_hex(other))
    stripped = dict(running, signatures=[])
    attacks = [
        ("bad-signature", json.dumps(injected).encode()),
        ("bad-signature", json.dumps(swapped).encode()),
        ("unsigned", json.dumps(stripped).encode()),
    ]
    cases = {
        "unsigned": manifest_set.encode(pub.build(entries({"web": evil}))),
        "bad-signature": json.dumps(tampered).encode(),
        "untrusted-key": manifest_set.encode(pub.build(entries({"web": evil})), [rogue]),
        "expired": manifest_set.encode(
            pub.build(
                entries({"web": evil}),
                now=datetime.now(UTC) - timedelta(days=40),
                ttl=timedelta(days=1),
            ),
            [key],
        ),
        "replayed": first_doc,
    }
    for reason, data in [*attacks, *cases.items()]:
        pub.write_raw(data)
        assert agent.poll_once() == REJECTED, reason
        assert folder_files(agent) == applied, reason
        agent.report(force=True)
        assert uploaded_status(bucket)["lastRejection"]["reason"] == reason
    assert agent.state.applied.digest == second.digest() != first.digest()


def test_key_rotation_keeps_the_workload(bucket, device, tmp_path, pub) -> None:
    old, old_pub = _keys(tmp_path, "old")
    new, new_pub = _keys(tmp_path, "new")
    web = pod_yaml("web", IMAGE)
    agent = make_agent(device, tmp_path, TRUSTED_KEYS=old_pub)
    agent.recover()
    pub.publish(entries({"web": web}), signers=[old])
    assert agent.poll_once() == APPLIED
    # Changeover: devices trust both, the control plane signs with both.
    agent = make_agent(device, tmp_path, TRUSTED_KEYS=f"{old_pub},{new_pub}")
    agent.recover()
    pub.publish(entries({"web": web, "extra": pod_yaml("extra", IMAGE)}), signers=[old, new])
    assert agent.poll_once() == APPLIED
    # Done: only the new key signs; the old one is retired on the device.
    agent = make_agent(device, tmp_path, TRUSTED_KEYS=new_pub)
    agent.recover()
    pub.publish(entries({"web": web}), signers=[new])
    assert agent.poll_once() == APPLIED
    assert folder_files(agent) == {"web-pod.yaml": ran(web)}
    pub.publish(entries({"web": pod_yaml("web", IMAGE, command=["x"])}), signers=[old])
    assert agent.poll_once() == REJECTED
    assert folder_files(agent) == {"web-pod.yaml": ran(web)}


def test_wrong_target_is_rejected(bucket, device, tmp_path) -> None:
    other = SetPublisher(bucket, "x86_64", "stable")
    data = manifest_set.encode(other.build(entries({"web": pod_yaml("web", IMAGE)})))
    SetPublisher(bucket, "x86_64", "beta").write_raw(data)
    agent = make_agent(device, tmp_path)
    agent.recover()
    assert agent.poll_once() == REJECTED
    assert agent.state.last_rejection.reason == "wrong-target"


def test_unready_set_is_rolled_back_and_not_retried(bucket, device, tmp_path, pub) -> None:
    good = pod_yaml("web", IMAGE)
    pub.publish(entries({"web": good}))
    agent = make_agent(device, tmp_path)
    agent.recover()
    assert agent.poll_once() == APPLIED
    from edgefleet.localstack.process import free_port

    bad = pod_yaml("web", IMAGE, port=free_port(), readiness_path="/readyz")  # nothing listens
    bad_set = pub.publish(entries({"web": bad}))
    assert agent.poll_once() == ROLLED_BACK
    assert folder_files(agent) == {"web-pod.yaml": ran(good)}
    assert bad_set.digest() in agent.state.bad_digests
    agent.report(force=True)
    status = uploaded_status(bucket)
    assert status["lastRejection"]["reason"] == "unhealthy"
    assert "not ready" in status["lastRejection"]["detail"]
    # The same set, written again (new generation), is not retried…
    pub.write_raw(pub.history[-1][1])
    assert agent.poll_once() == UNCHANGED
    assert folder_files(agent) == {"web-pod.yaml": ran(good)}
    # …but the channel moving on is.
    pub.publish(entries({"web": good, "b": pod_yaml("b", IMAGE)}))
    assert agent.poll_once() == APPLIED


def test_interrupted_apply_is_finished_on_restart(bucket, device, tmp_path, pub) -> None:
    old = pod_yaml("web", IMAGE)
    pub.publish(entries({"web": old}))
    agent = make_agent(device, tmp_path)
    agent.recover()
    assert agent.poll_once() == APPLIED
    new_text = pod_yaml("web", IMAGE, command=["true"])
    new = pub.publish(entries({"web": new_text, "extra": pod_yaml("extra", IMAGE)}))

    # Crash after the set's copy is journaled, before a file of the live folder changed:
    # a restart rolls the apply forward from the copy and gates it.
    crashing = make_agent(device, tmp_path)
    crashing.folder.sync = _crash  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        crashing.poll_once()
    assert folder_files(crashing) == {"web-pod.yaml": ran(old)}
    restarted = make_agent(device, tmp_path)
    assert restarted.state.pending is not None
    restarted.recover()
    assert restarted.state.pending is None
    assert restarted.state.applied.digest == new.digest()
    assert folder_files(restarted) == {
        "web-pod.yaml": ran(new_text),
        "extra-pod.yaml": ran(pod_yaml("extra", IMAGE)),
    }
    assert restarted.poll_once() == UNCHANGED

    # Crash after the files are written, before the gate and commit: same.
    newer = pub.publish(entries({"web": old}))
    crashing = make_agent(device, tmp_path)
    crashing._finish = _crash  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        crashing.poll_once()
    restarted = make_agent(device, tmp_path)
    restarted.recover()
    assert restarted.state.pending is None
    assert restarted.state.applied.digest == newer.digest() != new.digest()
    assert folder_files(restarted) == {"web-pod.yaml": ran(old)}


class _Crash(Exception):
    pass


def _crash(*_args, **_kwargs):  # type: ignore[no-untyped-def]
    raise _Crash()


@pytest.mark.parametrize("adapter", ["device-adapter", "control-plane-adapter"])
def test_offline_keeps_the_set_and_status_says_offline(tmp_path, monkeypatch, adapter) -> None:
    from edgefleet.localstack.gcs import GcsEmulator

    emulator = GcsEmulator(tmp_path / "gcs").start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.endpoint)
        emulator.create_bucket("offline-test")
        from google.api_core.retry import Retry

        bucket = storage.Bucket(
            storage.make_client(), "offline-test", timeout=2, retry=Retry(timeout=0.5)
        )
        reader = (
            gcs_json.connect("offline-test", timeout=2, retry=gcs_json.Retry(timeout=0.5))
            if adapter == "device-adapter"
            else bucket
        )
        pub = SetPublisher(bucket, "x86_64", "beta")
        pub.publish(entries({"web": pod_yaml("web", IMAGE)}))
        agent = make_agent(reader, tmp_path)
        agent.recover()
        assert agent.poll_once() == APPLIED
        agent.report(force=True)
        applied = folder_files(agent)
    finally:
        emulator.stop()
    assert agent.poll_once() == OFFLINE
    assert agent.report() is False  # not sent: kept on disk
    local = json.loads((tmp_path / "state" / "status.json").read_text())
    assert local["sent"] is False and local["status"]["offline"] is True
    assert local["status"]["lastError"]["reason"] == "offline"
    assert folder_files(agent) == applied
    # Back online (a fresh emulator on the same port): the buffered report goes out.
    back = GcsEmulator(tmp_path / "gcs2", port=emulator.port).start()
    try:
        back.create_bucket("offline-test")
        pub.write_raw(pub.history[-1][1])
        assert agent.poll_once() == UNCHANGED
        assert agent.report() is True
        assert uploaded_status(bucket)["offline"] is False
        assert folder_files(agent) == applied
    finally:
        back.stop()


def test_status_says_how_often_the_device_reports(bucket, device, tmp_path, pub) -> None:
    agent = make_agent(device, tmp_path, STATUS_SECONDS="600", POLL_SECONDS="30")
    agent.recover()
    pub.publish(entries({"web": pod_yaml("web", IMAGE)}))
    assert agent.poll_once() == APPLIED
    agent.report(force=True)
    status = uploaded_status(bucket)
    assert (status["heartbeatSeconds"], status["pollSeconds"]) == (600, 30)
    row = fleet.parse_report(json.dumps(status).encode(), "status/dev-1.json")
    assert row.report_interval == 630


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 256 KiB tmpfs for MANIFEST_DIR: a real disk that can really fill up."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the test needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_rollback_that_cannot_write_reports_rollback_failed_and_is_retried(
    bucket, device, tmp_path, pub, small_disk
) -> None:
    from edgefleet.localstack.process import free_port

    filler = small_disk / "pods" / ".filler"

    def fill_the_disk_then_fail(_probe) -> bool:  # type: ignore[no-untyped-def]
        """The gate's readiness probe: nothing listens; meanwhile the disk fills up."""
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        return False

    config = from_env(agent_env(device.name, tmp_path, MANIFEST_DIR=str(small_disk / "pods")))
    agent = Agent(config, device, KubeletRuntime(), probe=fill_the_disk_then_fail)
    agent.recover()
    good = pod_yaml("web", IMAGE)
    pub.publish(entries({"web": good}))
    assert agent.poll_once() == APPLIED
    bad = pub.publish(
        entries({"web": pod_yaml("web", IMAGE, port=free_port(), readiness_path="/")})
    )
    assert agent.poll_once() == ROLLBACK_FAILED  # not "rolled-back": the old set is not back
    assert agent.health == "rollback-failed"
    assert agent.last_error is not None and agent.last_error["reason"] == "rollback-failed"
    assert "No space left" in agent.last_error["detail"]
    assert bad.digest() in agent.state.bad_digests
    assert agent.state.pending is not None and agent.state.pending.phase == "rollback"
    agent.report(force=True)
    assert uploaded_status(bucket)["health"] == "rollback-failed"
    # Space again: the next poll retries the rollback (never the bad set).
    filler.unlink()
    assert agent.poll_once() == ROLLED_BACK
    assert folder_files(agent) == {"web-pod.yaml": ran(good)}
    assert agent.state.pending is None and agent.state.applied.digest != bad.digest()
    assert agent.poll_once() == UNCHANGED

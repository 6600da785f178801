"""Issue 12, control-plane freshness and freezes, on the real GCS emulator and the real
registry (docker-registry) with tag_monitor in-process:

- one untrusted object in ``sets/`` stopped tag_monitor from ever writing that channel
  again: now it rebuilds the set from its own verified copy plus registry truth;
- re-running bootstrap did not refresh a set's expiry (a new device got ``expired`` after
  30 days): now an unchanged set is re-signed once it is within the refresh window, by any
  write, ``edgefleet resign`` or the ``resign_sets`` tick.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.security import pubsub_event

from edgefleet.cloud.control import SetResigner, TagMonitor, TagMonitorConfig
from edgefleet.cloud.set_store import SetStore
from edgefleet.core import layout, manifest_set, signing
from edgefleet.core.manifest_set import ManifestEntry
from edgefleet.operator.cli import main as cli_main

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def monitor(bucket, registry, key_path: Path) -> TagMonitor:
    config = TagMonitorConfig.from_env(
        {
            "DEPLOY_BUCKET": bucket.name,
            "ALLOWED_REGISTRIES": registry.host,
            "INSECURE_REGISTRIES": registry.host,
            "SIGNING_KEY": str(key_path),
            "ARCHES": "x86_64",
            "CHANNELS": "beta",
        }
    )
    return TagMonitor.from_config(config, bucket)


def push_event(tm: TagMonitor, registry, name: str):  # type: ignore[no-untyped-def]
    """Push an image as ``sec/NAME:beta`` and hand the registry's event to tag_monitor."""
    registry.push_minimal_image(f"sec/{name}", "beta", arch="amd64", salt=name)
    return tm.handle_cloud_event(
        pubsub_event({"action": "INSERT", "tag": f"{registry.host}/sec/{name}:beta"})
    )


def set_names(bucket) -> list[str]:
    data = bucket.read(layout.set_object("x86_64", "beta")).data
    return [e.name for e in manifest_set.decode(data).manifest_set.entries]


def test_untrusted_set_is_replaced_from_the_trusted_copy_and_registry_truth(
    bucket, registry, tmp_path, caplog
) -> None:
    key = tmp_path / "signing.pem"
    signing.generate(key)
    tm = monitor(bucket, registry, key)
    push_event(tm, registry, "first")
    assert set_names(bucket) == ["first"]
    # A bucket writer overwrites the live set with garbage.
    bucket.write(layout.set_object("x86_64", "beta"), b"{not json")
    outcome = push_event(tm, registry, "second")
    assert outcome is not None and outcome.replaced == ["sets/x86_64/beta.json"]
    # Rebuilt: the first repository's pod from the verified copy, the second from the
    # registry; signed again, so devices accept it.
    assert sorted(set_names(bucket)) == ["first", "second"]
    signed = manifest_set.decode(bucket.read(layout.set_object("x86_64", "beta")).data)
    public = signing.load_private_key(key).public_key()
    manifest_set.verify(signed, [public], arch="x86_64", channel="beta", now=datetime.now(UTC))
    assert any(getattr(r, "fields", {}).get("event") == "set-replaced" for r in caplog.records)


def test_a_tampered_trusted_copy_is_not_a_base(bucket, registry, tmp_path) -> None:
    key = tmp_path / "signing.pem"
    signing.generate(key)
    tm = monitor(bucket, registry, key)
    push_event(tm, registry, "keep")
    bucket.write(layout.set_object("x86_64", "beta"), b"[]")
    bucket.write(layout.trusted_copy_object("x86_64", "beta"), b"[]")
    push_event(tm, registry, "other")
    # Only registry truth of this event: nothing unverified is carried over.
    assert set_names(bucket) == ["other"]


def entry(name: str) -> ManifestEntry:
    return ManifestEntry(
        name, "channel", f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n"
    )


def test_unchanged_set_is_resigned_when_its_expiry_nears(bucket) -> None:
    signer = Ed25519PrivateKey.generate()
    clock = [NOW]
    store = SetStore(bucket, signer=signer, clock=lambda: clock[0])
    first = store.update("x86_64", "beta", lambda s: [entry("a")])
    assert first.written and first.manifest_set.expires_at == NOW + manifest_set.DEFAULT_TTL
    # A day later (bootstrap re-run, any event): fresh enough, nothing written.
    clock[0] = NOW + timedelta(days=1)
    assert not store.update("x86_64", "beta", lambda s: [entry("a")]).written
    assert not store.resign("x86_64", "beta").written
    # Within half the TTL of expiry: the same content, re-signed with a new expiry.
    clock[0] = NOW + timedelta(days=4)
    again = store.update("x86_64", "beta", lambda s: [entry("a")])
    assert again.written and again.manifest_set.expires_at == clock[0] + manifest_set.DEFAULT_TTL
    assert again.manifest_set.sequence > first.manifest_set.sequence


def test_resign_tick_and_command_refresh_every_set(bucket, tmp_path, capsys) -> None:
    key = tmp_path / "signing.pem"
    signer = signing.generate(key)
    old = NOW - timedelta(days=6)
    SetStore(bucket, signer=signer, clock=lambda: old).update(
        "x86_64", "beta", lambda s: [entry("a")]
    )
    resigner = SetResigner(SetStore(bucket, signer=signer), ("x86_64",), ("beta", "stable"))
    assert resigner.handle_cloud_event(pubsub_event({})) == {"sets/x86_64/beta.json": "resigned"}
    s = manifest_set.decode(bucket.read("sets/x86_64/beta.json").data).manifest_set
    assert s.expires_at > datetime.now(UTC) + timedelta(days=6)
    assert resigner.run() == {"sets/x86_64/beta.json": "fresh"}
    code = cli_main(["resign", "--bucket", bucket.name, "--signing-key", str(key),
                     "--arches", "x86_64", "--channels", "beta", "--force"])  # fmt: skip
    assert code == 0 and "sets/x86_64/beta.json: resigned" in capsys.readouterr().out

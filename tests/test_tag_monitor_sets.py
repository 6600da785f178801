"""edgefleet.cloud.set_store on the real GCS emulator: optimistic writes, signing, mirrors."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.cloud.set_store import SetStore, UntrustedSet, load_signer
from edgefleet.core import layout, manifest_set, signing
from edgefleet.core.bucket import Conflict
from edgefleet.core.errors import ConfigError
from edgefleet.core.manifest_set import ManifestEntry

POD = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n# {note}\n"


def entry(name: str, note: str = "", scope: str = "channel") -> ManifestEntry:
    return ManifestEntry(name, scope, POD.format(name=name, note=note))


def objects(bucket, prefix: str = "") -> dict[str, bytes]:
    return {n: bucket.read(n).data for n in bucket.list(prefix)}


def test_write_creates_set_and_mirrors(bucket) -> None:
    store = SetStore(bucket)
    snap = store.read("x86_64", "beta")
    assert (snap.generation, snap.manifest_set, snap.trusted) == (0, None, True)
    result = store.write(snap, [entry("a"), entry("f", scope="all")])
    assert result.written
    stored = manifest_set.decode(bucket.read("sets/x86_64/beta.json").data).manifest_set
    assert stored == result.manifest_set
    assert objects(bucket, "x86_64/") == {
        "x86_64/beta/a-pod.yaml": entry("a").yaml.encode(),
        "x86_64/all/f-pod.yaml": entry("f").yaml.encode(),
    }


def test_unchanged_content_is_not_rewritten(bucket) -> None:
    store = SetStore(bucket)
    first = store.write(store.read("x86_64", "beta"), [entry("a")])
    again = store.write(store.read("x86_64", "beta"), [entry("a")])
    assert not again.written
    assert again.generation == first.generation == bucket.generation("sets/x86_64/beta.json")
    assert again.manifest_set.sequence == first.manifest_set.sequence


def test_stale_snapshot_conflicts(bucket) -> None:
    store = SetStore(bucket)
    stale = store.read("aarch64", "stable")
    store.write(store.read("aarch64", "stable"), [entry("a")])
    with pytest.raises(Conflict):
        store.write(stale, [entry("b")])
    assert [e.name for e in store.read("aarch64", "stable").entries] == ["a"]


def test_mirror_follows_removals_and_repairs_drift(bucket) -> None:
    store = SetStore(bucket)
    store.write(store.read("armv7l", "beta"), [entry("a"), entry("b")])
    bucket.write("armv7l/beta/a-pod.yaml", b"tampered")
    bucket.write("armv7l/beta/stray-pod.yaml", b"stray")
    bucket.write("armv7l/beta/README.txt", b"not a manifest: left alone")
    result = store.write(store.read("armv7l", "beta"), [entry("a")])
    assert result.written
    assert objects(bucket, "armv7l/beta/") == {
        "armv7l/beta/a-pod.yaml": entry("a").yaml.encode(),
        "armv7l/beta/README.txt": b"not a manifest: left alone",
    }


def test_signed_sets_verify_and_tampered_previous_is_not_built_on(bucket, caplog) -> None:
    key = Ed25519PrivateKey.generate()
    store = SetStore(bucket, signer=key)
    store.write(store.read("x86_64", "stable"), [entry("a")])
    signed = manifest_set.decode(bucket.read("sets/x86_64/stable.json").data)
    now = signed.manifest_set.issued_at
    manifest_set.verify(signed, [key.public_key()], arch="x86_64", channel="stable", now=now)

    # A bucket writer without the key adds a pod and keeps the old signature.
    doc = json.loads(bucket.read("sets/x86_64/stable.json").data)
    evil = entry("evil", "privileged")
    doc["manifests"].append(
        {"name": "evil", "scope": "channel", "sha256": evil.sha256, "yaml": evil.yaml}
    )
    bucket.write("sets/x86_64/stable.json", json.dumps(doc).encode())
    tampered_generation = bucket.generation("sets/x86_64/stable.json")

    caplog.set_level(logging.ERROR)
    snap = store.read("x86_64", "stable")
    assert not snap.trusted and "bad-signature" in snap.problem
    records = [
        r for r in caplog.records if getattr(r, "fields", {}).get("event") == "set-untrusted"
    ]
    assert len(records) == 1 and records[0].fields["reason"] == "bad-signature"
    with pytest.raises(UntrustedSet, match="replace-untrusted"):
        store.write(snap, [entry("b")])
    assert bucket.generation("sets/x86_64/stable.json") == tampered_generation
    # An operator's explicit rebuild drops the forged content and signs again.
    rebuilt = store.update("x86_64", "stable", lambda s: [entry("b")], replace_untrusted=True)
    assert [e.name for e in rebuilt.manifest_set.entries] == ["b"]
    assert rebuilt.manifest_set.sequence > signed.manifest_set.sequence


def test_unsigned_previous_not_trusted_when_signing(bucket) -> None:
    SetStore(bucket).write(SetStore(bucket).read("x86_64", "alpha"), [entry("a")])
    snap = SetStore(bucket, signer=Ed25519PrivateKey.generate()).read("x86_64", "alpha")
    assert not snap.trusted and "unsigned" in snap.problem


def test_rotation_previous_key_trusted(bucket) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    SetStore(bucket, signer=old).write(SetStore(bucket).read("x86_64", "alpha"), [entry("a")])
    rotated = SetStore(bucket, signer=new, trusted_keys=[old.public_key()])
    snap = rotated.read("x86_64", "alpha")
    assert snap.trusted
    result = rotated.write(snap, [entry("a"), entry("b")])
    signed = manifest_set.decode(bucket.read("sets/x86_64/alpha.json").data)
    assert [s.key_id for s in signed.signatures] == [signing.key_id(new.public_key())]
    assert result.written


def test_set_at_wrong_object_is_untrusted(bucket) -> None:
    store = SetStore(bucket)
    store.write(store.read("x86_64", "beta"), [entry("a")])
    bucket.write("sets/x86_64/stable.json", bucket.read("sets/x86_64/beta.json").data)
    assert "wrong-target" in store.read("x86_64", "stable").problem
    bucket.write("sets/x86_64/alpha.json", b"{garbage")
    assert "not JSON" in store.read("x86_64", "alpha").problem


def test_concurrent_updates_all_land_and_mirror_matches(bucket) -> None:
    store = SetStore(bucket)
    names = [f"m{i}" for i in range(8)]

    def add(name: str) -> None:
        store.update("x86_64", "latest", lambda s: [*s.entries, entry(name)])

    threads = [threading.Thread(target=add, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.read("x86_64", "latest").manifest_set
    assert sorted(e.name for e in final.entries) == names
    mirror = objects(bucket, "x86_64/latest/")
    assert mirror == {
        layout.manifest_object("x86_64", "latest", n): entry(n).yaml.encode() for n in names
    }


def test_load_signer(tmp_path) -> None:
    assert load_signer("") is None and load_signer(None) is None
    path = tmp_path / "k.pem"
    key = signing.generate(path)
    loaded = load_signer(str(path))
    assert signing.key_id(loaded.public_key()) == signing.key_id(key.public_key())
    with pytest.raises(ConfigError, match="cannot read"):
        load_signer(str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="expected projects/PROJECT"):
        load_signer("projects/p/secrets/s")

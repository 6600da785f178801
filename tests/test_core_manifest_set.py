"""edgefleet.core.manifest_set: format, successor, encode/decode, verification and rejections."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core import manifest_set as ms
from edgefleet.core.errors import InvalidManifestSet, SetRejected

NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
POD = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n"


def entry(name: str, scope: str = ms.SCOPE_CHANNEL, extra: str = "") -> ms.ManifestEntry:
    return ms.ManifestEntry(name, scope, POD.format(name) + extra)


def make(entries=(), previous=None, now=NOW, arch="x86_64", channel="beta") -> ms.ManifestSet:
    return ms.next_set(previous, arch, channel, entries, now=now)


def test_next_set_sequence_grows_and_floors_at_time() -> None:
    first = make([entry("a")])
    assert first.sequence == int(NOW.timestamp() * 1000)
    second = make([entry("a")], previous=first)  # same second: previous + 1
    assert second.sequence == first.sequence + 1
    earlier_clock = make([entry("a")], previous=second, now=NOW - timedelta(days=1))
    assert earlier_clock.sequence == second.sequence + 1
    assert first.expires_at - first.issued_at == ms.DEFAULT_TTL


def test_entries_sorted_duplicates_rejected_and_effective() -> None:
    s = make([entry("b"), entry("a", ms.SCOPE_ALL), entry("a")])
    assert [(e.scope, e.name) for e in s.entries] == [
        ("all", "a"),
        ("channel", "a"),
        ("channel", "b"),
    ]
    effective = s.effective()
    assert effective["a-pod.yaml"].scope == ms.SCOPE_CHANNEL  # the channel entry wins
    assert set(effective) == {"a-pod.yaml", "b-pod.yaml"}
    with pytest.raises(InvalidManifestSet, match="twice"):
        make([entry("a"), entry("a", extra="# other\n")])


def test_with_without_same_content() -> None:
    s = make([entry("a")])
    t = s.with_entry(entry("b"))
    assert t.entry("channel", "b") is not None
    assert not t.same_content(s)
    assert t.without_entry("channel", "b").same_content(s)
    assert not s.same_content(None)
    assert (
        s.with_entry(entry("a", extra="# changed\n"))
        .entry("channel", "a")
        .yaml.endswith("# changed\n")
    )


def test_encode_decode_roundtrip_signed() -> None:
    key = Ed25519PrivateKey.generate()
    s = make([entry("a"), entry("z", ms.SCOPE_ALL)])
    data = ms.encode(s, [key])
    signed = ms.decode(data)
    assert signed.manifest_set == s
    assert len(signed.signatures) == 1
    assert ms.verify(signed, [key.public_key()], arch="x86_64", channel="beta", now=NOW) == s


def _doc(s: ms.ManifestSet, key=None) -> dict:
    return json.loads(ms.encode(s, [key] if key else []))


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.update(apiVersion="v2"), "apiVersion"),
        (lambda d: d.update(arch="sparc"), "unknown arch"),
        (lambda d: d.update(channel="all"), "invalid channel"),
        (lambda d: d.update(sequence=0), "positive integer"),
        (lambda d: d.update(sequence=True), "positive integer"),
        (lambda d: d.update(issuedAt="yesterday"), "issuedAt"),
        (lambda d: d.update(manifests={}), "must be a list"),
        (lambda d: d["manifests"][0].update(sha256="0" * 64), "sha256 does not match"),
        (lambda d: d["manifests"][0].update(scope="device"), "scope must be"),
        (lambda d: d["manifests"][0].update(name="../../etc"), "invalid name"),
        (lambda d: d["manifests"].append("x"), "not an object"),
        (lambda d: d.update(signatures=[{"algorithm": "rsa"}]), "ed25519"),
        (
            lambda d: d.update(signatures=[{"algorithm": "ed25519", "keyId": "k", "value": "!!"}]),
            "not base64",
        ),
    ],
)
def test_decode_rejects(mutate, fragment) -> None:
    doc = _doc(make([entry("a")]))
    mutate(doc)
    with pytest.raises(InvalidManifestSet, match=fragment):
        ms.decode(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\xff", "not UTF-8"),
        (b"[1]", "not a JSON object"),
        (b"{", "not JSON"),
        (b" " * (ms.MAX_SET_BYTES + 1), "bytes, over"),
    ],
)
def test_decode_rejects_non_documents(data, fragment) -> None:
    with pytest.raises(InvalidManifestSet, match=fragment):
        ms.decode(data)


def _reason(signed, keys, **kw) -> str:
    args = {"arch": "x86_64", "channel": "beta", "now": NOW} | kw
    with pytest.raises(SetRejected) as info:
        ms.verify(signed, keys, **args)
    return info.value.reason


def test_verify_rejection_reasons() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    s = make([entry("a")])
    signed = ms.decode(ms.encode(s, [key]))
    unsigned = ms.decode(ms.encode(s))
    assert _reason(unsigned, [key.public_key()]) == ms.REJECT_UNSIGNED
    assert _reason(signed, [other.public_key()]) == ms.REJECT_UNTRUSTED_KEY
    assert _reason(signed, [key.public_key()], channel="stable") == ms.REJECT_WRONG_TARGET
    assert _reason(signed, [key.public_key()], arch="aarch64") == ms.REJECT_WRONG_TARGET
    expired_at = s.expires_at + timedelta(seconds=1)
    assert _reason(signed, [key.public_key()], now=expired_at) == ms.REJECT_EXPIRED
    # Tampered content: swap a manifest, keep the old signature.
    doc = _doc(s, key)
    doc["manifests"][0]["yaml"] = POD.format("a") + "# evil\n"
    doc["manifests"][0]["sha256"] = ms.sha256_hex(doc["manifests"][0]["yaml"])
    assert _reason(ms.decode(json.dumps(doc).encode()), [key.public_key()]) == (
        ms.REJECT_BAD_SIGNATURE
    )
    # Replay: older sequence, or same sequence with other content.
    newer = make([entry("a")], previous=s)
    assert (
        _reason(signed, [key.public_key()], applied_sequence=newer.sequence) == ms.REJECT_REPLAYED
    )
    assert (
        _reason(signed, [key.public_key()], applied_sequence=s.sequence, applied_digest="0" * 64)
        == ms.REJECT_REPLAYED
    )
    # The same set again is not a replay (idempotent re-apply).
    ms.verify(
        signed,
        [key.public_key()],
        arch="x86_64",
        channel="beta",
        now=NOW,
        applied_sequence=s.sequence,
        applied_digest=s.digest(),
    )


def test_rotation_any_trusted_signature_suffices() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    s = make([entry("a")])
    both = ms.decode(ms.encode(s, [new, old]))
    assert ms.verify(both, [old.public_key()], arch="x86_64", channel="beta", now=NOW) == s
    assert ms.verify(both, [new.public_key()], arch="x86_64", channel="beta", now=NOW) == s


def test_insecure_mode_checks_target_only_and_no_key_fails_closed() -> None:
    s = make([entry("a")])
    unsigned = ms.decode(ms.encode(s))
    assert ms.verify(unsigned, [], arch="x86_64", channel="beta", now=NOW, insecure=True) == s
    assert _reason(unsigned, [], channel="alpha", insecure=True) == ms.REJECT_WRONG_TARGET
    assert _reason(unsigned, []) == ms.REJECT_NO_TRUST

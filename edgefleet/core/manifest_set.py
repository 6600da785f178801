"""Manifest sets: what one arch + channel of the fleet runs, as one signed document.

A set holds every manifest a device of that arch and channel applies (its channel's own
and the fleet-wide ``all`` ones), inline, with their SHA-256, a sequence number that only
grows, an issue time, an expiry, and Ed25519 signatures over a canonical encoding.
Devices apply a set as a whole or not at all. This module is pure: no I/O.

Wire format (JSON)::

    {"apiVersion": "edgefleet.dev/v1", "kind": "ManifestSet",
     "arch": "x86_64", "channel": "beta", "sequence": 1764000000000,
     "issuedAt": "2026-11-23T10:00:00Z", "expiresAt": "2026-12-23T10:00:00Z",
     "manifests": [{"name": "model-server", "scope": "channel",
                    "sha256": "…", "yaml": "apiVersion: v1\\n…"}],
     "signatures": [{"keyId": "…", "algorithm": "ed25519", "value": "BASE64"}]}

Optional ``"pollSeconds": N`` (integer, 1..86400; absent when not set): the control
plane's hint for how often devices poll (shorter while a rollout is in progress). Part of
the signed payload; devices bound it (``POLL_MIN_SECONDS``/``POLL_MAX_SECONDS``) and use
it only from a verified set. A successor set keeps its predecessor's hint unless told.

During a progressive rollout (``edgefleet rollout start``) the set also carries::

     "rollout": {"id": "ro-…", "percent": 10, "baseline": "sha256:…",
                 "candidate": "sha256:…",
                 "manifests": [{"name": "model-server", "scope": "channel", …}]}

``manifests`` holds the candidate's channel manifests: a device in the cohort (see
:mod:`edgefleet.core.cohort`) puts them over the set's own, every other device runs the
set's own. The block is part of the signed payload, and absent when no rollout runs
(so a set without a rollout encodes exactly as before).

The signed payload is the document without ``signatures``, encoded as JSON with sorted
keys, no white space, UTF-8.

Decoding is bounded (size, nesting depth, duplicate keys, lone surrogates): any hostile
document is an :class:`InvalidManifestSet`, never another exception, so a device records
one rejection for it and does not download it again. Verification fails closed: with no
trusted key every set is ``no-trusted-key`` unless the caller passes ``insecure=True``
(the development switch ``EDGEFLEET_INSECURE_ALLOW_UNSIGNED=1``). Which keys are trusted
comes from the device's root of trust (:mod:`edgefleet.core.trust`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgefleet.core import cohort, layout
from edgefleet.core.errors import InvalidInput, InvalidManifestSet, SetRejected
from edgefleet.core.signing import key_id, verifies

API_VERSION = "edgefleet.dev/v1"
KIND = "ManifestSet"
SCOPE_CHANNEL = "channel"
SCOPE_ALL = "all"
MAX_SET_BYTES = 1024 * 1024
MAX_MANIFEST_BYTES = 256 * 1024
DEFAULT_TTL = timedelta(days=7)
MAX_JSON_DEPTH = 16
MAX_POLL_HINT_SECONDS = 86400
KEEP_POLL_HINT: Any = object()  # next_set(poll_seconds=...): keep the predecessor's hint

# Reasons a set is rejected; devices report them verbatim.
REJECT_UNSIGNED = "unsigned"
REJECT_BAD_SIGNATURE = "bad-signature"
REJECT_UNTRUSTED_KEY = "untrusted-key"
REJECT_EXPIRED = "expired"
REJECT_REPLAYED = "replayed"
REJECT_WRONG_TARGET = "wrong-target"
REJECT_NO_TRUST = "no-trusted-key"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One Pod manifest of a set. ``name`` is the pod's name and the file stem."""

    name: str
    scope: str
    yaml: str

    @property
    def sha256(self) -> str:
        return sha256_hex(self.yaml)

    @property
    def file_name(self) -> str:
        return layout.manifest_file_name(self.name)


_ROLLOUT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class RolloutRule:
    """A rollout in progress: cohort devices put ``entries`` over the set's own."""

    id: str
    percent: float
    entries: tuple[ManifestEntry, ...]
    candidate: str = ""  # image digests, informational (devices report them)
    baseline: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "percent": self.percent,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "manifests": [_entry_dict(e) for e in self.entries],
        }


@dataclass(frozen=True, slots=True)
class ManifestSet:
    arch: str
    channel: str
    sequence: int
    issued_at: datetime
    expires_at: datetime
    entries: tuple[ManifestEntry, ...] = field(default_factory=tuple)
    poll_seconds: int | None = None  # the control plane's poll-interval hint (see module doc)
    rollout: RolloutRule | None = None

    def __post_init__(self) -> None:
        check_poll_hint(self.poll_seconds)
        ordered = tuple(sorted(self.entries, key=lambda e: (e.scope, e.name)))
        keys = [(e.scope, e.name) for e in ordered]
        if len(set(keys)) != len(keys):
            raise InvalidManifestSet("manifest set lists the same scope/name twice")
        object.__setattr__(self, "entries", ordered)

    def effective(self) -> dict[str, ManifestEntry]:
        """File name -> entry a device writes; the channel's entry wins over ``all``."""
        out: dict[str, ManifestEntry] = {}
        for entry in self.entries:
            if entry.scope == SCOPE_ALL and entry.file_name in out:
                continue
            out[entry.file_name] = entry
        return out

    def select(self, device_id: str) -> tuple[dict[str, ManifestEntry], cohort.Selection | None]:
        """What device ``device_id`` runs: :meth:`effective`, with the rollout's
        manifests over it when the device is in the cohort."""
        own = self.effective()
        rule = self.rollout
        if rule is None:
            return own, None
        chosen = cohort.Selection(
            rule.id, rule.percent, cohort.in_cohort(rule.id, device_id, rule.percent)
        )
        if not chosen.in_cohort:
            return own, chosen
        candidate = {e.file_name: e for e in rule.entries}
        return {**own, **candidate}, chosen

    def entry(self, scope: str, name: str) -> ManifestEntry | None:
        for e in self.entries:
            if e.scope == scope and e.name == name:
                return e
        return None

    def with_entry(self, entry: ManifestEntry) -> ManifestSet:
        rest = tuple(e for e in self.entries if (e.scope, e.name) != (entry.scope, entry.name))
        return replace(self, entries=(*rest, entry))

    def without_entry(self, scope: str, name: str) -> ManifestSet:
        return replace(
            self, entries=tuple(e for e in self.entries if (e.scope, e.name) != (scope, name))
        )

    def same_content(self, other: ManifestSet | None) -> bool:
        """True when both sets would make a device run the same manifests."""
        return (
            other is not None
            and self.poll_seconds == other.poll_seconds
            and [(e.scope, e.name, e.yaml) for e in self.entries]
            == [(e.scope, e.name, e.yaml) for e in other.entries]
            and self.rollout == other.rollout
        )

    def digest(self) -> str:
        """SHA-256 of the canonical payload: identifies this exact set."""
        return hashlib.sha256(self.payload()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "arch": self.arch,
            "channel": self.channel,
            "sequence": self.sequence,
            "issuedAt": _fmt_time(self.issued_at),
            "expiresAt": _fmt_time(self.expires_at),
            "manifests": [_entry_dict(e) for e in self.entries],
        }
        if self.poll_seconds is not None:
            doc["pollSeconds"] = self.poll_seconds
        if self.rollout is not None:
            doc["rollout"] = self.rollout.to_dict()
        return doc

    def payload(self) -> bytes:
        return canonical_json(self.to_dict())


@dataclass(frozen=True, slots=True)
class Signature:
    key_id: str
    value: bytes


@dataclass(frozen=True, slots=True)
class SignedSet:
    """A decoded document: the set plus whatever signatures it carries (unverified)."""

    manifest_set: ManifestSet
    signatures: tuple[Signature, ...]


def _entry_dict(e: ManifestEntry) -> dict[str, Any]:
    return {"name": e.name, "scope": e.scope, "sha256": e.sha256, "yaml": e.yaml}


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def next_set(
    previous: ManifestSet | None,
    arch: str,
    channel: str,
    entries: Iterable[ManifestEntry],
    *,
    now: datetime,
    ttl: timedelta = DEFAULT_TTL,
    poll_seconds: int | None = KEEP_POLL_HINT,
    rollout: RolloutRule | None = None,
) -> ManifestSet:
    """The successor of ``previous`` holding ``entries`` (and ``rollout``, if any; and
    ``previous``'s poll hint, unless ``poll_seconds`` is given: an int, or None to drop it).

    The sequence is the larger of previous+1 and the issue time in milliseconds, so it
    grows even across a wiped bucket and a fresh bootstrap.
    """
    now = now.astimezone(UTC).replace(microsecond=0)
    floor = int(now.timestamp() * 1000)
    sequence = max(floor, previous.sequence + 1 if previous else 1)
    if poll_seconds is KEEP_POLL_HINT:
        poll_seconds = previous.poll_seconds if previous else None
    return ManifestSet(
        arch, channel, sequence, now, now + ttl, tuple(entries), poll_seconds, rollout
    )


def encode(manifest_set: ManifestSet, signers: Sequence[Ed25519PrivateKey] = ()) -> bytes:
    """The JSON document, signed by every key in ``signers``."""
    payload = manifest_set.payload()
    doc = manifest_set.to_dict()
    doc["signatures"] = [
        {
            "keyId": key_id(k.public_key()),
            "algorithm": "ed25519",
            "value": base64.b64encode(k.sign(payload)).decode(),
        }
        for k in signers
    ]
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n"


def decode(data: bytes) -> SignedSet:
    """Parse a set document; raise :class:`InvalidManifestSet` naming what is wrong."""
    if len(data) > MAX_SET_BYTES:
        raise InvalidManifestSet(f"manifest set is {len(data)} bytes, over {MAX_SET_BYTES}")
    doc = load_json(data, "manifest set", InvalidManifestSet)
    if not isinstance(doc, dict):
        raise InvalidManifestSet("manifest set is not a JSON object")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise InvalidManifestSet(f"manifest set must have apiVersion {API_VERSION} kind {KIND}")
    try:
        arch = layout.check_arch(_str(doc, "arch"))
        channel = layout.check_channel(_str(doc, "channel"))
        sequence = doc.get("sequence")
        if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
            raise InvalidManifestSet("manifest set sequence must be a positive integer")
        issued = _parse_time(_str(doc, "issuedAt"), "issuedAt")
        expires = _parse_time(_str(doc, "expiresAt"), "expiresAt")
        entries = tuple(_decode_entry(raw) for raw in _list(doc, "manifests"))
        signatures = tuple(
            _decode_signature(raw)
            for raw in (_list(doc, "signatures") if "signatures" in doc else [])
        )
        poll_seconds = check_poll_hint(doc.get("pollSeconds"))
        rollout = _decode_rollout(doc.get("rollout"))
    except InvalidManifestSet:
        raise
    except InvalidInput as exc:
        raise InvalidManifestSet(str(exc)) from exc
    decoded = ManifestSet(arch, channel, sequence, issued, expires, entries, poll_seconds, rollout)
    return SignedSet(decoded, signatures)


def load_json(data: bytes, what: str, error: type[InvalidInput] = InvalidInput) -> Any:
    """Parse untrusted JSON: UTF-8, nesting at most :data:`MAX_JSON_DEPTH`, no duplicate
    keys, no lone surrogates (``"\\ud800"``). Every failure is ``error`` naming ``what``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    depth = _max_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise error(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise error(f"{what} is not JSON: {' '.join(str(exc).split())[:200]}") from exc
    try:
        _check_strings(doc)
    except UnicodeEncodeError as exc:
        raise error(f"{what} holds a string with a lone surrogate") from exc
    return doc


def _max_depth(text: str) -> int:
    """Nesting depth of brackets outside JSON strings (cheap: one regex pass)."""
    depth = deepest = 0
    for token in _JSON_TOKENS.findall(text):
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


def _check_strings(doc: Any) -> None:
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            node.encode("utf-8")
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def verify(
    signed: SignedSet,
    trusted_keys: Sequence[Ed25519PublicKey],
    *,
    arch: str,
    channel: str,
    now: datetime,
    applied_sequence: int | None = None,
    applied_digest: str | None = None,
    threshold: int = 1,
    insecure: bool = False,
    payload: bytes | None = None,
) -> ManifestSet:
    """Return the set if a device of ``arch``/``channel`` may apply it, else raise SetRejected.
    ``payload``: ``signed.manifest_set.payload()`` when the caller has it already.

    Needs valid signatures by ``threshold`` distinct ``trusted_keys``. Without trusted keys
    every set is refused (``no-trusted-key``) unless ``insecure`` (development only): then
    signatures and expiry are not checked, but target and replay checks still apply.
    """
    s = signed.manifest_set
    if (s.arch, s.channel) != (arch, channel):
        raise SetRejected(
            REJECT_WRONG_TARGET, f"set is for {s.arch}/{s.channel}, device is {arch}/{channel}"
        )
    if not trusted_keys and not insecure:
        raise SetRejected(
            REJECT_NO_TRUST,
            "no signing key is trusted: provision the root key (ROOT_KEYS) and publish "
            "trust/root.json, or set EDGEFLEET_INSECURE_ALLOW_UNSIGNED=1 for development only",
        )
    if trusted_keys:
        if not signed.signatures:
            raise SetRejected(REJECT_UNSIGNED, "set carries no signature and keys are trusted")
        by_id = {key_id(k): k for k in trusted_keys}
        known = [sig for sig in signed.signatures if sig.key_id in by_id]
        if not known:
            ids = ", ".join(sig.key_id[:16] for sig in signed.signatures[:8])
            raise SetRejected(REJECT_UNTRUSTED_KEY, f"signed by {ids}, none of them trusted")
        if payload is None:
            payload = s.payload()
        good = {sig.key_id for sig in known if verifies(by_id[sig.key_id], sig.value, payload)}
        if not good:
            raise SetRejected(REJECT_BAD_SIGNATURE, "signature does not match the set's content")
        if len(good) < threshold:
            raise SetRejected(
                REJECT_UNTRUSTED_KEY,
                f"{len(good)} valid signature(s) by trusted keys, {threshold} needed",
            )
        if s.expires_at <= now:
            raise SetRejected(REJECT_EXPIRED, f"set expired at {_fmt_time(s.expires_at)}")
    if applied_sequence is not None and _is_replay(s, applied_sequence, applied_digest):
        raise SetRejected(
            REJECT_REPLAYED,
            f"sequence {s.sequence} is not newer than the applied {applied_sequence}",
        )
    return s


def check_poll_hint(value: Any) -> int | None:
    """``pollSeconds``: None, or an integer 1..MAX_POLL_HINT_SECONDS."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidManifestSet("manifest set pollSeconds must be an integer")
    if not 1 <= value <= MAX_POLL_HINT_SECONDS:
        raise InvalidManifestSet(f"manifest set pollSeconds must be 1..{MAX_POLL_HINT_SECONDS}")
    return value


def _is_replay(s: ManifestSet, applied_sequence: int, applied_digest: str | None) -> bool:
    """Older than what is applied, or the same sequence with other content."""
    if s.sequence != applied_sequence:
        return s.sequence < applied_sequence
    return applied_digest is not None and s.digest() != applied_digest


def _decode_entry(raw: Any) -> ManifestEntry:
    if not isinstance(raw, dict):
        raise InvalidManifestSet("manifest set entry is not an object")
    name = layout.check_name(_str(raw, "name"))
    scope = _str(raw, "scope")
    if scope not in (SCOPE_CHANNEL, SCOPE_ALL):
        raise InvalidManifestSet(f"entry {name}: scope must be {SCOPE_CHANNEL!r} or {SCOPE_ALL!r}")
    text = _str(raw, "yaml")
    if len(text.encode("utf-8")) > MAX_MANIFEST_BYTES:
        raise InvalidManifestSet(f"entry {name}: manifest is over {MAX_MANIFEST_BYTES} bytes")
    entry = ManifestEntry(name, scope, text)
    if raw.get("sha256") != entry.sha256:
        raise InvalidManifestSet(f"entry {name}: sha256 does not match its yaml")
    return entry


def _decode_rollout(raw: Any) -> RolloutRule | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidManifestSet("manifest set rollout is not an object")
    rollout_id = _str(raw, "id")
    if not _ROLLOUT_ID_RE.match(rollout_id):
        raise InvalidManifestSet(f"rollout id {rollout_id[:80]!r} is not a valid id")
    percent = raw.get("percent")
    if (
        isinstance(percent, bool)
        or not isinstance(percent, int | float)
        or not math.isfinite(percent)
        or not 0 <= percent <= 100
    ):
        raise InvalidManifestSet("rollout percent must be a number from 0 to 100")
    entries = tuple(_decode_entry(e) for e in _list(raw, "manifests"))
    if any(e.scope != SCOPE_CHANNEL for e in entries):
        raise InvalidManifestSet("rollout manifests must have scope 'channel'")
    if len({e.name for e in entries}) != len(entries):
        raise InvalidManifestSet("rollout lists the same manifest twice")
    candidate, baseline = raw.get("candidate", ""), raw.get("baseline", "")
    if not isinstance(candidate, str) or not isinstance(baseline, str):
        raise InvalidManifestSet("rollout candidate/baseline must be strings")
    return RolloutRule(rollout_id, percent, entries, candidate[:100], baseline[:100])


def _decode_signature(raw: Any) -> Signature:
    if not isinstance(raw, dict) or raw.get("algorithm") != "ed25519":
        raise InvalidManifestSet("signature must be an object with algorithm 'ed25519'")
    try:
        value = base64.b64decode(_str(raw, "value"), validate=True)
    except binascii.Error as exc:
        raise InvalidManifestSet("signature value is not base64") from exc
    return Signature(_str(raw, "keyId"), value)


def _str(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise InvalidManifestSet(f"manifest set field {key!r} must be a string")
    return value


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise InvalidManifestSet(f"manifest set field {key!r} must be a list")
    return value


def _fmt_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str, what: str) -> datetime:
    try:
        parsed = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError as exc:
        raise InvalidManifestSet(f"{what} {value!r} is not YYYY-MM-DDTHH:MM:SSZ") from exc
    return parsed.replace(tzinfo=UTC)

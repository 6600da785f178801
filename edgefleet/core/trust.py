"""The root of trust (TUF-style): an offline root key on devices authorises the online keys.

Devices are provisioned with the ROOT public key(s) (``ROOT_KEYS``, default every
``*.pub`` in ``/etc/edgefleet/root-keys/``, written by ``edgefleet provision --root-keys``),
never with the key that signs sets every day. The deploy
bucket holds ``trust/root.json``, signed by the root key(s), naming:

- the online signing keys sets must be signed with, and how many must sign (threshold);
- revoked key ids (never trusted again, even if listed);
- the root keys for the NEXT version and their threshold (rotation of the root itself:
  a new root document must be signed by a threshold of the current root keys AND of its
  own root keys, as in TUF);
- sequence resets: ``"ARCH/CHANNEL": ROOT_VERSION``. A set with a huge sequence (a bug,
  or a stolen key) would make every later set "replayed" for good; a root-signed reset
  tells devices of that channel to forget their replay floor once, so the next validly
  signed set applies (recovery from a fast-forward).

``version`` only grows: a device keeps the newest root it accepted (``STATE_DIR``) and
refuses an older one (``root-rollback``). Rotating a signing key is a new root document
(``edgefleet keys authorize``) plus a re-sign: no device is touched. A bucket writer
without the root key can delete ``trust/root.json`` (devices keep the last one) but not
change it. Wire format (JSON; the signed payload is the document without ``signatures``,
canonical JSON as for sets)::

    {"apiVersion": "edgefleet.dev/v1", "kind": "Root", "version": 2,
     "issuedAt": "2026-11-29T20:00:00Z",
     "rootKeys": ["BASE64 raw Ed25519"], "rootThreshold": 1,
     "signingKeys": ["BASE64 raw Ed25519"], "signingThreshold": 1,
     "revoked": ["KEYID"], "sequenceResets": {"x86_64/beta": 2},
     "signatures": [{"keyId": "…", "algorithm": "ed25519", "value": "BASE64"}]}
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgefleet.core import layout
from edgefleet.core.errors import InvalidInput, SetRejected
from edgefleet.core.fsutil import atomic_write
from edgefleet.core.manifest_set import API_VERSION, canonical_json, load_json
from edgefleet.core.signing import key_id, verifies

ROOT_OBJECT = "trust/root.json"
KIND = "Root"
MAX_ROOT_BYTES = 64 * 1024
MAX_KEYS = 32
INSECURE_ENV = "EDGEFLEET_INSECURE_ALLOW_UNSIGNED"
DEFAULT_ROOT_KEYS_DIR = "/etc/edgefleet/root-keys"

REJECT_ROOT_INVALID = "root-invalid"
REJECT_ROOT_SIGNATURE = "root-signature"
REJECT_ROOT_ROLLBACK = "root-rollback"


class InvalidRoot(InvalidInput):
    """``trust/root.json`` is malformed."""


def raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def from_raw(data: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(data)


@dataclass(frozen=True)
class Root:
    version: int
    root_keys: tuple[Ed25519PublicKey, ...]
    signing_keys: tuple[Ed25519PublicKey, ...]
    root_threshold: int = 1
    signing_threshold: int = 1
    revoked: frozenset[str] = frozenset()
    sequence_resets: Mapping[str, int] = field(default_factory=dict)
    issued_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def trusted_signing_keys(self) -> tuple[Ed25519PublicKey, ...]:
        """The online keys sets may be signed with: listed and not revoked."""
        return tuple(k for k in self.signing_keys if key_id(k) not in self.revoked)

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "version": self.version,
            "issuedAt": self.issued_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "rootKeys": [_b64(raw(k)) for k in self.root_keys],
            "rootThreshold": self.root_threshold,
            "signingKeys": [_b64(raw(k)) for k in self.signing_keys],
            "signingThreshold": self.signing_threshold,
            "revoked": sorted(self.revoked),
            "sequenceResets": dict(sorted(self.sequence_resets.items())),
        }

    def payload(self) -> bytes:
        return canonical_json(self.to_dict())


def next_root(
    current: Root | None,
    *,
    root_keys: Sequence[Ed25519PublicKey],
    signing_keys: Sequence[Ed25519PublicKey],
    revoke: Sequence[str] = (),
    resets: Sequence[str] = (),
    root_threshold: int = 1,
    signing_threshold: int = 1,
) -> Root:
    """The successor of ``current`` (version + 1; revocations and resets carried over;
    each of ``resets`` — ``ARCH/CHANNEL`` — ordered at the new version)."""
    version = (current.version if current else 0) + 1
    orders = dict(current.sequence_resets) if current else {}
    for target in resets:
        if not _target_ok(target):
            raise InvalidInput(f"reset {target!r} is not ARCH/CHANNEL")
        orders[target] = version
    revoked = frozenset(revoke) | (current.revoked if current else frozenset())
    root = Root(
        version=version,
        root_keys=tuple(root_keys),
        signing_keys=tuple(signing_keys),
        root_threshold=root_threshold,
        signing_threshold=signing_threshold,
        revoked=revoked,
        sequence_resets=orders,
    )
    if root_threshold > len(root.root_keys) or signing_threshold > len(root.trusted_signing_keys()):
        raise InvalidInput("a threshold is larger than its number of (unrevoked) keys")
    return root


@dataclass(frozen=True)
class SignedRoot:
    root: Root
    signatures: tuple[tuple[str, bytes], ...]  # (key id, signature)


def encode(root: Root, signers: Sequence[Ed25519PrivateKey]) -> bytes:
    doc = root.to_dict()
    payload = root.payload()
    doc["signatures"] = [
        {"keyId": key_id(k.public_key()), "algorithm": "ed25519", "value": _b64(k.sign(payload))}
        for k in signers
    ]
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def decode(data: bytes) -> SignedRoot:
    """Parse ``trust/root.json`` (bounded); raise :class:`InvalidRoot` naming the problem."""
    if len(data) > MAX_ROOT_BYTES:
        raise InvalidRoot(f"{ROOT_OBJECT} is {len(data)} bytes, over {MAX_ROOT_BYTES}")
    doc = load_json(data, ROOT_OBJECT, InvalidRoot)
    if not isinstance(doc, dict) or doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise InvalidRoot(f"{ROOT_OBJECT} must be an object of apiVersion {API_VERSION} kind Root")
    try:
        resets = doc.get("sequenceResets") or {}
        if not isinstance(resets, dict) or not all(
            _int(v) and "/" in k and _target_ok(k) for k, v in resets.items()
        ):
            raise InvalidRoot("sequenceResets must map ARCH/CHANNEL to a root version")
        issued = datetime.strptime(str(doc.get("issuedAt")), "%Y-%m-%dT%H:%M:%SZ")
        root = Root(
            version=_positive(doc, "version"),
            root_keys=_keys(doc, "rootKeys"),
            signing_keys=_keys(doc, "signingKeys"),
            root_threshold=_positive(doc, "rootThreshold"),
            signing_threshold=_positive(doc, "signingThreshold"),
            revoked=frozenset(_strings(doc, "revoked")),
            sequence_resets=dict(resets),
            issued_at=issued.replace(tzinfo=UTC),
        )
        signatures = tuple(_signature(s) for s in _list(doc, "signatures"))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise InvalidRoot(f"{ROOT_OBJECT}: {exc}") from exc
    if root.root_threshold > len(root.root_keys) or root.signing_threshold > max(
        1, len(root.trusted_signing_keys())
    ):
        raise InvalidRoot(f"{ROOT_OBJECT}: a threshold is larger than its number of keys")
    return SignedRoot(root, signatures)


def verify(
    signed: SignedRoot,
    trusted_root_keys: Sequence[Ed25519PublicKey],
    threshold: int,
    current_version: int = 0,
) -> Root:
    """The root document if a threshold of the CURRENT root keys signed it, a threshold of
    its OWN root keys signed it, and its version is not older; else :class:`SetRejected`."""
    new = signed.root
    if new.version < current_version:
        raise SetRejected(
            REJECT_ROOT_ROLLBACK,
            f"{ROOT_OBJECT} version {new.version} is older than the trusted {current_version}",
        )
    payload = new.payload()
    for keys, needed, whose in (
        (trusted_root_keys, threshold, "the trusted root keys"),
        (new.root_keys, new.root_threshold, "its own root keys"),
    ):
        count = _valid_signers(signed.signatures, keys, payload)
        if count < needed:
            raise SetRejected(
                REJECT_ROOT_SIGNATURE,
                f"{ROOT_OBJECT} v{new.version} has {count} valid signature(s) by {whose}, "
                f"{needed} needed",
            )
    return new


def restore(data: bytes) -> Root:
    """A root this device accepted before, from its own state (``STATE_DIR``, as local and
    as protected as the provisioned keys). It may lie several rotations past the
    provisioned root keys, so it is checked against its OWN root keys (threshold), not
    re-verified from the provisioned ones."""
    signed = decode(data)
    return verify(signed, signed.root.root_keys, signed.root.root_threshold)


def _valid_signers(
    signatures: Sequence[tuple[str, bytes]], keys: Sequence[Ed25519PublicKey], payload: bytes
) -> int:
    by_id = {key_id(k): k for k in keys}
    good = set()
    for kid, value in signatures:
        key = by_id.get(kid)
        if key is not None and verifies(key, value, payload):
            good.add(kid)
    return len(good)


# -- the device's trust state -----------------------------------------------------------


@dataclass
class DeviceTrust:
    """What a device trusts now: provisioned root keys, then the newest verified root.

    ``insecure`` (``EDGEFLEET_INSECURE_ALLOW_UNSIGNED=1``) accepts unsigned sets; for
    development only, logged loudly by the agent at start and in every status report.
    """

    root_keys: tuple[Ed25519PublicKey, ...]
    root_threshold: int = 1
    root: Root | None = None
    direct_keys: tuple[Ed25519PublicKey, ...] = ()  # TRUSTED_KEYS: only without ROOT_KEYS
    insecure: bool = False
    honoured_resets: dict[str, int] = field(default_factory=dict)

    def signing_keys(self) -> tuple[Ed25519PublicKey, ...]:
        if self.root is not None:
            return self.root.trusted_signing_keys()
        return () if self.root_keys else self.direct_keys

    def signing_threshold(self) -> int:
        return self.root.signing_threshold if self.root is not None else 1

    def accept(self, data: bytes) -> Root:
        """Verify ``trust/root.json`` bytes and adopt them; raise InvalidRoot/SetRejected."""
        signed = decode(data)
        current = self.root
        keys = current.root_keys if current else self.root_keys
        threshold = current.root_threshold if current else self.root_threshold
        root = verify(signed, keys, threshold, current.version if current else 0)
        self.root = root
        return root

    def reset_pending(self, arch: str, channel: str) -> bool:
        """True when the root orders a sequence reset of ``arch/channel`` not yet spent."""
        target = f"{arch}/{channel}"
        wanted = (self.root.sequence_resets.get(target) if self.root else None) or 0
        return wanted > self.honoured_resets.get(target, 0)

    def take_reset(self, arch: str, channel: str) -> bool:
        """Spend the pending reset of ``arch/channel`` (True), once per root order."""
        if not self.reset_pending(arch, channel):
            return False
        target = f"{arch}/{channel}"
        assert self.root is not None
        self.honoured_resets[target] = self.root.sequence_resets[target]
        return True

    # persistence: the newest root survives restarts, so a rollback is caught after reboot
    def save(self, path: Path, root_bytes: bytes | None = None) -> None:
        state = {"honouredResets": self.honoured_resets}
        if root_bytes is not None:
            state["root"] = base64.b64encode(root_bytes).decode()
        elif path.is_file():
            previous = _read_state(path)
            if "root" in previous:
                state["root"] = previous["root"]
        atomic_write(path, json.dumps(state, sort_keys=True).encode())

    def load(self, path: Path) -> None:
        state = _read_state(path)
        self.honoured_resets = {
            k: v for k, v in (state.get("honouredResets") or {}).items() if _int(v)
        }
        if "root" in state:
            try:
                self.root = restore(base64.b64decode(state["root"]))
            except (InvalidInput, SetRejected, binascii.Error, TypeError):
                self.root = None  # a damaged state file: start from the provisioned keys


def _read_state(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


# -- helpers ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _positive(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if not _int(value):
        raise ValueError(f"{key} must be a positive integer")
    return int(value)


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list) or len(value) > MAX_KEYS:
        raise ValueError(f"{key} must be a list of at most {MAX_KEYS}")
    return value


def _strings(doc: dict[str, Any], key: str) -> list[str]:
    items = _list(doc, key) if key in doc else []
    if not all(isinstance(i, str) for i in items):
        raise ValueError(f"{key} must hold strings")
    return items


def _keys(doc: dict[str, Any], key: str) -> tuple[Ed25519PublicKey, ...]:
    items = _strings(doc, key)
    if not items:
        raise ValueError(f"{key} must name at least one key")
    return tuple(from_raw(base64.b64decode(i, validate=True)) for i in items)


def _signature(raw_sig: Any) -> tuple[str, bytes]:
    if not isinstance(raw_sig, dict) or raw_sig.get("algorithm") != "ed25519":
        raise ValueError("signature must be an object with algorithm 'ed25519'")
    kid, value = raw_sig.get("keyId"), raw_sig.get("value")
    if not isinstance(kid, str) or not isinstance(value, str):
        raise ValueError("signature needs keyId and value strings")
    return kid, base64.b64decode(value, validate=True)


def _target_ok(target: str) -> bool:
    arch, _, channel = target.partition("/")
    try:
        layout.check_arch(arch)
        layout.check_channel(channel)
    except InvalidInput:
        return False
    return True

"""Ed25519 keys for manifest sets: generate, load, identify.

Private keys are PKCS#8 PEM files written with mode 0600; public keys are
SubjectPublicKeyInfo PEM. A key's id is the first 16 hex digits of the SHA-256 of its
raw public bytes: signatures name the key that made them, so devices trusting several
keys (rotation) check the right one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgefleet.core.errors import ConfigError
from edgefleet.core.fsutil import atomic_write


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def verifies(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is ``key``'s over ``data`` (never raises on a bad one)."""
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate(path: str | os.PathLike[str], *, overwrite: bool = False) -> Ed25519PrivateKey:
    """Write a new private key to ``path`` (0600) and its public key to ``path.pub``."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} exists: choose another path or remove it first")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, private, 0o600)
    atomic_write(Path(f"{target}.pub"), public_pem(key.public_key()), 0o644)
    return key


def private_key_from_pem(data: bytes, source: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"{source} is not an Ed25519 key: create one with `edgefleet keys generate`"
        )
    return key


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc.strerror}") from exc
    return private_key_from_pem(data, str(path))


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read trusted key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


def load_public_keys(paths: str | None) -> tuple[Ed25519PublicKey, ...]:
    """Parse ``TRUSTED_KEYS`` (comma-separated paths); empty means no verification."""
    if not paths:
        return ()
    return tuple(load_public_key(p.strip()) for p in paths.split(",") if p.strip())

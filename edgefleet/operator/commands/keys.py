"""``edgefleet keys generate|show``: Ed25519 keys that sign manifest sets."""

from __future__ import annotations

import argparse

from edgefleet.core import signing
from edgefleet.core.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="create and inspect manifest-set signing keys")
    verbs = keys.add_subparsers(dest="verb", metavar="VERB", required=True)

    gen = verbs.add_parser("generate", help="write a private key to PATH and PATH.pub")
    gen.add_argument("path", help="where to write the private key (PEM, mode 0600)")
    gen.add_argument("--force", action="store_true", help="overwrite an existing key")
    gen.set_defaults(handler=_generate)

    show = verbs.add_parser("show", help="print a key's id and public PEM")
    show.add_argument("path", help="a private key or a .pub public key")
    show.set_defaults(handler=_show)


def _generate(args: argparse.Namespace) -> int:
    key = signing.generate(args.path, overwrite=args.force)
    print(f"key id {signing.key_id(key.public_key())}")
    print(f"private key: {args.path}")
    print(f"public key:  {args.path}.pub  (give this to devices: TRUSTED_KEYS)")
    return 0


def _show(args: argparse.Namespace) -> int:
    path = str(args.path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if b"PRIVATE KEY" in head:
        public = signing.load_private_key(path).public_key()
    else:
        public = signing.load_public_key(path)
    print(f"key id {signing.key_id(public)}")
    print(signing.public_pem(public).decode(), end="")
    return 0

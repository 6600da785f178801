"""``edgefleet keys generate|show|authorize`` and ``edgefleet resign``.

Two kinds of Ed25519 keys (docs/security.md): the ROOT key, kept offline, whose public
half every device gets at provisioning (``edgefleet provision --root-keys``); and the
online SIGNING key the control plane signs sets with. ``keys authorize`` writes the next
``trust/root.json``, signed by the root key, naming the signing keys devices accept
(rotation and revocation without touching a device, a sequence reset to recover from a
fast-forward). ``resign`` re-signs sets before they expire (the ``resign_sets`` function
does the same on a scheduler tick).
"""

from __future__ import annotations

import argparse
import os

from edgefleet.core import signing, trust
from edgefleet.core.errors import ConfigError, InvalidInput


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

    auth = verbs.add_parser(
        "authorize",
        help="write the next trust/root.json (signed by the root key): which keys sign sets",
    )
    auth.add_argument("--bucket", help="deploy bucket (default: $DEPLOY_BUCKET or local stack)")
    auth.add_argument(
        "--root", action="append", required=True, metavar="PEM",
        help="a root PRIVATE key to sign with (repeat for a threshold or a root rotation)",
    )  # fmt: skip
    auth.add_argument(
        "--root-public", action="append", default=[], metavar="PUB",
        help="the root keys of the new version (default: those of --root)",
    )  # fmt: skip
    auth.add_argument(
        "--signing", action="append", required=True, metavar="PUB",
        help="an online signing key's public key (or private key file) devices accept",
    )  # fmt: skip
    auth.add_argument("--revoke", action="append", default=[], metavar="KEYID")
    auth.add_argument(
        "--reset", action="append", default=[], metavar="ARCH/CHANNEL",
        help="lift the devices' replay floor once (recovery from a huge sequence)",
    )  # fmt: skip
    auth.add_argument("--signing-threshold", type=int, default=1)
    auth.add_argument("--root-threshold", type=int, default=1)
    auth.set_defaults(handler=_authorize)

    resign = sub.add_parser(
        "resign", help="re-sign manifest sets that expire soon (SIGNING_KEY), e.g. from cron"
    )
    resign.add_argument("--bucket", help="deploy bucket (default: $DEPLOY_BUCKET or local stack)")
    resign.add_argument("--signing-key", default=os.environ.get("SIGNING_KEY", ""))
    resign.add_argument("--arches", default=os.environ.get("ARCHES", ""))
    resign.add_argument("--channels", default=os.environ.get("CHANNELS", ""))
    resign.add_argument("--force", action="store_true", help="re-sign even fresh sets")
    resign.set_defaults(handler=_resign)


def _generate(args: argparse.Namespace) -> int:
    key = signing.generate(args.path, overwrite=args.force)
    print(f"key id {signing.key_id(key.public_key())}")
    print(f"private key: {args.path}")
    print(
        f"public key:  {args.path}.pub  (a root key: give it to devices with "
        "`edgefleet provision --root-keys`; a signing key: authorise it with "
        "`edgefleet keys authorize`)"
    )
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


def _public(path: str):  # type: ignore[no-untyped-def]
    with open(path, "rb") as fh:
        head = fh.read(64)
    if b"PRIVATE KEY" in head:
        return signing.load_private_key(path).public_key()
    return signing.load_public_key(path)


def _authorize(args: argparse.Namespace) -> int:
    from edgefleet.operator.commands.fleet import _deploy_bucket

    bucket = _deploy_bucket(args.bucket)
    signers = [signing.load_private_key(p) for p in args.root]
    current = None
    blob = bucket.read(trust.ROOT_OBJECT, max_bytes=trust.MAX_ROOT_BYTES)
    if blob is not None:
        try:
            current = trust.decode(blob.data).root
        except InvalidInput as exc:
            print(f"edgefleet: the stored {trust.ROOT_OBJECT} is not valid ({exc}): replacing it")
    try:
        root = trust.next_root(
            current,
            root_keys=[_public(p) for p in args.root_public] or [k.public_key() for k in signers],
            signing_keys=[_public(p) for p in args.signing],
            revoke=args.revoke,
            resets=args.reset,
            root_threshold=args.root_threshold,
            signing_threshold=args.signing_threshold,
        )
    except InvalidInput as exc:
        raise ConfigError(f"keys authorize: {exc}") from exc
    data = trust.encode(root, signers)
    bucket.write(trust.ROOT_OBJECT, data, content_type="application/json")
    ids = ", ".join(signing.key_id(k) for k in root.trusted_signing_keys())
    print(f"{trust.ROOT_OBJECT} version {root.version}: sets signed by {ids} are accepted")
    return 0


def _resign(args: argparse.Namespace) -> int:
    from edgefleet.cloud.control import ResignConfig, SetResigner
    from edgefleet.operator.commands.fleet import _deploy_bucket

    bucket = _deploy_bucket(args.bucket)
    config = ResignConfig.from_env(
        {"DEPLOY_BUCKET": bucket.name, "SIGNING_KEY": args.signing_key,
         "ARCHES": args.arches, "CHANNELS": args.channels}
    )  # fmt: skip
    out = SetResigner.from_config(config, bucket).run(force=args.force)
    for name, what in sorted(out.items()):
        print(f"{name}: {what}")
    return 1 if "untrusted" in out.values() else 0

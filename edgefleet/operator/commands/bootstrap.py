"""``edgefleet bootstrap``: prepare a deploy bucket for a fleet.

Uploads the Pod templates, and writes into every arch x channel manifest set the sync pod
(its image resolved to a digest per arch) plus optional fleet-wide manifests. Idempotent:
a second run with the same inputs writes nothing and issues no new sequence; it also
repairs the readable mirror if someone changed it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.cloud import platforms
from edgefleet.cloud.registry import RegistryClient, parse_insecure
from edgefleet.cloud.render import (
    SIGNATURE_SUFFIX,
    PackagedTemplates,
    SyncPodSpec,
    Templates,
    check,
    render_sync_pod,
    sign_template,
)
from edgefleet.cloud.set_store import SetStore, Snapshot, load_signer
from edgefleet.cloud.storage import Bucket, make_client
from edgefleet.core import layout, policy, refs, signing, trust
from edgefleet.core.errors import ConfigError, InvalidInput
from edgefleet.core.manifest_set import SCOPE_ALL, SCOPE_CHANNEL, ManifestEntry

# Where `edgefleet provision` installs trusted public keys on a device.
DEVICE_KEY_DIR = "/etc/edgefleet/trusted"


@dataclass(frozen=True)
class Options:
    bucket: str
    sync_image: str
    arches: tuple[str, ...] = layout.ARCHES
    channels: tuple[str, ...] = layout.DEFAULT_CHANNELS
    fleet_wide: Path | None = None
    signing_key: str = ""
    trusted_keys: str = ""  # public keys (besides the signer's) whose stored sets to build on
    device_trusted_keys: str | None = None  # None: DEVICE_KEY_DIR/KEYID.pub when signing
    allowed_registries: str = ""
    runtime: str = "kubelet"
    poll_seconds: float = 60.0
    manifest_dir: str = "/opt/device/pods"
    state_dir: str = "/var/lib/edgefleet"
    sync_env: Mapping[str, str] = field(default_factory=dict)
    insecure_registries: frozenset[str] = frozenset()
    replace_untrusted: bool = False
    root_key: str = ""  # the offline root key: authorise the signing key in trust/root.json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bootstrap",
        help="upload templates and the sync pod (and fleet-wide manifests) to a deploy bucket",
        description=__doc__,
    )
    p.add_argument("--bucket", required=True, help="the deploy bucket")
    p.add_argument(
        "--arch",
        action="append",
        metavar="ARCH",
        help=f"an arch to prepare (repeatable; default all: {', '.join(layout.ARCHES)})",
    )
    p.add_argument(
        "--channels",
        default=os.environ.get("CHANNELS", ""),
        help="comma-separated channels (default $CHANNELS or latest,alpha,beta,stable)",
    )
    p.add_argument(
        "--sync-image",
        required=True,
        help="the sync agent image, HOST/REPO:TAG or pinned (build it with "
        "`python -m edgefleet.packaging sync-image`, docs/device.md 'Sync agent image')",
    )
    p.add_argument(
        "--fleet-wide",
        type=Path,
        metavar="DIR",
        help="Pod manifests (NAME-pod.yaml; DIR/ARCH/ for one arch) for every channel",
    )
    p.add_argument(
        "--signing-key",
        default=os.environ.get("SIGNING_KEY", ""),
        help="sign the sets with this Ed25519 key (default $SIGNING_KEY)",
    )
    p.add_argument(
        "--trusted-keys",
        default=os.environ.get("TRUSTED_KEYS", ""),
        help="comma-separated public keys whose existing sets may be re-signed, e.g. the "
        "old key during a rotation (default $TRUSTED_KEYS)",
    )
    p.add_argument(
        "--device-trusted-keys",
        help=f"TRUSTED_KEYS for the sync pod: public key paths ON THE DEVICE "
        f"(default {DEVICE_KEY_DIR}/KEYID.pub of the signing key, as provisioned)",
    )
    p.add_argument(
        "--allowed-registries",
        default=os.environ.get("ALLOWED_REGISTRIES", ""),
        help="ALLOWED_REGISTRIES for devices (default: the sync image's registry)",
    )
    p.add_argument("--runtime", choices=("kubelet", "podman"), default="kubelet")
    p.add_argument("--poll-seconds", type=float, default=60.0)
    p.add_argument("--manifest-dir", default="/opt/device/pods")
    p.add_argument("--state-dir", default="/var/lib/edgefleet")
    p.add_argument(
        "--sync-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the sync pod (repeatable)",
    )
    p.add_argument(
        "--insecure-registries",
        default=os.environ.get("INSECURE_REGISTRIES", ""),
        help="host:port registries spoken to over plain HTTP (default $INSECURE_REGISTRIES)",
    )
    p.add_argument(
        "--root-key",
        default="",
        help="the ROOT private key (kept offline): authorise --signing-key in trust/root.json "
        "if it is not yet (devices trust what the root authorises)",
    )
    p.add_argument(
        "--replace-untrusted",
        action="store_true",
        help="rebuild sets that are malformed or fail signature checks (drops their content)",
    )
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    bucket = Bucket(make_client(), options.bucket)
    registry = RegistryClient(
        insecure=options.insecure_registries,
        credential_hosts={refs.parse(options.sync_image).registry},  # named by the operator
    )
    return run(options, bucket, registry, sys.stderr)


def authorize_signer(bucket: Bucket, root_key: Ed25519PrivateKey, signer: Ed25519PrivateKey) -> str:
    """Make ``trust/root.json`` accept ``signer`` (a new version signed by ``root_key``)
    unless it already does; the other authorised keys are kept."""
    blob = bucket.read(trust.ROOT_OBJECT, max_bytes=trust.MAX_ROOT_BYTES)
    current = trust.decode(blob.data).root if blob is not None else None
    kid = signing.key_id(signer.public_key())
    keys = list(current.trusted_signing_keys()) if current else []
    if any(signing.key_id(k) == kid for k in keys):
        assert current is not None
        return f"{trust.ROOT_OBJECT}: key {kid} already authorised (version {current.version})"
    root = trust.next_root(
        current,
        root_keys=current.root_keys if current else [root_key.public_key()],
        signing_keys=[*keys, signer.public_key()],
        root_threshold=current.root_threshold if current else 1,
    )
    bucket.write(trust.ROOT_OBJECT, trust.encode(root, [root_key]), content_type="application/json")
    return f"{trust.ROOT_OBJECT}: version {root.version} authorises key {kid}"


def options_from_args(args: argparse.Namespace) -> Options:
    try:
        arches = tuple(dict.fromkeys(layout.check_arch(a) for a in (args.arch or layout.ARCHES)))
        channels = layout.parse_channels(args.channels)
    except InvalidInput as exc:
        raise ConfigError(str(exc)) from exc
    env: dict[str, str] = {}
    for item in args.sync_env:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--sync-env {item!r}: expected KEY=VALUE")
        env[key] = value
    if args.poll_seconds <= 0:
        raise ConfigError("--poll-seconds must be positive")
    return Options(
        bucket=args.bucket,
        sync_image=args.sync_image,
        arches=arches,
        channels=channels,
        fleet_wide=args.fleet_wide,
        signing_key=args.signing_key or "",
        trusted_keys=args.trusted_keys or "",
        device_trusted_keys=args.device_trusted_keys,
        allowed_registries=args.allowed_registries or "",
        runtime=args.runtime,
        poll_seconds=args.poll_seconds,
        manifest_dir=args.manifest_dir,
        state_dir=args.state_dir,
        sync_env=env,
        insecure_registries=parse_insecure(args.insecure_registries),
        replace_untrusted=args.replace_untrusted,
        root_key=args.root_key or "",
    )


@dataclass
class Report:
    templates_written: list[str] = field(default_factory=list)
    sets_written: list[str] = field(default_factory=list)
    sets_unchanged: list[str] = field(default_factory=list)


def run(
    options: Options,
    bucket: Bucket,
    registry: RegistryClient,
    out: TextIO,
    *,
    report: Report | None = None,
) -> int:
    """Do the bootstrap; progress lines go to ``out``. Raises edgefleet errors."""
    report = report if report is not None else Report()
    say: Callable[[str], None] = lambda line: print(line, file=out, flush=True)  # noqa: E731
    signer = load_signer(options.signing_key)
    store = SetStore(
        bucket, signer=signer, trusted_keys=signing.load_public_keys(options.trusted_keys)
    )
    sync_ref = refs.parse(options.sync_image)
    allowed = options.allowed_registries or policy.default_allowed(sync_ref)
    if options.device_trusted_keys is not None:
        trusted = options.device_trusted_keys
    else:
        trusted = f"{DEVICE_KEY_DIR}/{signing.key_id(signer.public_key())}.pub" if signer else ""
    if signer is not None and not trusted:
        raise ConfigError(
            "sets will be signed but --device-trusted-keys is empty: devices would not verify"
        )
    # 1. The sync image, per arch.
    say(f"resolving {sync_ref} …")
    digests = platforms.resolve(registry, sync_ref)
    missing = [a for a in options.arches if a not in digests]
    if missing:
        raise InvalidInput(
            f"sync image {sync_ref} has no image for {', '.join(missing)} (it has "
            f"{', '.join(sorted(digests)) or 'none'}): build it for them or pass --arch"
        )

    # 2. Fleet-wide manifests.
    fleet = (
        load_fleet_wide(options.fleet_wide, options.arches, allowed) if options.fleet_wide else None
    )

    # 3. Templates (after every input is known to be good).
    packaged = PackagedTemplates()
    for name in packaged.names():
        data = (packaged.load(name) or "").encode()
        existing = bucket.fetch(layout.template_object(name))
        signature = bucket.fetch(layout.template_object(name) + SIGNATURE_SUFFIX)
        if existing is not None and existing.data == data and (signer is None or signature):
            say(f"template {name}: unchanged")
            continue
        bucket.write(layout.template_object(name), data, content_type="text/plain")
        if signer is not None:  # templates are code: tag_monitor uses only signed ones
            bucket.write(
                layout.template_object(name) + SIGNATURE_SUFFIX,
                sign_template(data, signer),
                content_type="text/plain",
            )
        report.templates_written.append(name)
        say(f"template {name}: uploaded")

    # 4. The root of trust names the signing key (before any set signed by it appears).
    if options.root_key:
        if signer is None:
            raise ConfigError("--root-key needs --signing-key: the key the root authorises")
        say(authorize_signer(bucket, signing.load_private_key(options.root_key), signer))

    # 5. Every arch x channel set.
    templates = Templates([packaged])
    for arch in options.arches:
        for channel in options.channels:
            sync_entry = sync_pod_entry(
                templates, options, sync_ref.with_digest(digests[arch]), arch, channel, allowed,
                trusted,
            )  # fmt: skip

            extra = list(fleet[arch]) if fleet is not None else []

            def change(
                snap: Snapshot, sync_entry: ManifestEntry = sync_entry, extra: list = extra
            ) -> list[ManifestEntry]:
                keep = [
                    e
                    for e in snap.entries
                    if not (e.scope == SCOPE_CHANNEL and e.name == layout.SYNC_POD_NAME)
                    and (fleet is None or e.scope != SCOPE_ALL)
                ]
                return [*keep, sync_entry, *extra]

            result = store.update(
                arch, channel, change, replace_untrusted=options.replace_untrusted
            )
            name = layout.set_object(arch, channel)
            if result.written:
                report.sets_written.append(name)
                say(f"{name}: written (sequence {result.manifest_set.sequence})")
            else:
                report.sets_unchanged.append(name)
                store.sync_mirrors(arch, channel, result.manifest_set, result.generation)
                say(f"{name}: unchanged")
    say(
        f"bootstrap done: {len(report.sets_written)} set(s) written, "
        f"{len(report.sets_unchanged)} unchanged, {len(report.templates_written)} template(s) "
        f"uploaded{'; signed with key ' + signing.key_id(signer.public_key()) if signer else ''}"
    )
    return 0


def sync_pod_entry(
    templates: Templates,
    options: Options,
    image: refs.ImageRef,
    arch: str,
    channel: str,
    allowed: str,
    trusted: str,
) -> ManifestEntry:
    spec = SyncPodSpec(
        image=image,
        bucket=options.bucket,
        arch=arch,
        channel=channel,
        manifest_dir=options.manifest_dir,
        state_dir=options.state_dir,
        poll_seconds=options.poll_seconds,
        runtime=options.runtime,
        allowed_registries=allowed,
        trusted_keys=trusted,
        extra_env=options.sync_env,
    )
    return ManifestEntry(layout.SYNC_POD_NAME, SCOPE_CHANNEL, render_sync_pod(templates, spec))


def load_fleet_wide(
    folder: Path, arches: Sequence[str], allowed: str
) -> dict[str, tuple[ManifestEntry, ...]]:
    """``NAME-pod.yaml`` files of ``folder`` (every arch) and ``folder/ARCH/`` (one arch)."""
    if not folder.is_dir():
        raise ConfigError(f"--fleet-wide {folder} is not a directory")
    fleet_policy = policy.Policy(allowed_registries=policy.parse_registries(allowed))

    def read(path: Path) -> dict[str, ManifestEntry]:
        found: dict[str, ManifestEntry] = {}
        for file in sorted(path.glob("*" + layout.MANIFEST_SUFFIX)):
            if not layout.is_manifest_file_name(file.name):
                raise ConfigError(f"{file}: name must be NAME-pod.yaml with NAME a DNS label")
            name = file.name[: -len(layout.MANIFEST_SUFFIX)]
            text = file.read_text(encoding="utf-8")
            try:
                check(text, fleet_policy, name)
            except InvalidInput as exc:
                raise InvalidInput(f"{file}: {exc}") from exc
            found[name] = ManifestEntry(name, SCOPE_ALL, text)
        return found

    common = read(folder)
    if layout.SYNC_POD_NAME in common:
        raise ConfigError(f"{folder}: {layout.SYNC_POD_NAME} is bootstrap's own; rename it")
    out = {}
    for arch in arches:
        entries = dict(common)
        if (folder / arch).is_dir():
            entries.update(read(folder / arch))
        out[arch] = tuple(entries.values())
    return out

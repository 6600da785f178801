"""``edgefleet provision``: prepare one device for one arch + channel, idempotently.

Writes what a device needs before its first poll: the device id and trusted public keys
under ``/etc/edgefleet``, and either (kubelet runtime) ``kubelet.service`` watching
``MANIFEST_DIR`` plus the sync pod's manifest as the first set, or (podman runtime) an
``edgefleet-sync.service`` unit running the agent with ``/etc/edgefleet/sync.env``.
Files whose content is already right are left alone ("unchanged"), so provisioning can
be re-run; ``--dry-run`` prints what would be written; ``--root`` writes below a folder.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2

from edgefleet.core import layout, refs, signing
from edgefleet.core.errors import ConfigError, EdgefleetError, InvalidInput
from edgefleet.core.fsutil import atomic_write

SYNC_POD_TEMPLATE = "sync-pod"
PROVISIONED_SET = "provisioned"
UNIT_DIR = "/etc/systemd/system"
CONFIG_DIR = "/etc/edgefleet"
DEFAULT_AGENT = "/usr/bin/python3 -m sync_pod"
DEFAULT_KUBELET = "/usr/bin/kubelet"
DEFAULT_CRI = "unix:///run/containerd/containerd.sock"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "provision",
        help="write a device's sync-pod manifest and systemd unit(s) for one arch + channel",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--arch", required=True, help=f"one of {', '.join(layout.ARCHES)}")
    p.add_argument("--channel", required=True, help="release channel, e.g. stable")
    p.add_argument("--bucket", required=True, help="deploy bucket name")
    p.add_argument("--runtime", required=True, choices=("kubelet", "podman"))
    p.add_argument("--device-id", required=True, help="this device's id (status/ID.json)")
    p.add_argument("--manifest-dir", default="/opt/device/pods")
    p.add_argument("--state-dir", default="/var/lib/edgefleet")
    p.add_argument("--poll-seconds", default="60")
    p.add_argument(
        "--allowed-registries", default="", help="comma-separated host[:port][/path] prefixes"
    )
    p.add_argument(
        "--trusted-keys",
        default="",
        help="comma-separated Ed25519 public key files (PEM) to install and trust",
    )
    p.add_argument(
        "--sync-image",
        default="",
        help="the sync agent image pinned by digest (REPO@sha256:...; kubelet runtime)",
    )
    p.add_argument("--agent-command", default=DEFAULT_AGENT, help="podman runtime: ExecStart")
    p.add_argument("--kubelet", default=DEFAULT_KUBELET, help="kubelet binary")
    p.add_argument("--cri-endpoint", default=DEFAULT_CRI, help="kubelet's container runtime")
    p.add_argument("--root", default="/", help="write below this folder (images, tests)")
    p.add_argument("--dry-run", action="store_true", help="print what would be written")
    p.set_defaults(handler=_handle)


@dataclass(frozen=True)
class Planned:
    """One file (or, with ``link``, a symlink) provisioning wants on the device."""

    path: str  # absolute path on the device
    data: bytes = b""
    mode: int = 0o644
    link: str | None = None


def plan(args: argparse.Namespace) -> list[Planned]:
    """Everything to write, validated (pure apart from reading the given key files)."""
    from edgefleet.packaging.support import check_device_arch
    from sync_pod.config import from_env  # the agent's own validation, one source of truth

    check_device_arch(args.arch)  # armv7l: no image can run there (docs/device.md)
    for flag in ("bucket", "allowed_registries", "device_id", "poll_seconds"):
        value = str(getattr(args, flag))
        if any(ch.isspace() or ch in "\"'\\$`" for ch in value):
            raise ConfigError(f"--{flag.replace('_', '-')} {value!r} has spaces or quotes")
    keys = [k.strip() for k in args.trusted_keys.split(",") if k.strip()]
    loaded = [signing.load_public_key(k) for k in keys]
    installed = [f"{CONFIG_DIR}/trusted/{signing.key_id(k)}.pub" for k in loaded]
    env = {
        "BUCKET": args.bucket,
        "ARCH": args.arch,
        "CHANNEL": args.channel,
        "DEVICE_ID": args.device_id,
        "MANIFEST_DIR": args.manifest_dir,
        "STATE_DIR": args.state_dir,
        "POLL_SECONDS": str(args.poll_seconds),
        "RUNTIME": args.runtime,
        "ALLOWED_REGISTRIES": args.allowed_registries,
        "TRUSTED_KEYS": ",".join(installed),
    }
    config = from_env({**env, "TRUSTED_KEYS": ",".join(keys)})
    out = [Planned(f"{CONFIG_DIR}/device-id", (config.device_id + "\n").encode())]
    out += [
        Planned(path, signing.public_pem(key)) for path, key in zip(installed, loaded, strict=True)
    ]
    context = {
        "device_id": config.device_id,
        "arch": config.arch,
        "channel": config.channel,
        "manifest_dir": str(config.manifest_dir),
    }
    if config.runtime == "podman":
        env_file = f"{CONFIG_DIR}/sync.env"
        clean_env = {k: v for k, v in env.items() if v}
        out.append(Planned(env_file, _render_device("sync.env", env=clean_env).encode(), 0o640))
        unit = _render_device(
            "edgefleet-sync.service",
            **context,
            env_file=env_file,
            agent_command=args.agent_command,
        )
        out.append(Planned(f"{UNIT_DIR}/edgefleet-sync.service", unit.encode()))
        return out
    sync_pod = _sync_pod_manifest(args, config, env)
    set_dir = config.state_dir / "sets" / PROVISIONED_SET
    manifest = set_dir / layout.manifest_file_name(layout.SYNC_POD_NAME)
    out.append(Planned(str(manifest), sync_pod.encode()))
    link = os.path.relpath(set_dir, config.manifest_dir.parent)
    out.append(Planned(str(config.manifest_dir), link=link))
    unit = _render_device(
        "kubelet.service", **context, kubelet=args.kubelet, cri_endpoint=args.cri_endpoint
    )
    out.append(Planned(f"{UNIT_DIR}/kubelet.service", unit.encode()))
    return out


def _sync_pod_manifest(args: argparse.Namespace, config, env: dict[str, str]) -> str:  # type: ignore[no-untyped-def]
    from edgefleet.cloud.render import PackagedTemplates, SyncPodSpec, Templates, render_sync_pod

    if not args.sync_image:
        raise ConfigError("--sync-image is required for the kubelet runtime (REPO@sha256:...)")
    try:
        ref = refs.parse(args.sync_image)
    except InvalidInput as exc:
        raise ConfigError(f"--sync-image: {exc}") from exc
    if not ref.digest:
        raise ConfigError(
            f"--sync-image {args.sync_image} is not pinned by digest: use REPO@sha256:..."
        )
    spec = SyncPodSpec(
        image=ref,
        bucket=config.bucket,
        arch=config.arch,
        channel=config.channel,
        manifest_dir=str(config.manifest_dir),
        state_dir=str(config.state_dir),
        poll_seconds=float(env["POLL_SECONDS"]),
        runtime=config.runtime,
        allowed_registries=env["ALLOWED_REGISTRIES"],
        trusted_keys=env["TRUSTED_KEYS"],
    )
    text = render_sync_pod(Templates([PackagedTemplates()]), spec)
    return text


def _render_device(name: str, **context: object) -> str:
    source = importlib.resources.files("device").joinpath(f"templates/{name}.j2").read_text()
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
    )
    return env.from_string(source).render(**context)


def apply(planned: list[Planned], root: Path, *, dry_run: bool) -> list[tuple[str, str]]:
    """Write what differs below ``root``; (state, device path) per item."""
    results = []
    for item in planned:
        target = root / item.path.lstrip("/")
        if item.link is not None:
            state = _link_state(target, item.link)
            if state == "write" and not dry_run:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.provision")
                tmp.unlink(missing_ok=True)
                os.symlink(item.link, tmp)
                os.rename(tmp, target)
        else:
            try:
                current = target.read_bytes()
            except FileNotFoundError:
                current = None
            except IsADirectoryError as exc:
                raise ConfigError(
                    f"{target} is a directory: remove it or pick another path"
                ) from exc
            state = "unchanged" if current == item.data else "write"
            if state == "write" and not dry_run:
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(target, item.data, item.mode)
        if state == "write":
            state = "would write" if dry_run else "written"
        results.append((state, item.path))
    return results


def _link_state(target: Path, link: str) -> str:
    if target.is_symlink():
        # Once the agent has switched the folder to a newer set, it owns the link.
        return "unchanged" if os.readlink(target) == link else "managed by the agent"
    if target.exists():
        return "managed by the agent" if target.is_dir() else "write"
    return "write"


def _handle(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise ConfigError(f"--root {root} is not a directory")
    try:
        planned = plan(args)
    except OSError as exc:
        raise ConfigError(f"provisioning failed: {exc}") from exc
    try:
        results = apply(planned, root, dry_run=args.dry_run)
    except (OSError, EdgefleetError) as exc:
        raise ConfigError(f"cannot write below {root}: {exc}") from exc
    for (state, path), item in zip(results, planned, strict=True):
        print(f"{state:>20}  {path}" + (f" -> {item.link}" if item.link else ""))
        if args.dry_run and state == "would write" and item.link is None:
            sys.stdout.write("".join(f"    | {ln}\n" for ln in item.data.decode().splitlines()))
    written = sum(1 for s, _ in results if s in ("written", "would write"))
    verb = "would write" if args.dry_run else "wrote"
    print(
        f"provisioned {args.device_id} for {args.arch}/{args.channel} ({args.runtime}): "
        f"{verb} {written}, {len(results) - written} unchanged"
    )
    if not args.dry_run and written:
        unit = "kubelet" if args.runtime == "kubelet" else "edgefleet-sync"
        print(f"next: systemctl daemon-reload && systemctl enable --now {unit}")
    return 0

"""``edgefleet provision``: prepare one device for one arch + channel, idempotently.

Writes what a device needs before its first poll: the device id, the ROOT public keys
(``--root-keys``, into ``/etc/edgefleet/root-keys/``: they authorise the online signing
keys through ``trust/root.json``) and any directly trusted public keys under
``/etc/edgefleet``, and either (kubelet runtime) a KubeletConfiguration
(``staticPodPath`` = ``MANIFEST_DIR``, ``fileCheckFrequency``, node API on loopback with
anonymous auth off, x509 client certificates of a device-local CA, read-only port off),
``kubelet.service`` running ``kubelet --config``, the device PKI (kubelet's serving
certificate; the agent's client certificate under ``/etc/edgefleet/kubelet``, which the
agent uses to read ``/pods``) and the sync pod's manifest in ``MANIFEST_DIR`` (a real
directory, created before kubelet starts), or (podman runtime) an
``edgefleet-sync.service`` unit running the agent with ``/etc/edgefleet/sync.env``.
Files whose content is already right are left alone ("unchanged"), so provisioning can
be re-run; ``--dry-run`` prints what would be written; ``--root`` writes below a folder.
"""

from __future__ import annotations

import argparse
import importlib.resources
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2

from edgefleet.core import layout, refs, signing, trust
from edgefleet.core.errors import ConfigError, EdgefleetError, InvalidInput
from edgefleet.core.fsutil import atomic_write
from edgefleet.operator import kubelet_pki

SYNC_POD_TEMPLATE = "sync-pod"
PROVISIONED_SET = "provisioned"
UNIT_DIR = "/etc/systemd/system"
CONFIG_DIR = "/etc/edgefleet"
DEFAULT_AGENT = "/usr/bin/python3 -m sync_pod"
DEFAULT_KUBELET = "/usr/bin/kubelet"
DEFAULT_CRI = "unix:///run/containerd/containerd.sock"
# kubelet's own files (config, serving certificate, client CA): not mounted into any pod.
KUBELET_DIR = "/etc/kubernetes/kubelet"
# The agent's kubelet credentials (client certificate + the CA to verify kubelet): the
# sync pod mounts /etc/edgefleet read-only; KUBELET_CREDENTIALS defaults to this folder.
AGENT_KUBELET_DIR = f"{CONFIG_DIR}/kubelet"
# kubelet's relist: a backstop for a missed or lost inotify watch (kubelet's default: 20s).
DEFAULT_FILE_CHECK = "5s"


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
        "--root-keys",
        default="",
        help="comma-separated ROOT public key files (PEM) to install: they authorise the "
        "online signing keys through trust/root.json (see docs/security.md)",
    )
    p.add_argument(
        "--insecure-allow-unsigned",
        action="store_true",
        help="development only (podman runtime): accept unsigned sets",
    )
    p.add_argument(
        "--sync-image",
        default="",
        help="the sync agent image pinned by digest (REPO@sha256:...; kubelet runtime)",
    )
    p.add_argument("--agent-command", default=DEFAULT_AGENT, help="podman runtime: ExecStart")
    p.add_argument("--kubelet", default=DEFAULT_KUBELET, help="kubelet binary")
    p.add_argument("--cri-endpoint", default=DEFAULT_CRI, help="kubelet's container runtime")
    p.add_argument(
        "--file-check-frequency",
        default=DEFAULT_FILE_CHECK,
        help="kubelet's relist of the manifest folder (a backstop: its inotify watch sees "
        "each apply at once), e.g. 20s",
    )
    p.add_argument(
        "--kubeconfig",
        default="",
        help="only for a kubelet that is a node of a cluster: its kubeconfig (then the node "
        "API uses webhook authentication and authorization)",
    )
    p.add_argument("--root", default="/", help="write below this folder (images, tests)")
    p.add_argument("--dry-run", action="store_true", help="print what would be written")
    p.set_defaults(handler=_handle)


@dataclass(frozen=True)
class Planned:
    """One file provisioning wants on the device (mode 0600: a secret, never printed)."""

    path: str  # absolute path on the device
    data: bytes = b""
    mode: int = 0o644

    @property
    def secret(self) -> bool:
        return not self.mode & 0o077


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
    roots = [k.strip() for k in getattr(args, "root_keys", "").split(",") if k.strip()]
    root_loaded = [signing.load_public_key(k) for k in roots]
    root_installed = [f"{trust.DEFAULT_ROOT_KEYS_DIR}/{signing.key_id(k)}.pub" for k in root_loaded]
    local_env = _trust_env(args, root_installed)
    config = from_env({**env, **local_env, "TRUSTED_KEYS": ",".join(keys),
                       "ROOT_KEYS": ",".join(roots)})  # fmt: skip
    out = [Planned(f"{CONFIG_DIR}/device-id", (config.device_id + "\n").encode())]
    out += [
        Planned(path, signing.public_pem(key))
        for path, key in zip([*installed, *root_installed], [*loaded, *root_loaded], strict=True)
    ]
    context = {
        "device_id": config.device_id,
        "arch": config.arch,
        "channel": config.channel,
        "manifest_dir": str(config.manifest_dir),
    }
    if config.runtime == "podman":
        env_file = f"{CONFIG_DIR}/sync.env"
        clean_env = {k: v for k, v in {**env, **local_env}.items() if v}
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
    # A real directory (not a symlink): kubelet's inotify watch must stay on it.
    manifest = config.manifest_dir / layout.manifest_file_name(layout.SYNC_POD_NAME)
    out.append(Planned(str(manifest), sync_pod.encode()))
    out += _kubelet_files(args, context, Path(args.root))
    return out


def _trust_env(args: argparse.Namespace, root_installed: list[str]) -> dict[str, str]:
    """Trust settings that only the device's own config holds (never a set's sync pod)."""
    insecure = bool(getattr(args, "insecure_allow_unsigned", False))
    if insecure and args.runtime != "podman":
        raise ConfigError(
            "--insecure-allow-unsigned works only with --runtime podman (a kubelet-run sync "
            "pod cannot carry trust settings): provision a root key with --root-keys"
        )
    out = {"ROOT_KEYS": ",".join(root_installed)} if root_installed else {}
    if insecure:
        out[trust.INSECURE_ENV] = "1"
    return out


def _kubelet_files(args: argparse.Namespace, context: dict[str, str], root: Path) -> list[Planned]:
    """KubeletConfiguration, unit, and the device PKI (kept when already provisioned)."""
    if not _DURATION.fullmatch(args.file_check_frequency):
        raise ConfigError(
            f"--file-check-frequency {args.file_check_frequency!r}: use a duration like 20s"
        )
    for flag in ("kubelet", "cri_endpoint", "kubeconfig"):
        value = str(getattr(args, flag))
        if any(ch.isspace() or ch in "\"'\\$`" for ch in value):
            raise ConfigError(f"--{flag.replace('_', '-')} {value!r} has spaces or quotes")
    config_file = f"{KUBELET_DIR}/config.yaml"
    kubelet_context = {
        **context,
        "kubelet_dir": KUBELET_DIR,
        "file_check_frequency": args.file_check_frequency,
        "cri_endpoint": args.cri_endpoint,
        "kubeconfig": args.kubeconfig,
    }
    out = [
        Planned(config_file, _render_device("kubelet-config.yaml", **kubelet_context).encode()),
        Planned(
            f"{UNIT_DIR}/kubelet.service",
            _render_device(
                "kubelet.service", **kubelet_context, kubelet=args.kubelet, config_file=config_file
            ).encode(),
        ),
    ]
    pki = _device_pki(root, context["device_id"])
    out += [
        Planned(f"{KUBELET_DIR}/client-ca.crt", pki[kubelet_pki.CA_FILE]),
        Planned(f"{KUBELET_DIR}/kubelet.crt", pki[kubelet_pki.KUBELET_CERT]),
        Planned(f"{KUBELET_DIR}/kubelet.key", pki[kubelet_pki.KUBELET_KEY], 0o600),
        Planned(f"{AGENT_KUBELET_DIR}/ca.crt", pki[kubelet_pki.CA_FILE]),
        Planned(f"{AGENT_KUBELET_DIR}/agent.crt", pki[kubelet_pki.AGENT_CERT]),
        Planned(f"{AGENT_KUBELET_DIR}/agent.key", pki[kubelet_pki.AGENT_KEY], 0o600),
    ]
    return out


_DURATION = re.compile(r"[1-9][0-9]{0,5}(ms|s|m)")
_PKI_PATHS = {
    kubelet_pki.CA_FILE: f"{AGENT_KUBELET_DIR}/ca.crt",
    kubelet_pki.KUBELET_CERT: f"{KUBELET_DIR}/kubelet.crt",
    kubelet_pki.KUBELET_KEY: f"{KUBELET_DIR}/kubelet.key",
    kubelet_pki.AGENT_CERT: f"{AGENT_KUBELET_DIR}/agent.crt",
    kubelet_pki.AGENT_KEY: f"{AGENT_KUBELET_DIR}/agent.key",
}


def _device_pki(root: Path, device_id: str) -> dict[str, bytes]:
    """The PKI already on the device (re-provisioning keeps it), else a fresh one."""
    existing: dict[str, bytes] = {}
    for name, path in _PKI_PATHS.items():
        try:
            existing[name] = (root / path.lstrip("/")).read_bytes()
        except FileNotFoundError:
            return kubelet_pki.generate(device_id).files
    return existing


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
        try:
            current = target.read_bytes()
        except FileNotFoundError:
            current = None
        except IsADirectoryError as exc:
            raise ConfigError(f"{target} is a directory: remove it or pick another path") from exc
        state = "unchanged" if current == item.data else "write"
        if state == "write" and not dry_run:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, item.data, item.mode)
        if state == "write":
            state = "would write" if dry_run else "written"
        results.append((state, item.path))
    return results


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
        print(f"{state:>20}  {path}")
        if args.dry_run and state == "would write" and item.secret:
            print("    | (a private key: not shown)")
        elif args.dry_run and state == "would write":
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

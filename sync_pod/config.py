"""The agent's configuration, parsed and validated once from the environment at start.

Every problem is a :class:`~edgefleet.core.errors.ConfigError` with one line naming the variable
and the fix, so a misconfigured device fails at boot instead of half-working.
"""

from __future__ import annotations

import os
import posixpath
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.core import layout, mqtt, policy, signing, trust
from edgefleet.core.errors import ConfigError, InvalidInput
from sync_pod import pace

RUNTIMES = ("kubelet", "podman")
DEFAULT_MANIFEST_DIR = "/opt/device/pods"
DEFAULT_STATE_DIR = "/var/lib/edgefleet"
DEFAULT_POLL_SECONDS = 60.0
# With an MQTT wake-up a poll is only the fallback for a lost message (docs/operations.md).
DEFAULT_POLL_SECONDS_WITH_MQTT = 600.0
DEFAULT_HEALTH_TIMEOUT = 120.0
DEFAULT_STATUS_SECONDS = 900.0
# How often a podman device looks for pods of its applied set that went down behind its
# back (sync_pod.heal; kubelet restarts its static pods itself).
DEFAULT_HEAL_SECONDS = 60.0
# The window of the model-quality summary in each status (docs/rollouts.md).
DEFAULT_METRICS_SECONDS = 60.0
# Public keys and the agent's env file live here on a device (see provisioning).
CONFIG_DIR = "/etc/edgefleet"
PODMAN_SOCKET_DIR = "/run/podman"
DEVICE_ID_FILE = f"{CONFIG_DIR}/device-id"
# kubelet's node API, read with the agent's client certificate (see docs/device.md).
DEFAULT_KUBELET_API = "https://127.0.0.1:10250"
KUBELET_CREDENTIALS_DIR = f"{CONFIG_DIR}/kubelet"


@dataclass(frozen=True)
class Config:
    bucket: str
    arch: str
    channel: str
    device_id: str
    manifest_dir: Path = Path(DEFAULT_MANIFEST_DIR)
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    poll_seconds: float = DEFAULT_POLL_SECONDS
    runtime: str = "kubelet"
    allowed_registries: tuple[str, ...] = ()
    trusted_keys: tuple[Ed25519PublicKey, ...] = ()
    trusted_key_paths: tuple[str, ...] = ()
    root_keys: tuple[Ed25519PublicKey, ...] = ()
    root_key_paths: tuple[str, ...] = ()
    insecure_unsigned: bool = False
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    status_seconds: float = DEFAULT_STATUS_SECONDS
    metrics_seconds: float = DEFAULT_METRICS_SECONDS
    tls_verify: bool = True
    insecure_registries: tuple[str, ...] = ()
    podman: str = "podman"
    kubelet_api: str | None = DEFAULT_KUBELET_API
    kubelet_credentials: Path = Path(KUBELET_CREDENTIALS_DIR)
    mqtt: mqtt.BrokerTarget | None = None
    poll_min_seconds: float = pace.DEFAULT_MIN_SECONDS
    poll_max_seconds: float = pace.DEFAULT_MAX_SECONDS
    handover_ports: tuple[int, ...] = ()  # HANDOVER_PORTS: switch these by hand-over
    wake_spread_seconds: float = 0.0  # WAKE_SPREAD_SECONDS: spread the fleet's wake-ups
    heal_seconds: float = 0.0  # HEAL_SECONDS: look for pods down this often (0: off)
    v1pod_check: bool = False  # V1POD_CHECK: also run the V1Pod model check (a child)
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def set_object(self) -> str:
        return layout.set_object(self.arch, self.channel)

    @property
    def status_object(self) -> str:
        return layout.status_object(self.device_id)

    def sync_pod_paths(self) -> tuple[str, ...]:
        return policy.sync_pod_host_paths(str(self.manifest_dir), str(self.state_dir))

    def pace(self) -> pace.Pace:
        return pace.Pace(self.poll_seconds, self.poll_min_seconds, self.poll_max_seconds)

    def policy(self) -> policy.Policy:
        return policy.Policy.for_device(self.allowed_registries, self.sync_pod_paths())

    def trust(self) -> trust.DeviceTrust:
        """The device's trust anchors: the provisioned root keys (then ``TRUSTED_KEYS`` is
        ignored, so a revoked online key cannot stay trusted), else ``TRUSTED_KEYS``."""
        return trust.DeviceTrust(
            root_keys=self.root_keys,
            direct_keys=() if self.root_keys else self.trusted_keys,
            insecure=self.insecure_unsigned,
        )


def from_env(env: Mapping[str, str] | None = None) -> Config:
    """Build the config from ``env`` (default: ``os.environ``); raise ConfigError."""
    env = dict(os.environ if env is None else env)
    bucket = env.get("BUCKET", "").strip()
    if not bucket:
        raise ConfigError("BUCKET is not set: name the deploy bucket, e.g. BUCKET=edgefleet-deploy")
    arch = _checked("ARCH", env.get("ARCH") or os.uname().machine, layout.check_arch)
    channel_value = (env.get("CHANNEL") or "").strip()
    track_value = (env.get("TRACK") or "").strip()
    if channel_value and track_value and channel_value != track_value:
        raise ConfigError(
            f"CHANNEL={channel_value} and TRACK={track_value} disagree: set only CHANNEL"
        )
    if not (channel_value or track_value):
        raise ConfigError("CHANNEL is not set: e.g. CHANNEL=stable (TRACK is accepted too)")
    channel = _checked("CHANNEL", channel_value or track_value, layout.check_channel)
    device_id = _checked("DEVICE_ID", _device_id(env), layout.check_device_id)
    manifest_dir = _abs_path("MANIFEST_DIR", env.get("MANIFEST_DIR") or DEFAULT_MANIFEST_DIR)
    state_dir = _abs_path("STATE_DIR", env.get("STATE_DIR") or DEFAULT_STATE_DIR)
    if _inside(manifest_dir, state_dir) or _inside(state_dir, manifest_dir):
        raise ConfigError(
            f"MANIFEST_DIR {manifest_dir} and STATE_DIR {state_dir} must not contain each other"
        )
    runtime = (env.get("RUNTIME") or "kubelet").strip()
    if runtime not in RUNTIMES:
        raise ConfigError(f"RUNTIME={runtime!r} is unknown: use one of {', '.join(RUNTIMES)}")
    key_paths = tuple(p.strip() for p in (env.get("TRUSTED_KEYS") or "").split(",") if p.strip())
    trusted = signing.load_public_keys(",".join(key_paths))
    root_paths = _root_key_paths(env)
    root_keys = signing.load_public_keys(",".join(root_paths))
    registries = policy.parse_registries(env.get("ALLOWED_REGISTRIES"))
    insecure = tuple(
        h.strip()
        for h in (env.get("INSECURE_REGISTRIES") or env.get("REGISTRIES_INSECURE") or "").split(",")
        if h.strip()
    )
    target = _mqtt_target(env)
    poll_default = DEFAULT_POLL_SECONDS_WITH_MQTT if target else DEFAULT_POLL_SECONDS
    poll_min = _seconds(env, "POLL_MIN_SECONDS", pace.DEFAULT_MIN_SECONDS, minimum=0.05)
    poll_max = _seconds(env, "POLL_MAX_SECONDS", pace.DEFAULT_MAX_SECONDS, minimum=poll_min)
    return Config(
        bucket=bucket,
        arch=arch,
        channel=channel,
        device_id=device_id,
        manifest_dir=manifest_dir,
        state_dir=state_dir,
        poll_seconds=_seconds(env, "POLL_SECONDS", poll_default, minimum=0.05),
        runtime=runtime,
        allowed_registries=registries,
        trusted_keys=trusted,
        trusted_key_paths=key_paths,
        root_keys=root_keys,
        root_key_paths=root_paths,
        insecure_unsigned=_bool(env, trust.INSECURE_ENV, False),
        health_timeout=_seconds(env, "HEALTH_TIMEOUT", DEFAULT_HEALTH_TIMEOUT, minimum=0.1),
        status_seconds=_seconds(env, "STATUS_SECONDS", DEFAULT_STATUS_SECONDS, minimum=0.1),
        metrics_seconds=_seconds(env, "METRICS_SECONDS", DEFAULT_METRICS_SECONDS, minimum=0.5),
        tls_verify=_bool(env, "TLS_VERIFY", True),
        insecure_registries=insecure,
        podman=(env.get("PODMAN") or "podman").strip(),
        kubelet_api=_kubelet_api(env.get("KUBELET_API")),
        kubelet_credentials=_abs_path(
            "KUBELET_CREDENTIALS", env.get("KUBELET_CREDENTIALS") or KUBELET_CREDENTIALS_DIR
        ),
        mqtt=target,
        poll_min_seconds=poll_min,
        poll_max_seconds=poll_max,
        handover_ports=_handover_ports(env, runtime),
        wake_spread_seconds=_seconds(env, "WAKE_SPREAD_SECONDS", 0.0, minimum=0.0),
        heal_seconds=_heal_seconds(env, runtime),
        v1pod_check=_bool(env, "V1POD_CHECK", False),
    )


def _root_key_paths(env: Mapping[str, str]) -> tuple[str, ...]:
    """``ROOT_KEYS`` (comma-separated PEM paths), else every ``*.pub`` provisioning put in
    ``/etc/edgefleet/root-keys`` (a kubelet-run sync pod cannot be told: a set never
    carries trust settings, see edgefleet.core.policy.TRUST_ENV)."""
    value = env.get("ROOT_KEYS")
    if value is None:
        folder = Path(env.get("ROOT_KEYS_DIR") or trust.DEFAULT_ROOT_KEYS_DIR)
        try:
            return tuple(str(p) for p in sorted(folder.glob("*.pub")))
        except OSError:
            return ()
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _kubelet_api(value: str | None) -> str | None:
    """KUBELET_API: kubelet's node API (https only), or "off" to gate on probes alone."""
    raw = (value or "").strip() or DEFAULT_KUBELET_API
    if raw == "off":
        return None
    if not raw.startswith("https://") or any(ch.isspace() for ch in raw):
        raise ConfigError(f"KUBELET_API={raw!r} must be an https:// URL (or off)")
    return raw.rstrip("/")


def _heal_seconds(env: Mapping[str, str], runtime: str) -> float:
    """HEAL_SECONDS: how often a podman device replays pods of its applied set that went
    down behind its back (default 60; 0 turns it off; sync_pod.heal). kubelet restarts
    its static pods itself, so a kubelet device never heals (0)."""
    default = DEFAULT_HEAL_SECONDS if runtime == "podman" else 0.0
    value = _seconds(env, "HEAL_SECONDS", default, minimum=0.0)
    if value and runtime != "podman":
        raise ConfigError("HEAL_SECONDS is for RUNTIME=podman: kubelet restarts its pods itself")
    if 0 < value < 1:
        raise ConfigError(f"HEAL_SECONDS={value:g} must be 0 (off) or at least 1 second")
    return value


def _handover_ports(env: Mapping[str, str], runtime: str) -> tuple[int, ...]:
    """HANDOVER_PORTS: loopback ports (e.g. 5000) whose pods are switched by hand-over
    (device.handover); the agent then listens on them itself. Podman runtime only."""
    raw = [p.strip() for p in (env.get("HANDOVER_PORTS") or "").split(",") if p.strip()]
    if raw and runtime != "podman":
        raise ConfigError("HANDOVER_PORTS needs RUNTIME=podman (docs/device.md, Hand-over)")
    ports = []
    for item in raw:
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ConfigError(f"HANDOVER_PORTS: {item!r} is not a TCP port, e.g. 5000")
        ports.append(int(item))
    return tuple(dict.fromkeys(ports))


def _mqtt_target(env: Mapping[str, str]) -> mqtt.BrokerTarget | None:
    """MQTT_URL (+ MQTT_CA_FILE): the wake-up broker, or None (poll only)."""
    target = mqtt.target_from_env(env)
    if target is not None and target.ca_file and not Path(target.ca_file).is_file():
        raise ConfigError(f"MQTT_CA_FILE={target.ca_file} does not exist: fix the path")
    return target


def _device_id(env: Mapping[str, str]) -> str:
    """DEVICE_ID, else the file provisioning wrote (the channel's shared sync pod manifest
    cannot carry a per-device id), else the host name."""
    if env.get("DEVICE_ID"):
        return env["DEVICE_ID"]
    path = Path(env.get("DEVICE_ID_FILE") or DEVICE_ID_FILE)
    try:
        return path.read_text().strip() or socket.gethostname()
    except FileNotFoundError:
        return socket.gethostname()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}: fix it or set DEVICE_ID") from exc


def _checked(var: str, value: str, check: object) -> str:
    try:
        return check(value.strip())  # type: ignore[operator]
    except InvalidInput as exc:
        raise ConfigError(f"{var}: {exc}") from exc


def _abs_path(var: str, value: str) -> Path:
    value = value.strip()
    if not value.startswith("/"):
        raise ConfigError(f"{var}={value!r} must be an absolute path")
    norm = posixpath.normpath(value)
    if norm == "/":
        raise ConfigError(f"{var} must not be /")
    return Path(norm)


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _seconds(env: Mapping[str, str], var: str, default: float, *, minimum: float) -> float:
    raw = (env.get(var) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a number of seconds") from None
    if not value >= minimum or value == float("inf"):
        raise ConfigError(f"{var}={raw!r} must be at least {minimum} seconds")
    return value


def _bool(env: Mapping[str, str], var: str, default: bool) -> bool:
    raw = (env.get(var) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{var}={raw!r} must be true or false")

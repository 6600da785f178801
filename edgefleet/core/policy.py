"""The fleet-safety policy: one check, run where manifests are rendered and on devices.

A manifest passes when it is a single v1 Pod (as the ``kubernetes`` client models read
it) whose images are all pinned by sha256 digest and come from an allowed registry,
which asks for no privileged container, no hostPID/hostIPC, no hostPath outside the
paths allowed for that pod, and which sets cpu and memory limits on every container.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from edgefleet.core import layout, refs
from edgefleet.core.errors import InvalidInput, InvalidReference, PolicyViolation

MAX_MANIFEST_BYTES = 256 * 1024
ANY_POD = "*"
# Host paths the sync pod mounts by default (see manifests/sync-pod.yaml.j2). The manifest
# folder is a symlink the agent swaps, so the pod mounts its parent, never the link itself.
SYNC_POD_HOST_PATHS: tuple[str, ...] = (
    "/opt/device",
    "/var/lib/edgefleet",
    "/etc/edgefleet",
    "/run/podman",
)
# Host paths any pod may mount: Edge TPU devices and the telemetry spool.
WORKLOAD_HOST_PATHS: tuple[str, ...] = ("/dev/apex_0", "/dev/bus/usb", "/var/spool/edgefleet")
_DANGEROUS_CAPABILITIES = frozenset({"ALL", "SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE", "SYS_RAWIO"})

ModelCheck = Callable[[Mapping[str, str]], Mapping[str, str | None]]
"""The V1Pod model check of a batch: key -> manifest text in, key -> error message (None
when valid) out. :func:`model_errors` runs it in-process; a device runs it in a child
process (:mod:`device.podcheck`), as the kubernetes models cost ~40 MiB resident."""


@dataclass(frozen=True)
class Policy:
    """What a manifest may ask for.

    ``allowed_registries``: ``host[:port][/path]`` prefixes; ``None`` allows any registry
    (the control plane's default), an empty tuple allows none.
    ``host_paths``: pod name (or ``"*"``) -> host path prefixes that pod may mount.
    """

    allowed_registries: tuple[str, ...] | None = None
    host_paths: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            layout.SYNC_POD_NAME: SYNC_POD_HOST_PATHS,
            ANY_POD: WORKLOAD_HOST_PATHS,
        }
    )
    require_limits: bool = True

    @classmethod
    def for_device(
        cls,
        allowed_registries: tuple[str, ...] | None,
        sync_pod_paths: tuple[str, ...] = SYNC_POD_HOST_PATHS,
        require_limits: bool = True,
    ) -> Policy:
        return cls(
            allowed_registries=allowed_registries,
            host_paths={layout.SYNC_POD_NAME: sync_pod_paths, ANY_POD: WORKLOAD_HOST_PATHS},
            require_limits=require_limits,
        )


def sync_pod_host_paths(manifest_dir: str, state_dir: str) -> tuple[str, ...]:
    """What a device's own sync pod may mount: the defaults plus this device's folders
    (the manifest folder's parent, where the agent swaps the symlink, and its state)."""
    parent = posixpath.dirname(posixpath.normpath(manifest_dir)) or "/"
    return tuple(dict.fromkeys((*SYNC_POD_HOST_PATHS, parent, posixpath.normpath(state_dir))))


def parse_registries(value: str | None) -> tuple[str, ...] | None:
    """Parse ``ALLOWED_REGISTRIES``; unset/empty -> ``None`` (caller decides what that means)."""
    if value is None or not value.strip():
        return None
    return tuple(p.strip().rstrip("/") for p in value.split(",") if p.strip())


def load_pod(text: str | bytes, *, model_check: bool = True) -> dict[str, Any]:
    """Parse one YAML document as a v1 Pod; raise :class:`InvalidInput` otherwise.
    ``model_check=False`` leaves out the kubernetes V1Pod model check (the caller runs
    it elsewhere, see :func:`check_manifests`)."""
    data = text.encode() if isinstance(text, str) else text
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidInput(f"manifest is {len(data)} bytes, over {MAX_MANIFEST_BYTES}")
    try:
        docs = [d for d in yaml.safe_load_all(data) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidInput(f"manifest is not valid YAML: {_one_line(exc)}") from exc
    if len(docs) != 1:
        raise InvalidInput(f"manifest must hold exactly one YAML document, found {len(docs)}")
    pod = docs[0]
    if not isinstance(pod, dict):
        raise InvalidInput("manifest is not a YAML mapping")
    if pod.get("apiVersion") != "v1" or pod.get("kind") != "Pod":
        raise InvalidInput(
            f"manifest is apiVersion={pod.get('apiVersion')!r} kind={pod.get('kind')!r}; "
            "only v1 Pods run on devices"
        )
    if model_check:
        _check_model(pod)
    return pod


def violations(pod: Mapping[str, Any], policy: Policy) -> list[str]:
    """Every way ``pod`` breaks ``policy``, as readable sentences (empty when it passes)."""
    out: list[str] = []
    name = str((pod.get("metadata") or {}).get("name") or "")
    try:
        layout.check_name(name)
    except InvalidInput as exc:
        out.append(f"metadata.name: {exc}")
    spec = pod.get("spec") or {}
    for flag in ("hostPID", "hostIPC"):
        if spec.get(flag):
            out.append(f"spec.{flag} is not allowed")
    containers = [("containers", c) for c in spec.get("containers") or []]
    containers += [("initContainers", c) for c in spec.get("initContainers") or []]
    if not spec.get("containers"):
        out.append("spec.containers is empty")
    for kind, c in containers:
        where = f"{kind}[{c.get('name', '?')}]"
        out.extend(_container_violations(c, where, policy, kind == "containers"))
    allowed_paths = policy.host_paths.get(name, ()) + policy.host_paths.get(ANY_POD, ())
    for volume in spec.get("volumes") or []:
        host_path = (volume.get("hostPath") or {}).get("path")
        if host_path is None:
            continue
        if not _path_allowed(str(host_path), allowed_paths):
            out.append(f"volume {volume.get('name', '?')}: hostPath {host_path} is not allowed")
    return out


def check_manifest(
    text: str | bytes,
    policy: Policy,
    *,
    expected_name: str | None = None,
    model_check: bool = True,
) -> dict[str, Any]:
    """Parse and check a manifest; raise with every violation listed. Returns the Pod dict."""
    pod = load_pod(text, model_check=model_check)
    _raise_violations(pod, policy, expected_name)
    return pod


def check_manifests(
    manifests: Mapping[str, str],
    policy: Policy,
    *,
    expected_names: Mapping[str, str] | None = None,
    model_check: ModelCheck | None = None,
) -> dict[str, dict[str, Any] | InvalidInput]:
    """:func:`check_manifest` over a batch, in order, with the V1Pod model check of the
    whole batch done by ONE call of ``model_check`` (None: in-process).

    Returns key -> Pod dict or the error :func:`check_manifest` would raise, up to and
    including the first failing manifest, exactly as a loop stopping at the first error.
    ``model_check`` runs only on the manifests whose verdict depends on it, and not at all
    when the first manifest already fails a cheaper check. Its own errors (e.g.
    TransientError when a child process cannot run) propagate.
    """
    names = expected_names or {}
    loaded: dict[str, dict[str, Any] | InvalidInput] = {}
    needs_model: dict[str, str] = {}
    for key, text in manifests.items():
        try:
            pod = load_pod(text, model_check=False)
        except InvalidInput as exc:
            loaded[key] = exc
            break
        loaded[key] = pod
        needs_model[key] = text
        try:
            _raise_violations(pod, policy, names.get(key))
        except PolicyViolation:
            break  # a model error in this same manifest would still come first
    errors = (model_check or model_errors)(needs_model) if needs_model else {}
    out: dict[str, dict[str, Any] | InvalidInput] = {}
    for key, pod in loaded.items():
        if key in needs_model and errors.get(key) is not None:
            out[key] = InvalidInput(str(errors[key]))
            return out
        if isinstance(pod, InvalidInput):
            out[key] = pod
            return out
        try:
            _raise_violations(pod, policy, names.get(key))
        except PolicyViolation as exc:
            out[key] = exc
            return out
        out[key] = pod
    return out


def model_errors(manifests: Mapping[str, str]) -> dict[str, str | None]:
    """The in-process :data:`ModelCheck`: key -> why the manifest is not a valid v1 Pod
    (any :func:`load_pod` error), or None."""
    out: dict[str, str | None] = {}
    for key, text in manifests.items():
        try:
            load_pod(text)
        except InvalidInput as exc:
            out[key] = str(exc)
        else:
            out[key] = None
    return out


def _raise_violations(pod: Mapping[str, Any], policy: Policy, expected_name: str | None) -> None:
    found = violations(pod, policy)
    name = str((pod.get("metadata") or {}).get("name") or "")
    if expected_name is not None and name != expected_name:
        found.append(f"metadata.name {name!r} must be {expected_name!r} (its file name)")
    if found:
        raise PolicyViolation(found, name)


def pod_images(pod: Mapping[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    return [
        str(c.get("image"))
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
    ]


def _container_violations(
    c: Mapping[str, Any], where: str, policy: Policy, needs_limits: bool
) -> list[str]:
    out: list[str] = []
    image = c.get("image")
    try:
        ref = refs.parse(str(image or ""))
    except InvalidReference as exc:
        out.append(f"{where}: {exc}")
    else:
        if not (ref.digest and ref.digest.startswith("sha256:")):
            out.append(f"{where}: image {image} is not pinned by sha256 digest")
        if policy.allowed_registries is not None and not refs.registry_allows(
            ref, policy.allowed_registries
        ):
            allowed = ", ".join(policy.allowed_registries) or "none"
            out.append(f"{where}: registry of {ref.name} is not allowed (allowed: {allowed})")
    sc = c.get("securityContext") or {}
    if sc.get("privileged"):
        out.append(f"{where}: privileged is not allowed")
    added = {str(cap).upper() for cap in ((sc.get("capabilities") or {}).get("add") or [])}
    if added & _DANGEROUS_CAPABILITIES:
        out.append(f"{where}: capabilities {sorted(added & _DANGEROUS_CAPABILITIES)} not allowed")
    if policy.require_limits and needs_limits:
        limits = (c.get("resources") or {}).get("limits") or {}
        missing = [r for r in ("cpu", "memory") if r not in limits]
        if missing:
            out.append(f"{where}: resources.limits.{'/'.join(missing)} missing")
    return out


def _path_allowed(path: str, allowed: tuple[str, ...]) -> bool:
    if not path.startswith("/") or ".." in path.split("/"):
        return False
    norm = posixpath.normpath(path)
    return any(norm == p or norm.startswith(p.rstrip("/") + "/") for p in allowed)


def _check_model(pod: dict[str, Any]) -> None:
    """Let the kubernetes client's V1Pod model judge field types and required fields."""
    from kubernetes.client import ApiClient  # heavy: imported only when a manifest is read
    from kubernetes.client.exceptions import ApiValueError

    try:
        ApiClient()._ApiClient__deserialize(pod, "V1Pod")  # type: ignore[attr-defined]
    except (ValueError, TypeError, AttributeError, ApiValueError) as exc:
        raise InvalidInput(f"manifest is not a valid v1 Pod: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())

"""The fleet-safety policy: an ALLOWLIST of Pod fields, checked on what the runtime reads.

A manifest is read with the strict loader (:mod:`edgefleet.core.strict_yaml`: no anchors,
aliases, merge keys, duplicate keys, explicit tags or ambiguous scalars), every key is
matched against the fields below (an unknown key, or one differing from a known field only
in case, is a violation: podman's decoder matches keys case-insensitively, so
``Privileged: true`` would reach it), and the values are judged:

- one v1 Pod named by a DNS label (``fullmatch``: no ``name\\n`` tricks);
- images pinned by sha256 digest, from an allowed repository path (``ALLOWED_REGISTRIES``);
- every container drops ``ALL`` capabilities and adds at most :data:`ALLOWED_CAPABILITIES`;
  no privileged, ``allowPrivilegeEscalation: false``, seccomp ``RuntimeDefault``, no
  ``procMount: Unmasked``; no ``runAsUser: 0`` at pod level; no sysctls, no
  ephemeralContainers (unknown fields);
- no host PID/IPC namespaces; the host network only for the sync pod (the one trusted
  system pod, see :class:`Allowance`); workloads publish ports on the device's loopback
  through ``hostPort`` + ``hostIP: 127.0.0.1``;
- volumes: ``emptyDir``, the Edge TPU device nodes, and the pod's OWN spool directory
  ``/var/spool/edgefleet/POD`` with ``type: Directory`` (never the spool root, where one
  workload could plant a symlink to ``/`` for another's mount); the sync pod mounts exactly
  its device's folders;
- cpu and memory limits on every container.

:func:`check_manifest` returns the Pod as read; :func:`canonical` is its canonical JSON,
the exact bytes a device writes for the runtime (kubelet and podman both read JSON), so
what was checked is what runs.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.core import layout, refs, strict_yaml
from edgefleet.core.errors import (
    ConfigError,
    InvalidInput,
    InvalidReference,
    PolicyViolation,
    one_line,
)

MAX_MANIFEST_BYTES = 256 * 1024
ANY_POD = "*"
SPOOL_ROOT = "/var/spool/edgefleet"
# Host paths the sync pod mounts by default (see manifests/sync-pod.yaml.j2). The manifest
# folder is a symlink the agent swaps, so the pod mounts its parent, never the link itself.
# It mounts the spool root to create each workload's own spool directory.
SYNC_POD_HOST_PATHS: tuple[str, ...] = (
    "/opt/device",
    "/var/lib/edgefleet",
    "/etc/edgefleet",
    "/run/podman",
    SPOOL_ROOT,
)
# Device nodes any workload may mount, with the only hostPath type each may have.
DEVICE_HOST_PATHS: Mapping[str, str] = {"/dev/apex_0": "CharDevice", "/dev/bus/usb": "Directory"}
WORKLOAD_HOST_PATHS: tuple[str, ...] = (*DEVICE_HOST_PATHS, SPOOL_ROOT + "/POD")
ALLOWED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
LOOPBACK = "127.0.0.1"
MAX_CONTAINERS = 16
# Device-local settings a set may never carry: trust (see edgefleet.core.trust) and the
# device's identity (a set is shared by a channel's devices; one carrying DEVICE_ID would
# make them all report as one device, hiding or faking it).
TRUST_ENV = frozenset(
    {"EDGEFLEET_INSECURE_ALLOW_UNSIGNED", "ROOT_KEYS", "ROOT_KEYS_DIR", "DEVICE_ID",
     "DEVICE_ID_FILE"}
)  # fmt: skip

ModelCheck = Callable[[Mapping[str, str]], Mapping[str, str | None]]
"""The V1Pod model check of a batch: key -> manifest text in, key -> error message (None
when valid) out. :func:`model_errors` runs it in-process; a device runs it in a child
process (:mod:`device.podcheck`), as the kubernetes models cost ~40 MiB resident."""


@dataclass(frozen=True)
class Allowance:
    """What one pod may ask for beyond the workload baseline (the sync pod's grant)."""

    host_network: bool = False
    host_paths: tuple[str, ...] = ()  # exact host directories (type Directory[OrCreate])


@dataclass(frozen=True)
class Policy:
    """What a manifest may ask for.

    ``allowed_registries``: repository path prefixes (``host[:port]/path``, see
    :func:`parse_registries`); empty allows none, ``None`` skips the check (only for
    callers that check the registry elsewhere).
    ``allowances``: pod name -> :class:`Allowance` (the sync pod's).
    """

    allowed_registries: tuple[str, ...] | None = ()
    allowances: Mapping[str, Allowance] = field(
        default_factory=lambda: {
            layout.SYNC_POD_NAME: Allowance(host_network=True, host_paths=SYNC_POD_HOST_PATHS)
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
            allowances={layout.SYNC_POD_NAME: Allowance(True, tuple(sync_pod_paths))},
            require_limits=require_limits,
        )

    def allowance(self, name: str) -> Allowance:
        return self.allowances.get(name, Allowance())


def sync_pod_host_paths(manifest_dir: str, state_dir: str) -> tuple[str, ...]:
    """What a device's own sync pod may mount: the defaults plus this device's folders
    (the manifest folder's parent, where the agent swaps the symlink, and its state)."""
    parent = posixpath.dirname(posixpath.normpath(manifest_dir)) or "/"
    return tuple(dict.fromkeys((*SYNC_POD_HOST_PATHS, parent, posixpath.normpath(state_dir))))


def spool_dir(pod_name: str) -> str:
    """The one spool directory a workload may mount (the device creates it)."""
    return f"{SPOOL_ROOT}/{layout.check_name(pod_name)}"


# -- ALLOWED_REGISTRIES ------------------------------------------------------------------

# Hosts serving many tenants: an entry must name a repository path this deep below them.
_SHARED_HOST_DEPTH: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"(?:[a-z0-9-]+-)?docker\.pkg\.dev"), 2),  # PROJECT/REPOSITORY
    (re.compile(r"(?:[a-z0-9-]+\.)?gcr\.io"), 1),  # PROJECT
)
_LOCAL_HOST = re.compile(r"(?:localhost|127(?:\.[0-9]{1,3}){3}|\[::1\])(?::[0-9]+)?")


def parse_registries(value: str | None) -> tuple[str, ...]:
    """Parse ``ALLOWED_REGISTRIES``: comma-separated repository path prefixes.

    Unset or empty allows NONE (fail closed). An entry must name a repository path, not a
    whole shared registry: ``europe-docker.pkg.dev`` alone would admit every project's
    images, so Artifact Registry entries need ``HOST/PROJECT/REPOSITORY`` and any other
    remote host at least ``HOST/PATH``. Only a loopback registry (one you run yourself)
    may be named by its host alone. Raises :class:`ConfigError` naming the entry and fix.
    """
    out = []
    for raw in (value or "").split(","):
        entry = raw.strip().rstrip("/")
        if entry:
            out.append(check_registry_entry(entry))
    return tuple(dict.fromkeys(out))


def check_registry_entry(entry: str) -> str:
    host, _, path = entry.partition("/")
    try:
        refs.parse(f"{entry}/x" if not path else entry)
    except InvalidReference as exc:
        raise ConfigError(
            f"ALLOWED_REGISTRIES entry {entry!r} is not HOST[:PORT]/PATH: {exc}"
        ) from exc
    depth = len(path.split("/")) if path else 0
    need = 0 if _LOCAL_HOST.fullmatch(host) else 1
    for pattern, shared_depth in _SHARED_HOST_DEPTH:
        if pattern.fullmatch(host.split(":")[0]):
            need = shared_depth
    if depth < need:
        raise ConfigError(
            f"ALLOWED_REGISTRIES entry {entry!r} admits every repository on {host}: name the "
            f"repository path ({'HOST/PROJECT/REPOSITORY' if need == 2 else 'HOST/PATH'})"
        )
    return entry


def default_allowed(ref: refs.ImageRef) -> str:
    """The narrowest sensible ``ALLOWED_REGISTRIES`` for images beside ``ref`` (the sync
    image): a loopback registry as a whole, else ``ref``'s repository path without its
    last component (Artifact Registry: ``HOST/PROJECT/REPOSITORY``)."""
    if _LOCAL_HOST.fullmatch(ref.registry):
        return ref.registry
    parent = ref.repository.rsplit("/", 1)[0] if "/" in ref.repository else ""
    return check_registry_entry(f"{ref.registry}/{parent}" if parent else ref.name)


# -- reading ------------------------------------------------------------------------------


def load_pod(text: str | bytes, *, model_check: bool = True) -> dict[str, Any]:
    """Read one document strictly as a v1 Pod; raise :class:`InvalidInput` otherwise.
    ``model_check=False`` leaves out the kubernetes V1Pod model check (the caller runs
    it elsewhere, see :func:`check_manifests`)."""
    pod = strict_yaml.load(text, what="manifest", max_bytes=MAX_MANIFEST_BYTES)
    if not isinstance(pod, dict):
        raise InvalidInput("manifest is not a YAML mapping")
    if pod.get("apiVersion") != "v1" or pod.get("kind") != "Pod":
        raise InvalidInput(
            f"manifest is apiVersion={str(pod.get('apiVersion'))[:40]!r} "
            f"kind={str(pod.get('kind'))[:40]!r}; only v1 Pods run on devices"
        )
    _, types = shape_problems(pod)
    if types:
        raise InvalidInput(f"manifest is not a valid v1 Pod: {'; '.join(types[:5])}")
    if model_check:
        _check_model(pod)
    return pod


def canonical(pod: Mapping[str, Any]) -> bytes:
    """The canonical JSON of a checked Pod: what a device writes for its runtime."""
    return strict_yaml.canonical_json(pod)


# -- the allowlist ------------------------------------------------------------------------

STR, INT, BOOL = "string", "integer", "boolean"
QTY = 'quantity, as text ("500m", "1", "0.5", "64Mi"; not negative)'
PORT = "port number (1-65535)"
HOST_PORT = "port number (0-65535; 0: none)"
STRMAP = ("map", STR)
QTYMAP = ("map", QTY)


def _list(item: Any) -> tuple[str, Any]:
    return ("list", item)


_PORT_OR_NAME = (PORT, STR)
_PROBE: dict[str, Any] = {
    "httpGet": {"path": STR, "port": _PORT_OR_NAME, "scheme": STR},
    "tcpSocket": {"port": _PORT_OR_NAME},
    "exec": {"command": _list(STR)},
    "initialDelaySeconds": INT,
    "periodSeconds": INT,
    "timeoutSeconds": INT,
    "failureThreshold": INT,
    "successThreshold": INT,
}
_CONTAINER_SC: dict[str, Any] = {
    "allowPrivilegeEscalation": BOOL,
    "privileged": BOOL,
    "readOnlyRootFilesystem": BOOL,
    "runAsNonRoot": BOOL,
    "runAsUser": INT,
    "runAsGroup": INT,
    "capabilities": {"drop": _list(STR), "add": _list(STR)},
    "seccompProfile": {"type": STR},
    "procMount": STR,
}
_CONTAINER: dict[str, Any] = {
    "name": STR,
    "image": STR,
    "imagePullPolicy": STR,
    "command": _list(STR),
    "args": _list(STR),
    "workingDir": STR,
    "env": _list({"name": STR, "value": STR}),
    "ports": _list(
        {"name": STR, "containerPort": PORT, "hostPort": HOST_PORT, "hostIP": STR, "protocol": STR}
    ),
    "readinessProbe": _PROBE,
    "livenessProbe": _PROBE,
    "startupProbe": _PROBE,
    "resources": {"requests": QTYMAP, "limits": QTYMAP},
    "securityContext": _CONTAINER_SC,
    "volumeMounts": _list({"name": STR, "mountPath": STR, "readOnly": BOOL}),
}
_POD_SC: dict[str, Any] = {
    "runAsUser": INT,
    "runAsGroup": INT,
    "runAsNonRoot": BOOL,
    "fsGroup": INT,
    "seccompProfile": {"type": STR},
}
_VOLUME: dict[str, Any] = {
    "name": STR,
    "hostPath": {"path": STR, "type": STR},
    "emptyDir": {"medium": STR, "sizeLimit": QTY},
}
POD_FIELDS: dict[str, Any] = {
    "apiVersion": STR,
    "kind": STR,
    "metadata": {"name": STR, "labels": STRMAP, "annotations": STRMAP},
    "spec": {
        "containers": _list(_CONTAINER),
        "initContainers": _list(_CONTAINER),
        "volumes": _list(_VOLUME),
        "restartPolicy": STR,
        "terminationGracePeriodSeconds": INT,
        "hostNetwork": BOOL,
        "hostPID": BOOL,
        "hostIPC": BOOL,
        "securityContext": _POD_SC,
    },
}
"""Every field a manifest may hold; anything else is refused (see the module doc)."""

# Fields a v1 Pod requires (missing: not a valid v1 Pod, as the V1Pod model says).
_REQUIRED: dict[int, tuple[str, ...]] = {
    id(_CONTAINER): ("name", "image"),
    id(_VOLUME): ("name",),
    id(_CONTAINER["env"][1]): ("name",),
    id(_CONTAINER["ports"][1]): ("containerPort",),
    id(_CONTAINER["volumeMounts"][1]): ("name", "mountPath"),
    id(POD_FIELDS["spec"]): ("containers",),
    # Required by their API types too: found missing from this table by asking the V1Pod
    # model directly (2026-11-30), which refused them after this walk had let them by.
    id(_PROBE["httpGet"]): ("port",),
    id(_PROBE["tcpSocket"]): ("port",),
    id(_CONTAINER_SC["seccompProfile"]): ("type",),
    id(_POD_SC["seccompProfile"]): ("type",),
    id(_VOLUME["hostPath"]): ("path",),
}


def shape_problems(doc: Any) -> tuple[list[str], list[str]]:
    """(fields, types): unknown fields and case variants of known ones (policy), and values
    of the wrong type (not a valid v1 Pod), as sentences."""
    fields: list[str] = []
    types: list[str] = []
    _walk(doc, POD_FIELDS, "", fields, types)
    return fields, types


def _walk(value: Any, schema: Any, where: str, fields: list[str], types: list[str]) -> None:
    here = where or "manifest"
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            types.append(f"{here} must be an object")
            return
        lowered = {k.lower(): k for k in schema}
        for key in _REQUIRED.get(id(schema), ()):
            if key not in value:
                types.append(f"{here}.{key} is required")
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            if key in schema:
                _walk(item, schema[key], path, fields, types)
            elif key.lower() in lowered:
                fields.append(
                    f"{_show(path)} differs from the field {lowered[key.lower()]!r} only in "
                    "case (podman matches keys case-insensitively): not allowed"
                )
            else:
                fields.append(f"{_show(path)} is not an allowed field")
        return
    if isinstance(schema, tuple) and schema and schema[0] in ("list", "map"):
        container = list if schema[0] == "list" else dict
        if not isinstance(value, container):
            types.append(f"{here} must be a {'list' if container is list else 'object'}")
            return
        items = enumerate(value) if container is list else value.items()
        for key, item in items:
            label = f"[{key}]" if container is list else f"[{key!r:.60}]"
            _walk(item, schema[1], f"{where}{label}", fields, types)
        return
    kinds = schema if isinstance(schema, tuple) else (schema,)
    if not any(_is(value, kind) for kind in kinds):
        types.append(f"{here} must be a {' or '.join(kinds)}")


# resource.Quantity's grammar (k8s.io/apimachinery/pkg/api/resource, quantity.go and the
# suffixes of suffix.go): a number, then a binary SI suffix, a decimal SI suffix (n u m k
# M G T P E) or a decimal exponent; not negative, as the API server requires of requests,
# limits and sizes.
_QUANTITY = re.compile(
    r"\+?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]+)?"
)


def _is(value: Any, kind: str) -> bool:
    if kind == STR:
        return isinstance(value, str)
    if kind == BOOL:
        return isinstance(value, bool)
    integer = isinstance(value, int) and not isinstance(value, bool)
    if kind == INT:
        return integer
    if kind == PORT:
        return integer and 1 <= value <= 65535
    if kind == HOST_PORT:
        return integer and 0 <= value <= 65535
    # QTY: text only. kubelet would take a bare number too, but the kubernetes client's
    # V1Pod model (37.x) refuses one, so every checker of the fleet judges alike.
    return isinstance(value, str) and _QUANTITY.fullmatch(value) is not None


def _show(path: str) -> str:
    return repr(path[:120])


def violations(pod: Mapping[str, Any], policy: Policy) -> list[str]:
    """Every way ``pod`` breaks ``policy``, as readable sentences (empty when it passes).
    Call it on a pod of the right types (:func:`load_pod` checks them)."""
    out, types = shape_problems(pod)
    if out or types:
        return out + types  # values are judged only on a document of the right shape
    meta = pod.get("metadata") or {}
    name = meta.get("name") or ""
    try:
        layout.check_name(name)
    except InvalidInput as exc:
        out.append(f"metadata.name: {exc}")
    allowance = policy.allowance(name)
    spec = pod.get("spec") or {}
    out.extend(_pod_level(spec, allowance))
    containers = spec.get("containers") or []
    if not containers:
        out.append("spec.containers is empty")
    every = [("containers", c) for c in containers]
    every += [("initContainers", c) for c in spec.get("initContainers") or []]
    if len(every) > MAX_CONTAINERS:
        out.append(f"more than {MAX_CONTAINERS} containers")
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    pod_seccomp = ((spec.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    seen: set[str] = set()
    for kind, c in every:
        where = f"{kind}[{str(c.get('name', '?'))[:63]}]"
        if c.get("name") in seen:
            out.append(f"{where}: container name used twice")
        seen.add(str(c.get("name")))
        out.extend(_container(c, where, policy, kind == "containers", pod_seccomp, volumes))
    out.extend(_volumes(spec.get("volumes") or [], name, allowance))
    return out


def _pod_level(spec: Mapping[str, Any], allowance: Allowance) -> list[str]:
    out = []
    for flag in ("hostPID", "hostIPC"):
        if spec.get(flag):
            out.append(f"spec.{flag} is not allowed")
    if spec.get("hostNetwork") and not allowance.host_network:
        out.append(
            "spec.hostNetwork is not allowed for workloads: publish ports with hostPort and "
            f"hostIP {LOOPBACK}"
        )
    if spec.get("restartPolicy", "Always") not in ("Always", "OnFailure", "Never"):
        out.append("spec.restartPolicy must be Always, OnFailure or Never")
    grace = spec.get("terminationGracePeriodSeconds", 0)
    if not 0 <= grace <= 600:
        out.append("spec.terminationGracePeriodSeconds must be 0..600")
    sc = spec.get("securityContext") or {}
    if sc.get("runAsUser") == 0:
        out.append("spec.securityContext.runAsUser 0 (root for every container) is not allowed")
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp != "RuntimeDefault":
        out.append(f"spec.securityContext.seccompProfile {seccomp!r:.40}: only RuntimeDefault")
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        if sc.get(key, 0) < 0:
            out.append(f"spec.securityContext.{key} must not be negative")
    return out


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")
_CAPABILITY = re.compile(r"[A-Z][A-Z_]{1,31}")


def _container(
    c: Mapping[str, Any],
    where: str,
    policy: Policy,
    needs_limits: bool,
    pod_seccomp: str | None,
    volumes: Mapping[Any, Any],
) -> list[str]:
    out = _image(c.get("image"), where, policy)
    try:
        layout.check_name(c.get("name") or "")
    except InvalidInput as exc:
        out.append(f"{where}: {exc}")
    if c.get("imagePullPolicy", "IfNotPresent") not in ("IfNotPresent", "Never", "Always"):
        out.append(f"{where}: imagePullPolicy must be IfNotPresent, Never or Always")
    for env in c.get("env") or []:
        if not _ENV_NAME.fullmatch(env.get("name") or "") or "value" not in env:
            out.append(f"{where}: env {str(env.get('name'))[:40]!r} needs a valid name and a value")
        elif env["name"] in TRUST_ENV:
            out.append(
                f"{where}: env {env['name']} is device-local configuration (trust, identity): "
                "it is provisioned on the device, never shipped in a set (a stolen signing "
                "key could turn verification off or make devices report as another)"
            )
    out.extend(_ports(c.get("ports") or [], where))
    out.extend(_security_context(c.get("securityContext") or {}, where, pod_seccomp))
    resources = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for res in resources.get(kind) or {}:
            if res not in ("cpu", "memory", "ephemeral-storage"):
                out.append(f"{where}: resources.{kind}.{res[:40]} is not allowed")
    if policy.require_limits and needs_limits:
        limits = resources.get("limits") or {}
        missing = [r for r in ("cpu", "memory") if r not in limits]
        if missing:
            out.append(f"{where}: resources.limits.{'/'.join(missing)} missing")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = (c.get(probe) or {}).get("httpGet") or {}
        if get.get("scheme", "HTTP") not in ("HTTP", "HTTPS"):
            out.append(f"{where}: {probe}.httpGet.scheme must be HTTP or HTTPS")
    for mount in c.get("volumeMounts") or []:
        path = mount.get("mountPath") or ""
        if mount.get("name") not in volumes:
            out.append(f"{where}: volumeMount {str(mount.get('name'))[:63]!r} names no volume")
        if not _clean_abs(path):
            out.append(f"{where}: mountPath {path[:80]!r} must be a clean absolute path")
    return out


def _image(image: Any, where: str, policy: Policy) -> list[str]:
    try:
        ref = refs.parse(str(image or ""))
    except InvalidReference as exc:
        return [f"{where}: {exc}"]
    out = []
    if not (ref.digest and ref.digest.startswith("sha256:")):
        out.append(f"{where}: image {image} is not pinned by sha256 digest")
    allowed = policy.allowed_registries
    if allowed is not None and not refs.registry_allows(ref, allowed):
        shown = ", ".join(allowed) or "none"
        out.append(f"{where}: registry of {ref.name} is not allowed (allowed: {shown})")
    return out


def _ports(ports: list[Mapping[str, Any]], where: str) -> list[str]:
    out = []
    for p in ports:  # containerPort's range is its type's (PORT): shape_problems judged it
        if p.get("protocol", "TCP") not in ("TCP", "UDP"):
            out.append(f"{where}: port protocol must be TCP or UDP")
        if "hostPort" in p:
            if not 1024 <= p["hostPort"] <= 65535:
                out.append(f"{where}: hostPort must be 1024..65535")
            if p.get("hostIP") != LOOPBACK:
                out.append(f"{where}: a hostPort must be bound to hostIP {LOOPBACK}")
        elif "hostIP" in p:
            out.append(f"{where}: hostIP without hostPort")
    return out


def _security_context(sc: Mapping[str, Any], where: str, pod_seccomp: str | None) -> list[str]:
    out = []
    if sc.get("privileged"):
        out.append(f"{where}: privileged is not allowed")
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
    if sc.get("procMount", "Default") != "Default":
        out.append(f"{where}: procMount {str(sc.get('procMount'))[:40]!r} is not allowed")
    if sc.get("runAsUser", 0) < 0 or sc.get("runAsGroup", 0) < 0:
        out.append(f"{where}: runAsUser/runAsGroup must not be negative")
    seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
    if seccomp != "RuntimeDefault":
        out.append(f"{where}: seccompProfile must be RuntimeDefault (pod or container level)")
    caps = sc.get("capabilities") or {}
    drop = caps.get("drop") or []
    if "ALL" not in drop:
        out.append(f"{where}: capabilities.drop must include ALL")
    for cap in [*drop, *(caps.get("add") or [])]:
        if not _CAPABILITY.fullmatch(cap) or cap.startswith("CAP_"):
            out.append(f"{where}: capability {cap[:40]!r} must be written like NET_BIND_SERVICE")
    added = set(caps.get("add") or []) - ALLOWED_CAPABILITIES
    if added:
        out.append(
            f"{where}: capabilities.add {sorted(a[:40] for a in added)} not allowed "
            f"(allowed: {', '.join(sorted(ALLOWED_CAPABILITIES))})"
        )
    return out


def _volumes(volumes: list[Mapping[str, Any]], pod_name: str, allowance: Allowance) -> list[str]:
    out = []
    names: set[Any] = set()
    for v in volumes:
        vname = v.get("name") or ""
        where = f"volume {vname[:63]!r}"
        try:
            layout.check_name(vname)
        except InvalidInput as exc:
            out.append(f"{where}: {exc}")
        if vname in names:
            out.append(f"{where}: name used twice")
        names.add(vname)
        sources = [k for k in ("hostPath", "emptyDir") if k in v]
        if len(sources) != 1:
            out.append(f"{where}: must have exactly one source: hostPath or emptyDir")
            continue
        if "emptyDir" in v:
            if v["emptyDir"].get("medium", "") not in ("", "Memory"):
                out.append(f"{where}: emptyDir medium must be '' or Memory")
            continue
        out.extend(_host_path(v["hostPath"], where, pod_name, allowance))
    return out


def _host_path(
    host_path: Mapping[str, Any], where: str, pod_name: str, allowance: Allowance
) -> list[str]:
    path = host_path.get("path") or ""
    kind = host_path.get("type")
    if not _clean_abs(path):
        return [f"{where}: hostPath {path[:80]!r} must be a clean absolute path"]
    if path in allowance.host_paths:
        if kind not in ("Directory", "DirectoryOrCreate"):
            return [f"{where}: hostPath {path} must have type Directory or DirectoryOrCreate"]
        return []
    if path in DEVICE_HOST_PATHS:
        want = DEVICE_HOST_PATHS[path]
        return [] if kind == want else [f"{where}: hostPath {path} must have type {want}"]
    if pod_name and path == f"{SPOOL_ROOT}/{pod_name}":
        if kind != "Directory":
            return [f"{where}: the spool hostPath {path} must have type Directory"]
        return []
    return [
        f"{where}: hostPath {path[:80]} is not allowed (a workload may mount "
        f"{SPOOL_ROOT}/{pod_name or 'POD'} and {', '.join(DEVICE_HOST_PATHS)})"
    ]


def _clean_abs(path: str) -> bool:
    return path.startswith("/") and posixpath.normpath(path) == path and path != "/"


# -- entry points -------------------------------------------------------------------------


def check_manifest(
    text: str | bytes,
    policy: Policy,
    *,
    expected_name: str | None = None,
    model_check: bool = True,
) -> dict[str, Any]:
    """Parse and check a manifest; raise with every violation listed. Returns the Pod dict."""
    pod = load_pod(text, model_check=False)
    _raise_violations(pod, policy, expected_name)
    if model_check:
        _check_model(pod)
    return pod


def check_manifests(
    manifests: Mapping[str, str],
    policy: Policy,
    *,
    expected_names: Mapping[str, str] | None = None,
    model_check: ModelCheck | None = None,
) -> dict[str, dict[str, Any] | InvalidInput]:
    """:func:`check_manifest` over a batch, in order, stopping at the first failure, with
    the V1Pod model check of the manifests that passed the allowlist done by ONE call of
    ``model_check`` (None: in-process). Its own errors (e.g. TransientError when a child
    process cannot run) propagate.

    Returns key -> Pod dict or the error, up to and including the first failing manifest.
    """
    names = expected_names or {}
    out: dict[str, dict[str, Any] | InvalidInput] = {}
    passed: dict[str, str] = {}
    for key, text in manifests.items():
        try:
            pod = load_pod(text, model_check=False)
            _raise_violations(pod, policy, names.get(key))
        except InvalidInput as exc:
            out[key] = exc
            break
        out[key] = pod
        passed[key] = text
    errors = (model_check or model_errors)(passed) if passed else {}
    for key in passed:
        if errors.get(key) is not None:
            cut = list(out)[: list(out).index(key)]
            return {**{k: out[k] for k in cut}, key: InvalidInput(str(errors[key]))}
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


def walk_only(manifests: Mapping[str, str]) -> dict[str, str | None]:
    """The :data:`ModelCheck` of a device that leaves the V1Pod model to where sets are made:
    it judges nothing. The allowlist's walk, which every manifest has passed before a
    model check is asked, refuses whatever the model refuses (``POD_FIELDS`` types every
    field it allows, ``_REQUIRED`` names the required ones; checked field by field by
    tests/test_core_policy_model.py), so a second opinion on the device costs a child
    process and ~39 MiB per new set and decides nothing (docs/device.md, ``V1POD_CHECK``)."""
    return dict.fromkeys(manifests)


def _raise_violations(pod: Mapping[str, Any], policy: Policy, expected_name: str | None) -> None:
    found = violations(pod, policy)
    name = str((pod.get("metadata") or {}).get("name") or "")[:63]
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


def _check_model(pod: dict[str, Any]) -> None:
    """Let the kubernetes client's V1Pod model judge field types and required fields.

    What the client's own deserializer does: on clients whose models are pydantic models
    (37.x's are) that is ``V1Pod.from_dict``, called here directly so that the check
    does not import the API client (its configuration, REST and date-parsing stack:
    ~10-15 % of the check child's CPU and ~6 MB of its memory, on every new set); older
    clients go through ``ApiClient``'s deserializer."""
    # heavy: imported only when a manifest is read (on devices: in the check child)
    from kubernetes.client.exceptions import ApiValueError
    from kubernetes.client.models.v1_pod import V1Pod

    try:
        if hasattr(V1Pod, "from_dict"):
            V1Pod.from_dict(pod)
        else:
            from kubernetes.client import ApiClient

            ApiClient()._ApiClient__deserialize(pod, "V1Pod")  # type: ignore[attr-defined]
    except (ValueError, TypeError, AttributeError, ApiValueError) as exc:
        raise InvalidInput(f"manifest is not a valid v1 Pod: {one_line(exc)}") from exc

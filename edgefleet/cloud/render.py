"""Render Pod manifests from Jinja2 templates and check them before anything is written.

The template is chosen by the image repository's last path component with a trailing
``-ARCH`` stripped (``team/equipmentparts-aarch64`` -> ``equipmentparts``); a repository
without its own template uses ``model-server``. Templates come from the deploy bucket's
``templates/`` (uploaded by ``edgefleet bootstrap``, editable by operators), with the
packaged ``manifests/`` as the fallback. Templates are code (whatever they render gets
signed): a bucket template is used only with a detached signature
``templates/NAME.yaml.j2.sig`` (base64 Ed25519 over the template's exact bytes) by an
operator key tag_monitor trusts (``TEMPLATE_KEYS``, default the signing key's own public
key); an unsigned or untrusted one is logged (``template-rejected``) and the packaged
template is used instead, as if the bucket had none. Rendering is sandboxed and strict (an unknown
variable is an error, not an empty string), and every result must pass
:func:`edgefleet.core.policy.check_manifest` (a v1 Pod, pinned by digest, within the policy).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.resources
import json
import logging
import posixpath
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jinja2
import jinja2.sandbox
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.cloud import platforms
from edgefleet.core import layout, policy, signing
from edgefleet.core.errors import InvalidInput
from edgefleet.core.logs import fields
from edgefleet.core.manifest_set import ManifestEntry
from edgefleet.core.refs import ImageRef

log = logging.getLogger(__name__)

TEMPLATE_SUFFIX = ".yaml.j2"
SIGNATURE_SUFFIX = ".sig"
SYNC_POD_TEMPLATE = "sync-pod"
# Templates that an image repository's name never selects (they need other context).
RESERVED_TEMPLATES = frozenset({SYNC_POD_TEMPLATE})
_NOT_NAME = re.compile(r"[^a-z0-9-]+")


class TemplateError(InvalidInput):
    """A template is missing, does not compile, or fails to render."""


class TemplateSource(Protocol):
    """Where templates come from: ``load(name)`` -> text, or ``None`` when absent."""

    label: str

    def load(self, name: str) -> str | None: ...


class PackagedTemplates:
    """The templates shipped in the ``manifests`` package."""

    label = "package"

    def load(self, name: str) -> str | None:
        try:
            res = importlib.resources.files("manifests").joinpath(name + TEMPLATE_SUFFIX)
            return res.read_text(encoding="utf-8") if res.is_file() else None
        except (FileNotFoundError, ModuleNotFoundError):
            return None

    def names(self) -> list[str]:
        out = []
        for res in importlib.resources.files("manifests").iterdir():
            if res.name.endswith(TEMPLATE_SUFFIX):
                out.append(res.name[: -len(TEMPLATE_SUFFIX)])
        return sorted(out)


class BucketTemplates:
    """``templates/NAME.yaml.j2`` in the deploy bucket.

    One listing per :meth:`refresh` tells which templates exist and their generations;
    an object is downloaded only when its generation changed, so a warm function pays
    one metadata request per event for templates.
    """

    label = "bucket"

    def __init__(
        self,
        bucket: Any,
        *,
        max_bytes: int = policy.MAX_MANIFEST_BYTES,
        trusted_keys: Sequence[Ed25519PublicKey] = (),
    ) -> None:
        self._bucket = bucket
        self._keys = tuple(trusted_keys)
        self._max = max_bytes
        self._listed: dict[str, int] | None = None
        self._cache: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        listed = {
            info.name[len("templates/") : -len(TEMPLATE_SUFFIX)]: info.generation
            for info in self._bucket.list_objects("templates/")
            if info.name.endswith(TEMPLATE_SUFFIX)
        }
        with self._lock:
            self._listed = listed

    def load(self, name: str) -> str | None:
        if self._listed is None:
            self.refresh()
        assert self._listed is not None
        generation = self._listed.get(name)
        if generation is None:
            return None
        with self._lock:
            cached = self._cache.get(name)
        if cached and cached[0] == generation:
            return cached[1]
        blob = self._bucket.read(layout.template_object(name), max_bytes=self._max)
        if blob is None:
            return None
        if not self._signed(name, blob.data):
            return None
        try:
            text = blob.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TemplateError(f"template gs://…/templates/{name}: not UTF-8") from exc
        with self._lock:
            self._cache[name] = (blob.generation, text)
        return text

    def _signed(self, name: str, data: bytes) -> bool:
        obj = layout.template_object(name)
        sig = self._bucket.read(obj + SIGNATURE_SUFFIX, max_bytes=1024)
        why = "no signature" if sig is None else ""
        if sig is not None:
            try:
                value = base64.b64decode(sig.data.strip(), validate=True)
            except (binascii.Error, ValueError):
                value = b""
            if not any(signing.verifies(k, value, data) for k in self._keys):
                why = "signature is not by a trusted operator key (TEMPLATE_KEYS)"
        if why:
            log.error(
                "bucket template rejected; using the packaged template",
                extra=fields(event="template-rejected", template=obj, reason=why),
            )
        return not why


def sign_template(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """The ``.sig`` object for a template: base64 Ed25519 over its exact bytes."""
    return base64.b64encode(key.sign(data)) + b"\n"


class Templates:
    """Templates looked up in order through several sources (bucket, then package)."""

    def __init__(self, sources: Sequence[TemplateSource]) -> None:
        self._sources = tuple(sources)
        self._env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )
        self._env.filters["quote"] = quote
        self._compiled: dict[str, jinja2.Template] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Re-read what the sources hold (call once per event)."""
        for source in self._sources:
            refresh = getattr(source, "refresh", None)
            if refresh is not None:
                refresh()

    def find(self, names: Iterable[str]) -> tuple[str, str, str]:
        """(name, source label, text) of the first of ``names`` any source holds."""
        tried = []
        for name in names:
            for source in self._sources:
                text = source.load(name)
                if text is not None:
                    return name, source.label, text
                tried.append(f"{source.label}:{name}")
        raise TemplateError(f"no template found (tried {', '.join(tried)})")

    def render(self, names: Iterable[str], context: Mapping[str, Any]) -> tuple[str, str]:
        """(template name, rendered text) for the first template found among ``names``."""
        name, label, text = self.find(names)
        key = hashlib.sha256(text.encode()).hexdigest()
        with self._lock:
            template = self._compiled.get(key)
        if template is None:
            try:
                template = self._env.from_string(text)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(
                    f"template {label}:{name} line {exc.lineno}: {exc.message}"
                ) from exc
            with self._lock:
                self._compiled[key] = template
        try:
            return name, template.render(**context)
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"template {label}:{name}: {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {label}:{name}: {exc}") from exc
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise TemplateError(f"template {label}:{name}: {exc}") from exc


def quote(value: Any) -> str:
    """A YAML-safe double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(str(value))


def model_name(repository: str) -> str:
    """The model a repository holds: its last component without ``-ARCH``."""
    return platforms.strip_arch_suffix(repository)


def pod_name(repository: str) -> str:
    """The Pod (and manifest file) name for a repository, as a DNS label."""
    name = _NOT_NAME.sub("-", model_name(repository).lower()).strip("-")[:63].strip("-")
    try:
        return layout.check_name(name)
    except InvalidInput as exc:
        raise InvalidInput(f"repository {repository!r} gives no valid pod name: {exc}") from exc


def template_names(repository: str) -> tuple[str, ...]:
    """Templates to try for a repository, most specific first."""
    name = model_name(repository)
    ok = re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name) is not None
    if ok and name not in RESERVED_TEMPLATES and name != layout.DEFAULT_TEMPLATE:
        return (name, layout.DEFAULT_TEMPLATE)
    return (layout.DEFAULT_TEMPLATE,)


@dataclass(frozen=True, slots=True)
class Rendered:
    arch: str
    entry: ManifestEntry
    template: str
    image: str


def pod_context(
    repo: ImageRef,
    channel: str,
    arch: str,
    digest: str,
    values: Mapping[str, str] | None = None,
    source_digest: str = "",
) -> dict[str, Any]:
    """What a workload template may use: the image's facts, over fleet-wide ``values``
    (``telemetry_project`` and whatever else the control plane is configured with).

    ``source_digest``: the digest the channel tag names when it differs from the arch's
    image (a multi-arch index); templates annotate the pod with it so that
    ``edgefleet rollout wait --digest INDEX`` finds each arch's image in the sets."""
    pinned = repo.with_digest(digest)
    return {
        "telemetry_project": "",
        **(values or {}),
        "name": pod_name(repo.repository),
        "model": model_name(repo.repository),
        "image": str(pinned),
        "image_name": repo.name,
        "digest": digest,
        "source_digest": source_digest if source_digest != digest else "",
        "registry": repo.registry,
        "repository": repo.repository,
        "tag": channel,
        "channel": channel,
        "arch": arch,
        "port": 5000,
        "container_port": 5000,
        **({"port": int(values["port"])} if values and "port" in values else {}),
    }


def render_workload(
    templates: Templates,
    repo: ImageRef,
    channel: str,
    arch: str,
    digest: str,
    pod_policy: policy.Policy,
    values: Mapping[str, str] | None = None,
    *,
    source_digest: str = "",
) -> Rendered:
    """Render and check the channel manifest for ``repo``'s ``arch`` image ``digest``
    (``source_digest``: the multi-arch index it came from, see :func:`pod_context`)."""
    context = pod_context(repo, channel, arch, digest, values, source_digest)
    name = context["name"]
    template, text = templates.render(template_names(repo.repository), context)
    check(text, pod_policy, name)
    return Rendered(arch, ManifestEntry(name, "channel", text), template, context["image"])


def check(text: str, pod_policy: policy.Policy, name: str) -> dict[str, Any]:
    """Check a rendered manifest (v1 Pod, policy, ``metadata.name`` = ``name``)."""
    return policy.check_manifest(text, pod_policy, expected_name=name)


@dataclass(frozen=True)
class SyncPodSpec:
    """What the sync pod of one arch + channel runs with (its env contract is SPEC's)."""

    image: ImageRef  # pinned by digest
    bucket: str
    arch: str
    channel: str
    manifest_dir: str
    state_dir: str
    poll_seconds: float
    runtime: str
    allowed_registries: str
    trusted_keys: str
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def policy(self) -> policy.Policy:
        """The policy the device itself will judge this pod by."""
        return policy.Policy.for_device(
            policy.parse_registries(self.allowed_registries),
            policy.sync_pod_host_paths(self.manifest_dir, self.state_dir),
        )


def render_sync_pod(templates: Templates, spec: SyncPodSpec) -> str:
    """Render and check the sync pod manifest; bootstrap and provision both use this."""
    if not spec.image.digest:
        raise InvalidInput(f"sync image {spec.image} is not pinned by digest")
    poll = spec.poll_seconds
    context = {
        "name": layout.SYNC_POD_NAME,
        "image": str(spec.image),
        "digest": spec.image.digest,
        "bucket": spec.bucket,
        "arch": spec.arch,
        "channel": spec.channel,
        "manifest_dir": spec.manifest_dir,
        "manifest_root": posixpath.dirname(posixpath.normpath(spec.manifest_dir)) or "/",
        "state_dir": spec.state_dir,
        "poll_seconds": int(poll) if float(poll).is_integer() else poll,
        "runtime": spec.runtime,
        "allowed_registries": spec.allowed_registries,
        "trusted_keys": spec.trusted_keys,
        "extra_env": dict(spec.extra_env),
    }
    _, text = templates.render([SYNC_POD_TEMPLATE], context)
    check(text, spec.policy(), layout.SYNC_POD_NAME)
    return text

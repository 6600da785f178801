"""Registry tag events -> manifest sets: the logic behind ``tag_monitor``.

An event (GCR / Artifact Registry format on Pub/Sub topic ``gcr``:
``{"action": "INSERT"|"DELETE", "digest": "HOST/REPO@sha256:…", "tag": "HOST/REPO:TAG"}``)
is only a hint that a tag may have moved. For each release-channel tag it names, the
reconciler reads the generation of every arch's set of that channel FIRST, then asks the
registry what the tag names NOW, renders one manifest per arch, and writes each set with
the generation it read as precondition; on a conflict it starts over. The last write is
therefore always computed from registry state no older than any write before it, so
duplicated, reordered and concurrent events converge on the registry's final state.

A manifest belongs to a repository when its pod runs that repository's image: when a
tag disappears (or an image loses an arch) exactly those entries are removed, leaving
other models, the sync pod and fleet-wide manifests alone.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from edgefleet.cloud import platforms
from edgefleet.cloud.registry import NotFound, RegistryClient
from edgefleet.cloud.render import Rendered, Templates, render_workload
from edgefleet.cloud.set_store import SetStore, Snapshot, WriteResult
from edgefleet.core import layout, policy, refs
from edgefleet.core.bucket import Conflict
from edgefleet.core.errors import InvalidInput, NameCollision, TransientError
from edgefleet.core.logs import fields
from edgefleet.core.manifest_set import SCOPE_CHANNEL, ManifestEntry
from edgefleet.core.refs import ImageRef

log = logging.getLogger(__name__)

ACTIONS = ("INSERT", "DELETE")
MAX_EVENT_BYTES = 16 * 1024
RECONCILE_ATTEMPTS = 25


class RepositoryNotAllowed(InvalidInput):
    """A tag event names a repository outside ``ALLOWED_REGISTRIES``."""


@dataclass(frozen=True, slots=True)
class TagEvent:
    action: str
    digest: ImageRef | None  # HOST/REPO@DIGEST
    tag: ImageRef | None  # HOST/REPO:TAG

    @property
    def repository(self) -> ImageRef:
        ref = self.tag or self.digest
        assert ref is not None
        return ImageRef(ref.registry, ref.repository)


def parse_event(data: bytes) -> TagEvent:
    """Validate a decoded message body; raise :class:`InvalidInput` naming the problem."""
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidInput(f"tag event is {len(data)} bytes, over {MAX_EVENT_BYTES}")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"tag event is not UTF-8 JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput("tag event is not a JSON object")
    action = doc.get("action")
    if action not in ACTIONS:
        raise InvalidInput(f"tag event action {action!r} is not one of {', '.join(ACTIONS)}")
    digest = _optional_ref(doc, "digest")
    tag = _optional_ref(doc, "tag")
    if digest is None and tag is None:
        raise InvalidInput("tag event has neither 'digest' nor 'tag'")
    if digest is not None and (digest.digest is None or digest.tag is not None):
        raise InvalidInput(f"tag event digest {doc['digest']!r} must be HOST/REPO@DIGEST")
    if tag is not None and (tag.tag is None or tag.digest is not None):
        raise InvalidInput(f"tag event tag {doc['tag']!r} must be HOST/REPO:TAG")
    if digest is not None and tag is not None and digest.name != tag.name:
        raise InvalidInput(f"tag event names two repositories: {digest.name} and {tag.name}")
    return TagEvent(action, digest, tag)


def _optional_ref(doc: dict[str, Any], key: str) -> ImageRef | None:
    value = doc.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"tag event field {key!r} must be a string")
    return refs.parse(value)


def channel_targets(event: TagEvent, channels: Sequence[str]) -> list[str]:
    """The channel tags ``event`` may have changed (empty: nothing to do)."""
    if event.tag is not None:
        return [event.tag.tag] if event.tag.tag in channels else []  # type: ignore[list-item]
    if event.action == "DELETE":
        # A deleted digest may have carried any channel tag: check them all.
        return list(channels)
    return []  # an untagged push


def owned_by(entry: ManifestEntry, image_name: str) -> bool:
    """True when ``entry``'s pod runs an image of repository ``image_name``."""
    return image_name in repositories_of(entry)


def repositories_of(entry: ManifestEntry) -> list[str]:
    """The repositories whose images ``entry``'s pod runs (in container order)."""
    try:
        pod = yaml.safe_load(entry.yaml)
    except yaml.YAMLError:
        return []
    if not isinstance(pod, dict):
        return []
    out = []
    for image in policy.pod_images(pod):
        try:
            out.append(refs.parse(image).name)
        except InvalidInput:
            continue
    return list(dict.fromkeys(out))


def check_name_free(
    current: Iterable[ManifestEntry], image_name: str, wanted: ManifestEntry, where: str
) -> None:
    """Raise :class:`NameCollision` when another repository's channel pod already has
    ``wanted``'s name: replacing it would silently swap that workload on every device."""
    for entry in current:
        if entry.scope != SCOPE_CHANNEL or entry.name != wanted.name:
            continue
        if owned_by(entry, image_name):
            continue
        others = ", ".join(repositories_of(entry)) or "a manifest without images"
        raise NameCollision(
            f"pod name {wanted.name!r} for {image_name} is already used in {where} by "
            f"{others}; pod names come from the repository's last path component: rename "
            f"one repository, or remove the other's channel tag first"
        )


def plan_entries(
    current: Iterable[ManifestEntry],
    image_name: str,
    wanted: ManifestEntry | None,
    where: str = "the set",
) -> tuple[ManifestEntry, ...]:
    """The entries of a set (``where``) after reconciling one repository's channel manifest.

    Channel entries of that repository go and ``wanted`` (if any) takes their place.
    Fleet-wide entries are never touched here; another repository's channel pod of the
    same name is a :class:`NameCollision`, never replaced.
    """
    current = tuple(current)
    if wanted is not None:
        check_name_free(current, image_name, wanted, where)
    out = [e for e in current if not (e.scope == SCOPE_CHANNEL and owned_by(e, image_name))]
    if wanted is not None:
        out.append(wanted)
    return tuple(out)


@dataclass
class Outcome:
    """What one event did, for the log line and for tests."""

    ignored: str = ""
    written: list[str] = field(default_factory=list)  # set objects written
    unchanged: list[str] = field(default_factory=list)
    resolved: dict[str, dict[str, str]] = field(default_factory=dict)  # channel -> arch->digest
    replaced: list[str] = field(default_factory=list)  # untrusted set objects rebuilt

    def as_fields(self) -> dict[str, Any]:
        return {
            "ignored": self.ignored or None,
            "written": self.written,
            "unchanged": len(self.unchanged),
            "resolved": self.resolved,
            "replaced": self.replaced or None,
        }


class Reconciler:
    def __init__(
        self,
        registry: RegistryClient,
        store: SetStore,
        templates: Templates,
        pod_policy: policy.Policy,
        *,
        channels: Sequence[str] = layout.DEFAULT_CHANNELS,
        arches: Sequence[str] = layout.ARCHES,
        attempts: int = RECONCILE_ATTEMPTS,
        template_values: Mapping[str, str] | None = None,
    ) -> None:
        self.template_values = dict(template_values or {})
        self.registry = registry
        self.store = store
        self.templates = templates
        self.policy = pod_policy
        self.channels = tuple(channels)
        self.arches = tuple(arches)
        self.attempts = attempts

    def handle(self, event: TagEvent) -> Outcome:
        # Before any network call: only allowed repositories are ever resolved, so a forged
        # event cannot make the function talk to (and authenticate at) another registry.
        allowed = self.policy.allowed_registries
        if allowed is not None and not refs.registry_allows(event.repository, allowed):
            raise RepositoryNotAllowed(
                f"repository {event.repository.name} is not under ALLOWED_REGISTRIES "
                f"({', '.join(allowed) or 'none'}): event ignored, nothing resolved"
            )
        targets = channel_targets(event, self.channels)
        if not targets:
            what = event.tag or event.digest
            return Outcome(ignored=f"{event.action} {what}: not a channel tag")
        outcome = Outcome()
        for channel in targets:
            self.reconcile(event.repository, channel, outcome)
        return outcome

    def reconcile(self, repo: ImageRef, channel: str, outcome: Outcome | None = None) -> Outcome:
        """Make every arch's set of ``channel`` match what ``repo:channel`` names now."""
        outcome = outcome or Outcome()
        for attempt in range(self.attempts):
            # 1. Generations first: a write below is only accepted if nobody wrote since.
            snaps = {arch: self.store.read(arch, channel) for arch in self.arches}
            # 2. The registry is the truth, asked now.
            try:
                named, digests = platforms.resolve_named(self.registry, repo.with_tag(channel))
            except NotFound:
                named, digests = "", {}
            outcome.resolved[channel] = digests
            # 3. Render and check everything before writing anything.
            self.templates.refresh()
            rendered = {
                arch: render_workload(
                    self.templates,
                    repo,
                    channel,
                    arch,
                    digest,
                    self.policy,
                    self.template_values,
                    source_digest=named,
                )
                for arch, digest in digests.items()
                if arch in self.arches
            }
            # 4. Plan every arch before writing any (a NameCollision writes nothing).
            plans = {
                arch: self._plan(snaps[arch], repo.name, rendered.get(arch)) for arch in self.arches
            }
            try:
                for arch in self.arches:
                    self._write(snaps[arch], plans[arch], outcome)
                return outcome
            except Conflict:
                time.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))
                continue
        raise TransientError(
            f"sets of channel {channel} kept changing while reconciling {repo.name}: "
            f"gave up after {self.attempts} attempts"
        )

    def _plan(
        self, snap: Snapshot, image_name: str, rendered: Rendered | None
    ) -> tuple[ManifestEntry, ...] | None:
        """The set's new entries, or None when nothing is to be written.

        An untrusted stored set (tampered with, or not JSON) is never built upon: the
        plan starts from the control plane's own verified copy (``snap.fallback``), or,
        without one, from nothing but this repository's registry truth; the write then
        replaces the untrusted object instead of leaving the channel frozen."""
        current = snap.entries if snap.trusted else self._recovery_base(snap)
        wanted = rendered.entry if rendered else None
        owned = any(e.scope == SCOPE_CHANNEL and owned_by(e, image_name) for e in current)
        if snap.trusted and wanted is None and not owned:
            return None  # nothing of this repository to remove: no write, not even a new set
        where = layout.set_object(snap.arch, snap.channel)
        return plan_entries(current, image_name, wanted, where)

    def _recovery_base(self, snap: Snapshot) -> tuple[ManifestEntry, ...]:
        base = snap.fallback.entries if snap.fallback else ()
        log.error(
            "replacing an untrusted manifest set",
            extra=fields(
                event="set-replaced",
                object=layout.set_object(snap.arch, snap.channel),
                problem=snap.problem,
                base="trusted copy" if snap.fallback else "registry truth of this event only",
                kept=[e.name for e in base],
            ),
        )
        return base

    def _write(
        self, snap: Snapshot, plan: tuple[ManifestEntry, ...] | None, outcome: Outcome
    ) -> WriteResult | None:
        name = layout.set_object(snap.arch, snap.channel)
        if plan is None:
            return None
        if not snap.trusted:
            # Rebuilt from our verified copy + the registry, signed again; devices verify.
            result = self.store.replace(snap, plan)
            outcome.replaced.append(name)
        else:
            result = self.store.write(snap, plan)
        (outcome.written if result.written else outcome.unchanged).append(name)
        return result

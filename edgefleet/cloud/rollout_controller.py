"""``rollout_controller``: the I/O around :func:`edgefleet.cloud.rollout.decide`.

Woken by a periodic Pub/Sub tick (Cloud Scheduler in GCP, the local stack's ticker
locally; the message's content does not matter). At each tick, for every
``rollouts/ARCH/CHANNEL.json``:

1. read the rollout with its generation; a document that does not validate is logged and
   left alone (never acted on);
2. for a running rollout, ask the registry what the channel tag names now, read the
   devices' reports, :func:`~edgefleet.cloud.rollout.decide`, and write the result with
   ``ifGenerationMatch`` on the generation read -- the one write that linearises
   concurrent ticks: a loser re-reads and finds the step already taken, so a redelivered
   or doubled tick changes nothing twice;
3. make the channel's set follow the rollout (:meth:`RolloutController.reconcile_set`):
   running or paused -> the set carries the rollout block at the step's percentage;
   halted, aborted, superseded -> the block is gone (every device runs the baseline);
   completed -> the channel tag moves to the candidate and the set holds the candidate's
   manifest as its own. Each of these is computed from the rollout alone and compared
   with what is stored, so repeating it writes nothing.

The state is written before the set: a crash in between is repaired by the next tick.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edgefleet.cloud import platforms, rollout
from edgefleet.cloud.registry import NotFound, RegistryClient, RegistryError
from edgefleet.cloud.render import Templates, render_workload
from edgefleet.cloud.rollout import Rollout, View
from edgefleet.cloud.set_store import SetStore, UntrustedSet
from edgefleet.cloud.storage import Bucket
from edgefleet.cloud.tag_events import plan_entries
from edgefleet.core import layout, policy, refs
from edgefleet.core.bucket import Conflict
from edgefleet.core.errors import EdgefleetError, InvalidInput, TransientError
from edgefleet.core.logs import fields
from edgefleet.core.manifest_set import ManifestEntry, RolloutRule

log = logging.getLogger("edgefleet.cloud.rollout_controller")

ATTEMPTS = 10
MAX_REPORT_BYTES = 256 * 1024
# A finished rollout's set is still checked for this long (repairs a crash mid-tick).
TERMINAL_RECONCILE_SECONDS = 3600.0


@dataclass(frozen=True)
class TickResult:
    rollouts: dict[str, str]  # object -> state after the tick
    seconds: float


class RolloutController:
    def __init__(
        self,
        bucket: Bucket,
        store: SetStore,
        registry: RegistryClient,
        templates: Templates,
        pod_policy: policy.Policy,
        *,
        template_values: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.bucket = bucket
        self.store = store
        self.registry = registry
        self.templates = templates
        self.policy = pod_policy
        self.template_values = dict(template_values or {})
        self.clock = clock or (lambda: datetime.now(UTC))

    # -- the tick ------------------------------------------------------------------------

    def tick(self) -> TickResult:
        """One pass over every rollout (see the module docstring)."""
        began = time.monotonic()
        out: dict[str, str] = {}
        cache: list[list[rollout.Report]] = []

        def reports() -> list[rollout.Report]:  # read once per tick, and only when needed
            if not cache:
                cache.append(self.read_reports())
            return cache[0]

        for name in self.bucket.list(layout.ROLLOUTS_PREFIX):
            target = layout.parse_rollout_object(name)
            if target is None:
                continue
            try:
                result = self.advance(*target, reports=reports)
            except (InvalidInput, RegistryError, UntrustedSet) as exc:
                # One rollout that cannot be judged (template, registry refusing, set not
                # trusted) must not stop the others; it is retried at the next tick.
                log.error(
                    "rollout not advanced",
                    extra=fields(event="rollout-error", object=name, error=str(exc)),
                )
                out[name] = "error"
                continue
            if result is not None:
                out[name] = result.state
        return TickResult(out, time.monotonic() - began)

    def advance(
        self,
        arch: str,
        channel: str,
        *,
        reports: Callable[[], Sequence[rollout.Report]] | None = None,
    ) -> Rollout | None:
        name = layout.rollout_object(arch, channel)
        for _ in range(ATTEMPTS):
            current = self.read(arch, channel)
            if current is None:
                return None
            r, generation = current
            new = r
            if r.state == rollout.RUNNING:
                seen = reports() if reports is not None else self.read_reports()
                view = View(self.clock(), self.tag_digest(r), tuple(seen))
                new = rollout.decide(r, view)
            if not new.same(r):
                try:
                    self.bucket.write(
                        name,
                        rollout.encode(new),
                        if_generation_match=generation,
                        content_type="application/json",
                    )
                except Conflict:
                    continue  # another tick or the operator wrote first: decide again
                self._log(new, r)
            self.reconcile_set(new)
            return new
        raise TransientError(f"gs://{self.bucket.name}/{name} kept changing: gave up")

    def read(self, arch: str, channel: str) -> tuple[Rollout, int] | None:
        name = layout.rollout_object(arch, channel)
        blob = self.bucket.read(name, max_bytes=rollout.MAX_STATE_BYTES)
        if blob is None:
            return None
        try:
            r = rollout.decode(blob.data)
            if (r.arch, r.channel) != (arch, channel):
                raise InvalidInput(f"names {r.arch}/{r.channel}")
        except InvalidInput as exc:
            log.error(
                "rollout state is invalid; left alone",
                extra=fields(event="rollout-invalid", object=name, error=str(exc)),
            )
            return None
        return r, blob.generation

    def tag_digest(self, r: Rollout) -> str | None:
        """What ``REPO:CHANNEL`` names now for the rollout's arch (None: no such tag)."""
        try:
            digests = platforms.resolve(self.registry, refs.parse(r.repository).with_tag(r.channel))
        except NotFound:
            return None
        return digests.get(r.arch)

    def read_reports(self) -> list[rollout.Report]:
        """Every device's last report (the object name's id wins). Unreadable ones are
        skipped: a device that cannot be read is a device that did not report."""
        out = []
        for name in self.bucket.list("status/"):
            device_id = name[len("status/") :].removesuffix(".json")
            try:
                layout.check_device_id(device_id)
                blob = self.bucket.read(name, max_bytes=MAX_REPORT_BYTES)
                if blob is None:
                    continue
                doc = json.loads(blob.data)
            except (InvalidInput, EdgefleetError, ValueError):
                continue
            report = rollout.parse_report(doc, device_id)
            if report is not None:
                out.append(report)
        return out

    # -- the set follows the rollout -----------------------------------------------------

    def reconcile_set(self, r: Rollout) -> bool:
        """Make ``sets/ARCH/CHANNEL.json`` match ``r``; True when something was written."""
        if not r.active:
            age = (self.clock() - r.updated_at).total_seconds()
            if age > TERMINAL_RECONCILE_SECONDS:
                return False
        if r.state == rollout.COMPLETED:
            tag = self.tag_digest(r)
            if tag == r.baseline.digest:
                self._move_tag(r)
            elif tag != r.candidate.digest:
                return False  # retagged since the rollout completed: the tag wins
        for _ in range(ATTEMPTS):
            snap = self.store.read(r.arch, r.channel)
            if not snap.trusted:
                log.error(
                    "set is not trusted: the rollout cannot change it",
                    extra=fields(event="rollout-set-untrusted", rollout=r.id, problem=snap.problem),
                )
                return False
            stored = snap.manifest_set.rollout if snap.manifest_set else None
            try:
                if r.active:
                    rule = self.rule(r, stored)
                    if stored == rule:
                        return False
                    result = self.store.write(snap, snap.entries, rollout=rule)
                elif stored is not None and stored.id != r.id:
                    return False  # another rollout owns the set now
                elif r.state == rollout.COMPLETED:
                    # What tag_monitor renders for the moved tag: its event writes nothing.
                    entry = self._candidate_entry(r)
                    image = refs.parse(r.repository).name
                    entries = plan_entries(snap.entries, image, entry)
                    result = self.store.write(snap, entries, rollout=None)
                elif stored is None:
                    return False
                else:
                    result = self.store.write(snap, snap.entries, rollout=None)
            except Conflict:
                continue
            log.info(
                "set follows the rollout",
                extra=fields(
                    event="rollout-set-written",
                    rollout=r.id,
                    state=r.state,
                    percent=r.percent,
                    sequence=result.manifest_set.sequence,
                ),
            )
            return result.written
        raise TransientError(f"{layout.set_object(r.arch, r.channel)} kept changing: gave up")

    def rule(self, r: Rollout, stored: RolloutRule | None) -> RolloutRule:
        """The set's rollout block for ``r`` (the stored candidate manifest is reused when
        it is this rollout's, so a tick renders nothing when nothing changes)."""
        if stored is not None and stored.id == r.id and stored.candidate == r.candidate.digest:
            entries = stored.entries
        else:
            entries = (self._candidate_entry(r),)
        return RolloutRule(r.id, r.percent, entries, r.candidate.digest, r.baseline.digest)

    def _candidate_entry(self, r: Rollout) -> ManifestEntry:
        self.templates.refresh()
        repo = refs.parse(r.repository)
        return render_workload(
            self.templates,
            repo,
            r.channel,
            r.arch,
            r.candidate.digest,
            self.policy,
            self.template_values,
            # As tag_monitor renders it once the tag names the candidate: same manifest.
            source_digest=refs.parse(r.source).digest or "",
        ).entry

    def _move_tag(self, r: Rollout) -> None:
        """Completion: the channel tag names the candidate (the registry stays the truth)."""
        target = refs.parse(r.repository).with_tag(r.channel)
        source = refs.parse(r.source)
        manifest = self.registry.get_manifest(source)
        try:
            if self.registry.resolve(target) == manifest.digest:
                return
        except NotFound:
            pass
        self.registry.put_manifest(target, manifest)
        log.info(
            "rollout completed: channel tag moved",
            extra=fields(event="rollout-tag-moved", rollout=r.id, tag=str(target)),
        )

    def _log(self, new: Rollout, old: Rollout) -> None:
        changed = new.state != old.state or new.step_index != old.step_index
        log.log(
            logging.WARNING if new.state == rollout.HALTED else logging.INFO,
            "rollout " + (new.verdict if changed else "judged"),
            extra=fields(
                event="rollout-" + (new.history[-1]["event"] if changed else "judged"),
                rollout=new.id,
                arch=new.arch,
                channel=new.channel,
                state=new.state,
                percent=new.percent,
                cohort=new.cohort,
                verdict=new.verdict,
            ),
        )


def from_env(env: Mapping[str, str]) -> RolloutController:
    """The controller with the same configuration as ``tag_monitor`` (it renders the same
    manifests and signs with the same key): DEPLOY_BUCKET, SIGNING_KEY, TRUSTED_KEYS,
    INSECURE_REGISTRIES, ALLOWED_REGISTRIES, TELEMETRY_PROJECT."""
    from edgefleet.cloud.control import TagMonitor, TagMonitorConfig

    config = TagMonitorConfig.from_env(env)
    reconciler = TagMonitor.from_config(config).reconciler
    store = reconciler.store
    return RolloutController(
        store.bucket,
        store,
        reconciler.registry,
        reconciler.templates,
        reconciler.policy,
        template_values=reconciler.template_values,
    )


def handle_tick(controller: RolloutController, cloud_event: Any) -> TickResult:
    """A tick CloudEvent: its payload is not trusted and not needed (only checked to be a
    Pub/Sub message, so a stray event is logged, not acted on twice)."""
    from edgefleet.cloud.control import pubsub_message

    pubsub_message(getattr(cloud_event, "data", None))
    result = controller.tick()
    log.info(
        "rollout tick",
        extra=fields(event="rollout-tick", rollouts=result.rollouts, seconds=result.seconds),
    )
    return result


def write_new(bucket: Bucket, r: Rollout) -> int:
    """Store a new rollout unless an active one holds the channel (operator side)."""
    name = layout.rollout_object(r.arch, r.channel)
    blob = bucket.read(name, max_bytes=rollout.MAX_STATE_BYTES)
    generation = 0
    if blob is not None:
        try:
            old = rollout.decode(blob.data)
        except InvalidInput:
            old = None
        if old is not None and old.active:
            raise InvalidInput(
                f"rollout {old.id} is {old.state} on {r.arch}/{r.channel}: "
                f"`edgefleet rollout abort --channel {r.channel}` first"
            )
        generation = blob.generation
    return bucket.write(
        name, rollout.encode(r), if_generation_match=generation, content_type="application/json"
    )


def operate(bucket: Bucket, arch: str, channel: str, action: str, now: datetime) -> Rollout:
    """pause / resume / abort one rollout, with a generation precondition (retried)."""
    name = layout.rollout_object(arch, channel)
    for _ in range(ATTEMPTS):
        blob = bucket.read(name, max_bytes=rollout.MAX_STATE_BYTES)
        if blob is None:
            raise InvalidInput(f"no rollout on {arch}/{channel}")
        r = rollout.decode(blob.data)
        new = rollout.operator_action(r, action, now)
        if new is r:
            return r
        try:
            bucket.write(
                name,
                rollout.encode(new),
                if_generation_match=blob.generation,
                content_type="application/json",
            )
        except Conflict:
            continue
        return new
    raise TransientError(f"gs://{bucket.name}/{name} kept changing: try again")

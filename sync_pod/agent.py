"""The sync agent: poll the channel's manifest set, verify it, apply it behind a health
gate, and report.

One poll is the pipeline of :mod:`sync_pod.pipeline`::

    fetch -> decode -> verify -> select -> check -> prefetch -> apply -> gate
          -> commit | rollback                      (then, in the loop: report)

When nothing changed a timed poll is one metadata request (the set object's generation);
a poll woken by a wake-up message downloads at once (one request). A new generation is
downloaded (bounded), decoded, verified (signatures when keys are trusted, expiry,
replay, target), reduced to what this device runs (select), and every manifest is
policy-checked (the allowlist's walk; on devices with ``V1POD_CHECK=on`` also the
kubernetes V1Pod model, through ``model_check``, in a child process); only then are the
images pulled (prefetch) and the set written into the manifest folder (apply). The gate
waits until the runtime runs the changed pods, ready; if not before the deadline, the
previous set is put back (rollback) and the set is never retried. Any failure keeps the
last good set in force. What each end of a poll makes the agent remember is decided in
one place (:func:`sync_pod.memory.remember`, called from :meth:`Agent.settle`), including
the back-off on a set that keeps failing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from device import spool
from device.health import HealthResult, Probe, check_probe, wait_healthy
from device.runtime import Runtime
from edgefleet import __version__
from edgefleet.core import layout, manifest_set, signing
from edgefleet.core.bucket import Conflict, DeviceBucket, TooLarge
from edgefleet.core.errors import EdgefleetError, TransientError
from edgefleet.core.policy import ModelCheck
from sync_pod import pipeline
from sync_pod.config import Config
from sync_pod.folder import FolderError, ManifestFolder, parse_manifest
from sync_pod.heal import Healer, down_pods
from sync_pod.memory import BackoffPolicy, backing_off, iso, remember
from sync_pod.model_metrics import ModelSampler, targets_of
from sync_pod.pace import HintStore
from sync_pod.pipeline import (
    WAIT_STOP,
    WAIT_TIMEOUT,
    Checked,
    Decoded,
    Fetched,
    Outcome,
    Planned,
    PollResult,
    Reason,
    Selected,
    Trust,
    Verified,
    Wait,
)
from sync_pod.rollout import RolloutMemory
from sync_pod.state import (
    PHASE_ROLLBACK,
    AppliedSet,
    Pending,
    Rejection,
    State,
    StateStore,
)
from sync_pod.status import StatusReporter
from sync_pod.trust import RootOfTrust

log = logging.getLogger(__name__)

SYNC_POD_FILE = layout.manifest_file_name(layout.SYNC_POD_NAME)
# The longest back-off on a set that keeps failing (seconds); the first is one poll.
BACKOFF_CAP_SECONDS = 3600.0

# Kept for callers that compare poll outcomes with names (Outcome is a StrEnum).
UNCHANGED = Outcome.UNCHANGED
APPLIED = Outcome.APPLIED
REJECTED = Outcome.REJECTED
ROLLED_BACK = Outcome.ROLLED_BACK
ROLLBACK_FAILED = Outcome.ROLLBACK_FAILED
BACKING_OFF = Outcome.BACKING_OFF
OFFLINE = Outcome.OFFLINE
FAILED = Outcome.FAILED


def _now_iso(ts: float) -> str:
    return iso(ts)


class Agent:
    def __init__(
        self,
        config: Config,
        bucket: DeviceBucket,
        runtime: Runtime,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        probe: Callable[[Probe], bool] = check_probe,
        model_check: ModelCheck | None = None,
    ) -> None:
        """``model_check``: the V1Pod model check of a new set's manifests (None: in this
        process; the device's main passes ``policy.walk_only``, or with ``V1POD_CHECK=on``
        a child per new set, see :func:`sync_pod.__main__.device_model_check`).
        ``sleep`` paces the health gate; the wait between polls is :meth:`run`'s."""
        self.config = config
        self.bucket = bucket
        self.runtime = runtime
        self.clock = clock
        self.sleep = sleep
        self.probe = probe
        self.model_check = model_check
        self.policy = config.policy()
        self.pace = config.pace()
        self.hints = HintStore(config.state_dir)  # the poll hint of the last verified set
        self.backoff = BackoffPolicy(
            base=config.poll_seconds, cap=max(config.poll_seconds, BACKOFF_CAP_SECONDS)
        )
        self.folder = ManifestFolder(config.manifest_dir, config.state_dir / "sets")
        self.store = StateStore(config.state_dir / "state.json")
        self.state: State = self.store.load()
        self.reporter = StatusReporter(
            bucket,
            config.status_object,
            config.state_dir / "status.json",
            heartbeat_seconds=config.status_seconds,
            clock=clock,
        )
        self.offline_since: float | None = None
        self.last_sync: float | None = None
        self.last_poll: float | None = None
        self.last_error: dict[str, str] | None = None
        self.last_result: PollResult | None = None
        # The MQTT wake-up's state for the status (sync_pod.wake.MqttWake.status), if any.
        self.wakeup_status: Callable[[], dict[str, Any]] | None = None
        self.health = "unknown"
        self._checked: Checked | None = None  # the last set checked, kept while it fails
        self.rollout = RolloutMemory.load(config.state_dir / "rollout.json")
        self.sampler = ModelSampler(config.metrics_seconds, clock)
        self._news = True  # something worth reporting happened since the last report
        self.roots = RootOfTrust(config, bucket, clock)
        # Pods of the applied set that went down behind the runtime's back (podman only).
        self.healer = Healer(config.heal_seconds, clock=clock) if config.heal_seconds else None

    # -- lifecycle ----------------------------------------------------------------------

    def recover(self) -> None:
        """Finish an apply or a rollback a crash interrupted, then make the runtime match."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.folder.ensure()
        self.folder.clean_leftovers()
        if self.state.pending is not None:
            self.settle(self.resume(self.state.pending))
        # A crash after commit but before clean-up leaves old set copies behind.
        self.folder.gc(self._kept_dirs())
        try:
            self.runtime.reconcile(self.folder.live)
        except EdgefleetError as exc:
            self._error(Reason.RUNTIME, str(exc))

    def run(self, wait: Wait, *, jitter: Callable[[], float]) -> None:
        """Poll, report, ``wait(poll interval x jitter())``; until ``wait`` says "stop".
        A wait ended early (a wake-up message) makes the next poll a woken one."""
        self.recover()
        self.report()
        woken = False
        while True:
            try:
                self.poll_once(woken=woken)
            except Exception as exc:  # keep the device's last good set, whatever happened
                log.exception("poll failed unexpectedly")
                self._error(Reason.UNEXPECTED, f"{type(exc).__name__}: {exc}")
            try:
                self.heal()  # before the report, which then carries what it did
            except Exception:
                log.exception("self-heal failed unexpectedly")
            try:
                self.report()
            except Exception:
                log.exception("status report failed unexpectedly")
            reason = wait(self.poll_interval() * jitter())
            if reason == WAIT_STOP:
                return
            woken = reason != WAIT_TIMEOUT

    def poll_interval(self) -> float:
        """The device's poll interval, or the last verified set's hint within its bounds."""
        return self.pace.interval(self.hints.hint)

    # -- one poll: the pipeline ---------------------------------------------------------

    def poll_once(self, *, woken: bool = False) -> Outcome:
        """One pass of the pipeline; its result is settled (remembered, reported).
        ``woken``: a wake-up said a new set is out, so the poll downloads at once."""
        self.last_poll = self.clock()
        result = self._poll(woken)
        self.settle(result)
        return result.outcome

    def _poll(self, woken: bool = False) -> PollResult:
        if self.state.pending is not None:
            return self.resume(self.state.pending)
        if self.roots.refresh(self.state):
            self._news = True  # a new root: re-judge the set under it (seen_generation reset)
        stages: tuple[Callable[[Any], Any], ...] = (
            pipeline.decode,
            self.known,
            self.verify,
            self.select,
            self.check,
            self.plan,
            self.prefetch,
            self.apply,
            self.finish,
        )
        product: object = self.fetch(woken=woken)
        for stage in stages:
            if isinstance(product, PollResult):
                return product
            product = stage(product)
        assert isinstance(product, PollResult), product
        return product

    def fetch(self, *, woken: bool = False) -> Fetched | PollResult:
        """The set's bytes when its generation is new and not backing off.

        A timed poll asks for the generation first (one metadata request: what an idle
        device pays) and downloads only when it moved. A woken poll (a wake-up message
        announced a new set) downloads at once: one request instead of two, and the
        generation comes with the bytes; a forged or replayed message costs that one
        download. While a set backs off, every poll asks first."""
        name = self.config.set_object
        if woken and self.state.backoff is None:
            return self._download(name)
        try:
            generation = self.bucket.generation(name)
        except TransientError as exc:
            return PollResult(Outcome.OFFLINE, Reason.OFFLINE, str(exc))
        self._online()
        if generation == 0:
            return self._no_set(name)
        held = backing_off(self.state, now=self.clock(), generation=generation)
        if held is not None:
            return self._backing_off_result(held)
        if generation == self.state.seen_generation:
            return PollResult(Outcome.UNCHANGED)
        return self._download(name, generation)

    def _download(self, name: str, generation: int = 0) -> Fetched | PollResult:
        """One request: the set's bytes and the generation they are (bounded in size).
        ``generation``: the one a metadata request saw, remembered when the set is too
        large (so it is not downloaded again); 0 on a woken poll."""
        try:
            blob = self.bucket.fetch(name, max_bytes=manifest_set.MAX_SET_BYTES)
        except TooLarge as exc:
            return PollResult(Outcome.REJECTED, Reason.TOO_LARGE, str(exc), "", generation)
        except Conflict:
            return PollResult(Outcome.UNCHANGED)  # rewritten while read: the next poll gets it
        except TransientError as exc:
            return PollResult(Outcome.OFFLINE, Reason.OFFLINE, str(exc))
        self._online()
        if blob is None:
            return self._no_set(name)
        if blob.generation == self.state.seen_generation:
            return PollResult(Outcome.UNCHANGED)
        return Fetched(blob.data, blob.generation)

    def _no_set(self, name: str) -> PollResult:
        where = f"gs://{self.bucket.name}/{name}"
        return PollResult(Outcome.UNCHANGED, Reason.NO_SET, f"{where} does not exist yet")

    def known(self, decoded: Decoded) -> Decoded | PollResult:
        """Sets judged before: the running one rewritten (its signatures still judged, so
        a stripped or forged signature on it is reported), one rolled back before (never
        retried), one backing off."""
        applied = self.state.applied
        if applied is not None and decoded.digest == applied.digest:
            verdict = pipeline.verify(decoded, self.trust(), running=True)
            if isinstance(verdict, PollResult):
                return verdict
            self.roots.saw_expiry(decoded.digest, decoded.manifest_set.expires_at)
            return PollResult(Outcome.UNCHANGED, "", "", decoded.digest, decoded.generation)
        if decoded.digest in self.state.bad_digests:
            log.info("set was rolled back before; not retrying", extra=_f(digest=decoded.digest))
            return PollResult(Outcome.UNCHANGED, "", "", decoded.digest, decoded.generation)
        held = backing_off(self.state, now=self.clock(), digest=decoded.digest)
        if held is not None:
            return self._backing_off_result(held)
        return decoded

    def trust(self) -> Trust:
        applied = self.state.applied
        device = self.roots.trust
        return Trust(
            keys=device.signing_keys(),
            arch=self.config.arch,
            channel=self.config.channel,
            now=datetime.fromtimestamp(self.clock(), UTC),
            applied_sequence=applied.sequence if applied else None,
            applied_digest=applied.digest if applied else None,
            threshold=device.signing_threshold(),
            insecure=device.insecure,
        )

    def verify(self, decoded: Decoded) -> Verified | PollResult:
        trust = self.trust()
        verified = pipeline.verify(decoded, trust)
        if (
            isinstance(verified, PollResult)
            and verified.reason == manifest_set.REJECT_REPLAYED
            and self.roots.reset_pending()
        ):
            # A root-signed reset (recovery from a fast-forward) lifts the replay floor
            # once, spent only by a set that verifies with the root's signing keys.
            lifted = dataclasses.replace(trust, applied_sequence=None, applied_digest=None)
            verified = pipeline.verify(decoded, lifted)
            if isinstance(verified, Verified):
                self.roots.take_reset()
        if isinstance(verified, Verified):
            self.roots.saw_expiry(verified.digest, verified.manifest_set.expires_at)
            self.hints.update(verified.manifest_set.poll_seconds)
        return verified

    def select(self, verified: Verified) -> Selected | PollResult:
        """Which version of the set this device runs (a rollout's cohort: sync_pod.rollout)."""
        return self.rollout.select(verified, self.config.device_id)

    def check(self, selected: Selected) -> Checked | PollResult:
        """Policy + model check; a set that failed later (pull, disk) is not re-checked
        when it is retried (same digest: same verdict)."""
        cached = self._checked
        if cached is not None and cached.digest == selected.digest:
            return dataclasses.replace(cached, generation=selected.generation)
        checked = pipeline.check(selected, self.policy, self.model_check)
        if isinstance(checked, Checked):
            self._checked = checked
        return checked

    def plan(self, checked: Checked) -> Planned:
        return pipeline.plan(checked, self.folder.read(), SYNC_POD_FILE)

    def prefetch(self, planned: Planned) -> Planned | PollResult:
        """Pull the images of the changed pods before anything is switched: a pull that
        fails keeps the old set running, and the set is retried after a back-off."""
        checked = planned.checked
        log.info(
            "applying manifest set",
            extra=_f(sequence=checked.sequence, digest=checked.digest, changed=planned.changed),
        )
        pods = {n: checked.pods[n] for n in planned.changed if n in checked.pods}
        try:
            spool.ensure(spool.spool_dirs(pods))  # hostPath type Directory: must exist
            self.runtime.prefetch(pods)
        except EdgefleetError as exc:
            return PollResult(
                Outcome.FAILED,
                Reason.RUNTIME,
                f"pulling images of set {checked.digest[:12]}: {exc}",
                checked.digest,
                checked.generation,
            )
        return planned

    def apply(self, planned: Planned) -> Pending | PollResult:
        """Keep a complete copy of the set (and of what runs now, to roll back to),
        journal the apply, then write the set's exact bytes into the live folder, file by
        file (:meth:`ManifestFolder.sync`)."""
        checked = planned.checked
        fail = partial(PollResult, Outcome.FAILED, Reason.APPLY, digest=checked.digest,
                       generation=checked.generation)  # fmt: skip
        try:
            previous = self._rollback_target(checked)
            set_dir = self.folder.stage(
                self.folder.set_dir(f"{checked.sequence}-{checked.digest[:16]}"), planned.files
            )
        except FolderError as exc:
            return fail(detail=str(exc))
        pending = Pending(
            digest=checked.digest,
            sequence=checked.sequence,
            dir=str(set_dir),
            previous_dir=str(previous),
            hashes=_hashes(planned.files),
            generation=checked.generation,
            changed=list(planned.changed),
        )
        self.state.pending = pending
        self._save()
        try:
            self.folder.sync(planned.files)
        except FolderError as exc:
            # Half written: put the previous set back before anything else.
            pending.phase, pending.detail = PHASE_ROLLBACK, f"writing the set failed: {exc}"
            self._save()
            restored = self._roll_back(pending)
            if restored.outcome is Outcome.ROLLBACK_FAILED:
                return restored
            return fail(detail=str(exc))
        pending.deadline = self.clock() + self.config.health_timeout
        self._save()
        return pending

    def _rollback_target(self, checked: Checked) -> Path:
        """A complete copy of what the live folder holds now: the applied set's copy when
        it still matches, else a fresh snapshot (first apply, a hand-edited folder)."""
        live = self.folder.read()
        applied = self.state.applied
        if applied is not None and self.folder.read(Path(applied.dir)) == live and live:
            return Path(applied.dir)
        name = f"before-{checked.sequence}-{checked.digest[:16]}"
        return self.folder.stage(self.folder.set_dir(name), live)

    def finish(self, pending: Pending) -> PollResult:
        """Gate the switched-in set, then commit it or roll it back."""
        return self._finish(pending)

    def _finish(self, pending: Pending) -> PollResult:
        result = self.gate(pending)
        if result.healthy:
            return self.commit(pending)
        return self.rollback(pending, result)

    def gate(self, pending: Pending) -> HealthResult:
        """Reconcile the runtime with the switched-in set; wait until its changed (and
        restarted) pods run, ready, or the deadline passes."""
        try:
            started = self.runtime.reconcile(self.folder.live)
        except EdgefleetError as exc:
            return HealthResult(False, {"runtime": str(exc)})
        gated = sorted(set(pending.changed) | set(started))
        return self._wait_ready(Path(pending.dir), gated, pending.deadline or self.clock())

    def commit(self, pending: Pending) -> PollResult:
        self.state.previous = self.state.applied
        self.state.applied = AppliedSet(
            digest=pending.digest,
            sequence=pending.sequence,
            dir=pending.dir,
            hashes=pending.hashes,
            generation=pending.generation,
            applied_at=_now_iso(self.clock()),
        )
        self.state.pending = None
        self.folder.gc(self._kept_dirs())
        log.info("manifest set applied", extra=_f(sequence=pending.sequence, digest=pending.digest))
        return PollResult(Outcome.APPLIED, "", "", pending.digest, pending.generation)

    def rollback(self, pending: Pending, result: HealthResult) -> PollResult:
        """Put the previous set back and wait for its pods. Reports what really happened:
        ROLLED_BACK only when the previous set is in force and its pods serve again."""
        detail = f"set {pending.sequence} not healthy in time: {result.summary()}"
        log.error("rolling back", extra=_f(digest=pending.digest, detail=result.detail))
        pending.phase, pending.detail = PHASE_ROLLBACK, detail
        self._save()
        return self._roll_back(pending)

    def _roll_back(self, pending: Pending) -> PollResult:
        def failed(why: str) -> PollResult:
            return PollResult(
                Outcome.ROLLBACK_FAILED,
                Reason.ROLLBACK,
                f"{pending.detail}; rollback failed: {why}",
                pending.digest,
                pending.generation,
            )

        previous = Path(pending.previous_dir) if pending.previous_dir else None
        try:
            files = self._previous_files(previous, Path(pending.dir))
            self.folder.sync(files)
        except FolderError as exc:
            return failed(str(exc))  # pending stays: the next poll tries again
        self.state.pending = None
        self.folder.gc(self._kept_dirs())
        try:
            self.runtime.reconcile(self.folder.live)
        except EdgefleetError as exc:
            return failed(f"the runtime did not restart the previous set: {exc}")
        # A rollback is done when the old pods serve again: wait for them (same gate,
        # same budget) so that what is reported is what runs.
        deadline = self.clock() + self.config.health_timeout
        restored = self._wait_ready(self.folder.live, pending.changed, deadline)
        if not restored.healthy:
            return failed(f"the previous set is not ready again: {restored.summary()}")
        return PollResult(
            Outcome.ROLLED_BACK,
            Reason.UNHEALTHY,
            f"{pending.detail}; rolled back",
            pending.digest,
            pending.generation,
        )

    def resume(self, pending: Pending) -> PollResult:
        """An apply or a rollback left unfinished (a crash, a failed rollback): finish it.
        An interrupted apply is rolled forward from its complete copy, then gated."""
        if pending.phase == PHASE_ROLLBACK:
            log.info("retrying a failed rollback", extra=_f(digest=pending.digest))
            return self._roll_back(pending)
        files = self.folder.read(Path(pending.dir))
        if _hashes(files) != pending.hashes:
            log.error("the copy of an interrupted apply is damaged: rolling back",
                      extra=_f(digest=pending.digest))  # fmt: skip
            pending.phase, pending.detail = PHASE_ROLLBACK, "interrupted apply, copy damaged"
            return self._roll_back(pending)
        log.info("resuming an interrupted apply", extra=_f(digest=pending.digest))
        try:
            self.folder.sync(files)
        except FolderError as exc:
            pending.phase, pending.detail = PHASE_ROLLBACK, f"resuming the apply failed: {exc}"
            self._save()
            return self._roll_back(pending)
        if pending.deadline is None:
            pending.deadline = self.clock() + self.config.health_timeout
            self._save()
        return self._finish(pending)

    def _backing_off_result(self, held: Any) -> PollResult:
        wait = max(0.0, held.until - self.clock())
        return PollResult(
            Outcome.BACKING_OFF,
            held.reason,
            f"set {held.digest[:12]} failed {held.failures} time(s); next try in {wait:.0f} s",
            held.digest,
            held.generation,
        )

    def _previous_files(self, previous: Path | None, failed_dir: Path) -> dict[str, bytes]:
        """What to roll back to; without a copy of it, only our own sync pod."""
        if previous is not None and previous.is_dir():
            return self.folder.read(previous)
        sync_pod = self.folder.read(failed_dir).get(SYNC_POD_FILE)
        return {SYNC_POD_FILE: sync_pod} if sync_pod is not None else {}

    def _kept_dirs(self) -> list[Path | None]:
        """The set copies the state still refers to (gc keeps them)."""
        pending = self.state.pending
        return [
            _opt_path(self.state.applied),
            _opt_path(self.state.previous),
            Path(pending.dir) if pending else None,
            Path(pending.previous_dir) if pending and pending.previous_dir else None,
        ]

    def _wait_ready(self, set_dir: Path, names: list[str], deadline: float) -> HealthResult:
        """The health gate on the pods ``names`` of ``set_dir`` (those it holds)."""
        return wait_healthy(
            self._load_pods(set_dir, names),
            self.runtime,
            deadline,
            clock=self.clock,
            sleep=self.sleep,
            probe=self.probe,
        )

    def _load_pods(self, set_dir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
        out = {}
        for name in names:
            path = set_dir / layout.manifest_file_name(name)
            if path.is_file():
                out[name] = parse_manifest(path.read_bytes())
        return out

    # -- settling a poll: the one place that decides what is remembered ----------------

    def settle(self, result: PollResult) -> None:
        """Remember what ``result`` says (state on disk) and what to report."""
        now = self.clock()
        remember(self.state, result, now=now, backoff=self.backoff)
        self._save()
        self.last_result = result
        if self.rollout.settle(result):
            self._news = True
        if result.outcome not in (Outcome.FAILED, Outcome.BACKING_OFF):
            self._checked = None
        outcome = result.outcome
        if outcome is Outcome.OFFLINE:
            self._offline(result.detail)
        elif outcome is Outcome.APPLIED:
            self.health = "healthy"
            self.last_error = None
            self._news = True
        elif outcome is Outcome.REJECTED:
            log.error(
                "manifest set rejected",
                extra=_f(reason=result.reason, detail=result.detail, digest=result.digest),
            )
            self.last_error = {"reason": str(result.reason), "detail": result.detail,
                               "at": _now_iso(now)}  # fmt: skip
            self._news = True
        elif outcome is Outcome.ROLLED_BACK:
            self.health = "rolled-back"
            self._news = True
        elif outcome is Outcome.ROLLBACK_FAILED:
            self.health = "rollback-failed"
            self._error(Reason.ROLLBACK, result.detail)
            self._news = True
        elif outcome is Outcome.FAILED or result.reason == Reason.NO_SET:
            self._error(str(result.reason), result.detail)

    # -- bookkeeping --------------------------------------------------------------------

    def _error(self, reason: str, detail: str) -> None:
        if self.last_error is None or self.last_error.get("detail") != detail:
            log.error("sync error", extra=_f(reason=str(reason), detail=detail))
            self._news = True
        self.last_error = {"reason": str(reason), "detail": detail, "at": _now_iso(self.clock())}

    def _offline(self, detail: str) -> None:
        if self.offline_since is None:
            self.offline_since = self.clock()
            log.warning("bucket unreachable: keeping the current set", extra=_f(error=detail))
            self._news = True
        self.last_error = {
            "reason": Reason.OFFLINE.value,
            "detail": detail,
            "at": _now_iso(self.clock()),
        }

    def _online(self) -> None:
        if self.offline_since is not None:
            log.info("bucket reachable again")
            self.offline_since = None
            self._news = True
            if self.last_error and self.last_error.get("reason") == Reason.OFFLINE:
                self.last_error = None
        self.last_sync = self.clock()

    def _save(self) -> None:
        self.store.save(self.state)

    # -- status -------------------------------------------------------------------------

    def report(self, *, force: bool = False) -> bool:
        """Write the status locally and upload it when it changed or a heartbeat is due."""
        if self.sampler.due():
            self.sample_models()
        if not (force or self.reporter.due(self._news)):
            return False
        status = self.status()
        self._news = False
        return self.reporter.report(status)

    def sample_models(self) -> None:
        """A new window of model-quality signals from the running model servers."""
        if self.sampler.sample(targets_of(self._live_pods())):
            self._news = True

    def heal(self) -> list[str]:
        """When due (:class:`sync_pod.heal.Healer`): the applied set's always-running pods
        that the runtime does not run are replayed by a reconcile, the pass an apply or a
        start-up runs. Never while an apply is pending (that pass owns the runtime).
        Returns the pods found down."""
        if self.healer is None or self.state.applied is None or self.state.pending is not None:
            return []
        if not self.healer.due():
            return []
        try:
            running = self.runtime.pods()
        except EdgefleetError as exc:
            self.healer.looked([])
            self._error(Reason.RUNTIME, str(exc))
            return []
        wanted = {n: p for n, p in self._live_pods().items() if n != layout.SYNC_POD_NAME}
        down = [] if running is None else down_pods(wanted, running)
        self.healer.looked(down)
        if not down:
            return []
        log.warning(
            "pods of the applied set are down; replaying them",
            extra=_f(event="heal", pods=down, heals=self.healer.heals),
        )
        self._news = True
        try:
            self.runtime.reconcile(self.folder.live)
        except EdgefleetError as exc:
            self._error(Reason.RUNTIME, str(exc))
        return down

    def _live_pods(self) -> dict[str, Any]:
        """The applied set's pods by name, parsed (empty when the folder cannot be read)."""
        try:
            return {
                file_name[: -len(layout.MANIFEST_SUFFIX)]: parse_manifest(data)
                for file_name, data in self.folder.read().items()
            }
        except (OSError, ValueError, yaml.YAMLError):
            return {}

    def status(self) -> dict[str, Any]:
        applied = self.state.applied
        pods: list[dict[str, Any]] | None
        try:
            running = self.runtime.pods()
        except EdgefleetError as exc:
            running = None
            self._error(Reason.RUNTIME, str(exc))
        pods = None if running is None else [p.to_dict() for _, p in sorted(running.items())]
        health = self.health
        if running is not None and applied is not None:
            wanted = [
                f[: -len(layout.MANIFEST_SUFFIX)] for f in applied.hashes if f != SYNC_POD_FILE
            ]
            down = [n for n in wanted if not (n in running and running[n].running)]
            health = "degraded: " + ", ".join(down) if down else "healthy"
        last = self.state.last_rejection
        now = self.clock()
        return {
            "deviceId": self.config.device_id,
            "arch": self.config.arch,
            "channel": self.config.channel,
            "runtime": self.runtime.name,
            "agentVersion": __version__,
            "applied": None
            if applied is None
            else {
                "sequence": applied.sequence,
                "digest": applied.digest,
                "appliedAt": applied.applied_at,
                "manifests": dict(applied.hashes),
            },
            "pods": pods,
            "health": health,
            "offline": self.offline_since is not None,
            "offlineSince": _now_iso(self.offline_since) if self.offline_since else None,
            "lastSync": _now_iso(self.last_sync) if self.last_sync else None,
            "lastPoll": _now_iso(self.last_poll) if self.last_poll else None,
            "lastError": self.last_error,
            "lastRejection": None if last is None else _rejection_dict(last),
            "rejections": [_rejection_dict(r) for r in self.state.rejections[-10:]],
            "badDigests": list(self.state.bad_digests),
            "trustedKeys": [signing.key_id(k) for k in self.roots.trust.signing_keys()],
            **self.roots.status(applied.digest if applied else None, now),
            "reportedAt": _now_iso(now),
            # The next report comes at the latest after this, plus a poll: readers judge
            # staleness by it (an idle device only reports on change or heartbeat).
            "heartbeatSeconds": self.config.status_seconds,
            "pollSeconds": self.poll_interval(),
            "wakeup": self.wakeup_status() if self.wakeup_status else None,
            "models": list(self.sampler.summaries),
            "rollout": self.rollout.status(),
            "heal": None if self.healer is None else self.healer.status(_now_iso),
        }


def _rejection_dict(r: Rejection) -> dict[str, Any]:
    return {
        "reason": r.reason,
        "detail": r.detail,
        "at": r.at,
        "digest": r.digest,
        "generation": r.generation,
    }


def _hashes(files: Mapping[str, bytes]) -> dict[str, str]:
    return {f: hashlib.sha256(d).hexdigest() for f, d in sorted(files.items())}


def _opt_path(applied: AppliedSet | None) -> Path | None:
    return Path(applied.dir) if applied is not None else None


def _f(**values: Any) -> Mapping[str, Any]:
    return {"fields": values}

"""The sync agent: poll the channel's manifest set, verify it, apply it atomically behind a
health gate, and report.

One poll, when nothing changed, is one metadata request (the set object's generation).
A new generation is downloaded (bounded), decoded, verified (signatures when keys are
trusted, expiry, replay, target) and every manifest is policy-checked (the kubernetes
V1Pod model check through ``model_check``: a child process on devices); only then is the
set written into a fresh directory and switched in (see :mod:`sync_pod.folder`). The
runtime starts what changed; if the changed pods are not ready before the deadline, the
previous set is switched back and the bad set is remembered so it is not retried until
the channel's set changes again. Any failure keeps the last good set in force.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from device.health import HealthResult, Probe, check_probe, wait_healthy
from device.runtime import Runtime
from edgefleet import __version__
from edgefleet.core import layout, manifest_set, signing, trust
from edgefleet.core.bucket import Conflict, DeviceBucket, TooLarge
from edgefleet.core.errors import (
    EdgefleetError,
    InvalidInput,
    InvalidManifestSet,
    PolicyViolation,
    SetRejected,
    TransientError,
)
from edgefleet.core.policy import ModelCheck, canonical, check_manifests
from sync_pod.config import Config
from sync_pod.folder import FolderError, ManifestFolder
from sync_pod.state import AppliedSet, Pending, Rejection, State, StateStore
from sync_pod.status import StatusReporter

log = logging.getLogger(__name__)

SYNC_POD_FILE = layout.manifest_file_name(layout.SYNC_POD_NAME)

# Reasons beyond manifest_set.REJECT_*; reported verbatim in the status.
REJECT_INVALID_SET = "invalid-set"
REJECT_TOO_LARGE = "too-large"
REJECT_INVALID_MANIFEST = "invalid-manifest"
REJECT_POLICY = "policy"
REJECT_UNHEALTHY = "unhealthy"
ERROR_OFFLINE = "offline"
ERROR_NO_SET = "no-set"
ERROR_APPLY = "apply-failed"
ERROR_RUNTIME = "runtime-failed"
ERROR_CHECK = "check-failed"

# Outcomes of one poll.
UNCHANGED = "unchanged"
APPLIED = "applied"
REJECTED = "rejected"
ROLLED_BACK = "rolled-back"
OFFLINE = "offline"
FAILED = "failed"


def _now_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        process; the device's main runs it in a child, see :mod:`device.podcheck`)."""
        self.config = config
        self.bucket = bucket
        self.runtime = runtime
        self.clock = clock
        self.sleep = sleep
        self.probe = probe
        self.model_check = model_check
        self.policy = config.policy()
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
        self._pending_expiry: datetime | None = None
        self.last_sync: float | None = None
        self.last_poll: float | None = None
        self.last_error: dict[str, str] | None = None
        self.health = "unknown"
        self._news = True  # something worth reporting happened since the last report
        self.trust = config.trust()
        self.trust_path = config.state_dir / "trust.json"
        self.trust.load(self.trust_path)
        self.root_generation = -1
        self.running_expires_at: datetime | None = None
        if self.trust.insecure:
            log.warning(
                "INSECURE: %s=1: unsigned and expired manifest sets are accepted; development only",
                trust.INSECURE_ENV,
            )

    # -- lifecycle ----------------------------------------------------------------------

    def recover(self) -> None:
        """Finish or discard an apply a crash interrupted, then make the runtime match."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.folder.clean_swap_leftovers()
        current = self.folder.current()
        if current is not None and current == self.config.manifest_dir:
            self._adopt(current)
        pending = self.state.pending
        if pending is not None:
            if self.folder.current() == Path(pending.dir):
                log.info("resuming an interrupted apply", extra=_f(digest=pending.digest))
                if pending.deadline is None:
                    pending.deadline = self.clock() + self.config.health_timeout
                    self._save()
                self._finish(pending)
            else:
                log.info("discarding an interrupted apply", extra=_f(digest=pending.digest))
                if Path(pending.dir).is_dir() and Path(pending.dir).parent == self.folder.sets_dir:
                    shutil.rmtree(pending.dir, ignore_errors=True)
                self.state.pending = None
                self._save()
        # A crash after commit but before clean-up leaves old set dirs behind.
        self.folder.gc([_opt_path(self.state.applied), _opt_path(self.state.previous)])
        current = self.folder.current()
        if current is not None:
            try:
                self.runtime.reconcile(current)
            except EdgefleetError as exc:
                self._error(ERROR_RUNTIME, str(exc))

    def run(self, should_stop: Callable[[], bool], *, jitter: Callable[[], float]) -> None:
        """Poll until ``should_stop()``; ``jitter()`` gives a factor around 1.0 per sleep."""
        self.recover()
        self.report()
        while not should_stop():
            try:
                self.poll_once()
            except Exception as exc:  # keep the device's last good set, whatever happened
                log.exception("poll failed unexpectedly")
                self._error(FAILED, f"{type(exc).__name__}: {exc}")
            try:
                self.report()
            except Exception:
                log.exception("status report failed unexpectedly")
            delay = self.config.poll_seconds * jitter()
            deadline = time.monotonic() + delay
            while not should_stop() and time.monotonic() < deadline:
                self.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    # -- one poll -----------------------------------------------------------------------

    def poll_once(self) -> str:
        self.last_poll = self.clock()
        name = self.config.set_object
        try:
            generation = self.bucket.generation(name)
        except TransientError as exc:
            return self._offline(exc)
        self._online()
        self._refresh_trust()
        if generation == 0:
            self._error(ERROR_NO_SET, f"gs://{self.bucket.name}/{name} does not exist yet")
            return UNCHANGED
        if generation == self.state.seen_generation and self.state.pending is None:
            return UNCHANGED
        try:
            blob = self.bucket.read(name, max_bytes=manifest_set.MAX_SET_BYTES)
        except TooLarge as exc:
            return self._reject(REJECT_TOO_LARGE, str(exc), generation=generation)
        except Conflict:
            return UNCHANGED  # rewritten while we read: the next poll gets the new one
        except TransientError as exc:
            return self._offline(exc)
        if blob is None:
            self._error(ERROR_NO_SET, f"gs://{self.bucket.name}/{name} does not exist yet")
            return UNCHANGED
        generation = blob.generation
        raw_digest = hashlib.sha256(blob.data).hexdigest()
        try:
            signed = manifest_set.decode(blob.data)
        except InvalidManifestSet as exc:
            return self._reject(REJECT_INVALID_SET, str(exc), raw_digest, generation)
        candidate = signed.manifest_set
        digest = candidate.digest()
        applied = self.state.applied
        now = datetime.fromtimestamp(self.clock(), UTC)
        if applied is not None and digest == applied.digest:
            # Same content as what runs, rewritten: still judge its signatures, so that a
            # stripped or forged signature on the running set is reported, not ignored.
            try:
                manifest_set.verify(
                    signed, self.trust.signing_keys(), arch=self.config.arch,
                    channel=self.config.channel, now=now,
                    threshold=self.trust.signing_threshold(), insecure=self.trust.insecure,
                )  # fmt: skip
            except SetRejected as exc:
                return self._reject(exc.reason, str(exc), digest, generation)
            self.running_expires_at = candidate.expires_at
            self.state.seen_generation = generation
            self._save()
            return UNCHANGED
        if digest in self.state.bad_digests:
            self.state.seen_generation = generation
            self._save()
            log.info("set was rolled back before; not retrying", extra=_f(digest=digest))
            return UNCHANGED
        # A root-signed sequence reset (recovery from a fast-forward) lifts the replay
        # floor once; the set must still verify with the root's signing keys.
        reset = self.trust.take_reset(self.config.arch, self.config.channel)
        if reset:
            self.trust.save(self.trust_path)
            log.warning("root-signed sequence reset: replay floor lifted once")
        try:
            manifest_set.verify(
                signed,
                self.trust.signing_keys(),
                arch=self.config.arch,
                channel=self.config.channel,
                now=now,
                applied_sequence=applied.sequence if applied and not reset else None,
                applied_digest=applied.digest if applied and not reset else None,
                threshold=self.trust.signing_threshold(),
                insecure=self.trust.insecure,
            )
        except SetRejected as exc:
            return self._reject(exc.reason, str(exc), digest, generation)
        entries = candidate.effective()
        self._pending_expiry = candidate.expires_at
        try:
            checked = check_manifests(
                {f: e.yaml for f, e in entries.items()},
                self.policy,
                expected_names={f: e.name for f, e in entries.items()},
                model_check=self.model_check,
            )
        except TransientError as exc:
            # Not checked is not accepted: keep the current set, retry on the next poll.
            self._error(ERROR_CHECK, f"checking set {digest[:12]}: {exc}")
            return FAILED
        files: dict[str, bytes] = {}
        pods: dict[str, dict[str, Any]] = {}
        for file_name, outcome in checked.items():
            if isinstance(outcome, PolicyViolation):
                return self._reject(REJECT_POLICY, f"{file_name}: {outcome}", digest, generation)
            if isinstance(outcome, InvalidInput):
                return self._reject(
                    REJECT_INVALID_MANIFEST, f"{file_name}: {outcome}", digest, generation
                )
            entry = entries[file_name]
            pods[entry.name] = outcome
            # What was checked is what runs: the canonical JSON of the strict reading.
            files[file_name] = canonical(outcome)
        return self._apply(candidate, digest, generation, files, pods)

    def _refresh_trust(self) -> None:
        """Adopt a new ``trust/root.json`` when its generation changed and it verifies with
        the trusted root keys; anything else is one recorded rejection, the old trust stays."""
        if not self.trust.root_keys:
            return
        try:
            generation = self.bucket.generation(trust.ROOT_OBJECT)
            if generation in (0, self.root_generation):
                return
            blob = self.bucket.read(trust.ROOT_OBJECT, max_bytes=trust.MAX_ROOT_BYTES)
        except (TransientError, TooLarge, Conflict) as exc:
            log.warning("cannot read the root document", extra=_f(error=str(exc)))
            return
        if blob is None:
            return
        self.root_generation = blob.generation
        try:
            root = self.trust.accept(blob.data)
        except (InvalidInput, SetRejected) as exc:
            reason = getattr(exc, "reason", trust.REJECT_ROOT_INVALID)
            self._reject(reason, str(exc))
            return
        self.trust.save(self.trust_path, blob.data)
        log.info("root of trust updated", extra=_f(version=root.version))

    # -- apply, health gate, commit or roll back ----------------------------------------

    def _apply(
        self,
        candidate: manifest_set.ManifestSet,
        digest: str,
        generation: int,
        files: dict[str, bytes],
        pods: dict[str, dict[str, Any]],
    ) -> str:
        current = self.folder.current()
        old_files = self.folder.read(current) if current else {}
        if SYNC_POD_FILE not in files and SYNC_POD_FILE in old_files:
            # Never remove our own sync pod: a set without it keeps the current one.
            files[SYNC_POD_FILE] = old_files[SYNC_POD_FILE]
        changed = sorted(
            f[: -len(layout.MANIFEST_SUFFIX)]
            for f, data in files.items()
            if old_files.get(f) != data and f != SYNC_POD_FILE
        )
        log.info(
            "applying manifest set",
            extra=_f(sequence=candidate.sequence, digest=digest, changed=changed),
        )
        try:
            self.runtime.prefetch({n: pods[n] for n in changed if n in pods})
        except EdgefleetError as exc:
            # Nothing switched yet: the old set keeps running; retry on the next poll.
            self._error(ERROR_RUNTIME, f"pulling images of set {digest[:12]}: {exc}")
            return FAILED
        set_dir = self.folder.set_dir(candidate.sequence, digest)
        pending = Pending(
            digest=digest,
            sequence=candidate.sequence,
            dir=str(set_dir),
            previous_dir=str(current) if current else None,
            hashes={f: hashlib.sha256(d).hexdigest() for f, d in sorted(files.items())},
            generation=generation,
            changed=changed,
        )
        self.state.pending = pending
        self._save()
        try:
            self.folder.prepare(set_dir, files)
            self.folder.switch(set_dir)
        except FolderError as exc:
            self.state.pending = None
            self._save()
            self._error(ERROR_APPLY, str(exc))
            return FAILED
        pending.deadline = self.clock() + self.config.health_timeout
        self._save()
        return self._finish(pending)

    def _finish(self, pending: Pending) -> str:
        """Reconcile the runtime with the switched-in set and gate on health."""
        set_dir = Path(pending.dir)
        try:
            started = self.runtime.reconcile(set_dir)
        except EdgefleetError as exc:
            result = HealthResult(False, {"runtime": str(exc)})
        else:
            gated = sorted(set(pending.changed) | set(started))
            result = self._wait_ready(set_dir, gated, pending.deadline or self.clock())
        if result.healthy:
            return self._commit(pending)
        return self._rollback(pending, result)

    def _commit(self, pending: Pending) -> str:
        now = self.clock()
        self.state.previous = self.state.applied
        self.state.applied = AppliedSet(
            digest=pending.digest,
            sequence=pending.sequence,
            dir=pending.dir,
            hashes=pending.hashes,
            generation=pending.generation,
            applied_at=_now_iso(now),
        )
        self.state.pending = None
        self.state.seen_generation = pending.generation
        self._save()
        self.running_expires_at = self._pending_expiry
        self.health = "healthy"
        self.last_error = None
        self._news = True
        self.folder.gc([Path(self.state.applied.dir), _opt_path(self.state.previous)])
        log.info("manifest set applied", extra=_f(sequence=pending.sequence, digest=pending.digest))
        return APPLIED

    def _rollback(self, pending: Pending, result: HealthResult) -> str:
        previous = Path(pending.previous_dir) if pending.previous_dir else None
        if previous is None or not previous.is_dir():
            previous = self._empty_set(Path(pending.dir))
        detail = f"set {pending.sequence} not healthy in time, rolled back: {result.summary()}"
        log.error("rolling back", extra=_f(digest=pending.digest, detail=result.detail))
        try:
            self.folder.switch(previous)
        except FolderError as exc:
            self._error(ERROR_APPLY, f"rollback failed: {exc}")
            return FAILED
        try:
            self.runtime.reconcile(previous)
        except EdgefleetError as exc:
            log.error("runtime failed while rolling back", extra=_f(error=str(exc)))
        else:
            # A rollback is done when the old pods serve again: wait for them (same gate,
            # same budget) so that what is reported next is what runs.
            deadline = self.clock() + self.config.health_timeout
            restored = self._wait_ready(previous, pending.changed, deadline)
            if not restored.healthy:
                log.error(
                    "previous set not ready after rolling back",
                    extra=_f(digest=pending.digest, detail=restored.detail),
                )
        self.state.mark_bad(pending.digest)
        self.state.pending = None
        self.state.seen_generation = pending.generation
        self.state.reject(
            Rejection(
                REJECT_UNHEALTHY,
                detail,
                _now_iso(self.clock()),
                pending.digest,
                pending.generation,
            )
        )
        self._save()
        self.health = "rolled-back"
        self._news = True
        self.folder.gc([_opt_path(self.state.applied), _opt_path(self.state.previous), previous])
        return ROLLED_BACK

    def _empty_set(self, failed_dir: Path) -> Path:
        """What to roll back to when there was no previous set: only our own sync pod."""
        files = {}
        sync_pod = failed_dir / SYNC_POD_FILE
        if sync_pod.is_file():
            files[SYNC_POD_FILE] = sync_pod.read_bytes()
        return self.folder.prepare(self.folder.sets_dir / "empty", files)

    def _adopt(self, folder: Path) -> None:
        """Turn a plain manifest folder (pre-edgefleet device) into a switched set dir."""
        files = self.folder.read(folder)
        target = self.folder.prepare(self.folder.sets_dir / f"adopted-{int(self.clock())}", files)
        self.folder.switch(target)
        log.info("adopted existing manifest folder", extra=_f(files=sorted(files)))

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
                out[name] = yaml.safe_load(path.read_bytes())
        return out

    # -- bookkeeping --------------------------------------------------------------------

    def _reject(self, reason: str, detail: str, digest: str = "", generation: int = 0) -> str:
        log.error("manifest set rejected", extra=_f(reason=reason, detail=detail, digest=digest))
        self.state.reject(Rejection(reason, detail, _now_iso(self.clock()), digest, generation))
        if generation:
            self.state.seen_generation = generation
        self._save()
        self.last_error = {"reason": reason, "detail": detail, "at": _now_iso(self.clock())}
        self._news = True
        return REJECTED

    def _error(self, reason: str, detail: str) -> None:
        if self.last_error is None or self.last_error.get("detail") != detail:
            log.error("sync error", extra=_f(reason=reason, detail=detail))
            self._news = True
        self.last_error = {"reason": reason, "detail": detail, "at": _now_iso(self.clock())}

    def _offline(self, exc: Exception) -> str:
        if self.offline_since is None:
            self.offline_since = self.clock()
            log.warning("bucket unreachable: keeping the current set", extra=_f(error=str(exc)))
            self._news = True
        self.last_error = {
            "reason": ERROR_OFFLINE,
            "detail": str(exc),
            "at": _now_iso(self.clock()),
        }
        return OFFLINE

    def _online(self) -> None:
        if self.offline_since is not None:
            log.info("bucket reachable again")
            self.offline_since = None
            self._news = True
            if self.last_error and self.last_error.get("reason") == ERROR_OFFLINE:
                self.last_error = None
        self.last_sync = self.clock()

    def _save(self) -> None:
        self.store.save(self.state)

    # -- status -------------------------------------------------------------------------

    def report(self, *, force: bool = False) -> bool:
        """Write the status locally and upload it when it changed or a heartbeat is due."""
        if not (force or self.reporter.due(self._news)):
            return False
        status = self.status()
        self._news = False
        return self.reporter.report(status)

    def status(self) -> dict[str, Any]:
        applied = self.state.applied
        pods: list[dict[str, Any]] | None
        try:
            running = self.runtime.pods()
        except EdgefleetError as exc:
            running = None
            self._error(ERROR_RUNTIME, str(exc))
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
            "trustedKeys": [signing.key_id(k) for k in self.trust.signing_keys()],
            "trust": {
                "rootVersion": self.trust.root.version if self.trust.root else None,
                "insecure": self.trust.insecure,
            },
            # A running set past (or near) its expiry means the control plane stopped
            # re-signing, or this device stopped hearing from it: operators see it here.
            "setExpiresAt": _now_iso(self.running_expires_at.timestamp())
            if self.running_expires_at
            else None,
            "setFreshness": _freshness(self.running_expires_at, now),
            "reportedAt": _now_iso(now),
            # The next report comes at the latest after this, plus a poll: readers judge
            # staleness by it (an idle device only reports on change or heartbeat).
            "heartbeatSeconds": self.config.status_seconds,
            "pollSeconds": self.config.poll_seconds,
        }


def _freshness(expires_at: datetime | None, now: float) -> str:
    """``fresh``, ``stale`` (under a day left) or ``expired`` for the running set."""
    if expires_at is None:
        return "unknown"
    left = expires_at.timestamp() - now
    return "expired" if left <= 0 else "stale" if left < 24 * 3600 else "fresh"


def _rejection_dict(r: Rejection) -> dict[str, Any]:
    return {
        "reason": r.reason,
        "detail": r.detail,
        "at": r.at,
        "digest": r.digest,
        "generation": r.generation,
    }


def _opt_path(applied: AppliedSet | None) -> Path | None:
    return Path(applied.dir) if applied is not None else None


def _f(**values: Any) -> Mapping[str, Any]:
    return {"fields": values}

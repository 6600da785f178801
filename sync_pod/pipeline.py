"""One poll of the sync agent as a pipeline of small stages with typed outcomes.

    fetch -> decode -> verify -> select -> check -> prefetch -> apply -> gate
          -> commit | rollback -> report

Every stage takes the previous stage's product and returns the next product or a
:class:`PollResult`, which ends the poll. The stages that only look at data (decode,
verify, select, check) live here and are pure; the ones that touch the bucket, the
runtime or the disk are small methods of :class:`sync_pod.agent.Agent`. What a result
makes the agent remember (the generation it has judged, a rejection, a digest never to
retry, a back-off on a set that failed for a reason that may pass) is decided in ONE
place, :func:`sync_pod.memory.remember`, from the result alone.

Plug-in points for other features:

- ``select`` (:func:`select`): which version of the set this device runs when the set
  carries a rollout. A pass-through today.
- ``check`` (:func:`check`): returns, per manifest file, the exact bytes the runtime will
  read; ``apply`` writes exactly those bytes (``Checked.files``).
- the wait between polls: :data:`Wait` (``wait(timeout) -> reason``), see
  :mod:`sync_pod.agent`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.core import layout, manifest_set
from edgefleet.core.errors import (
    InvalidInput,
    InvalidManifestSet,
    PolicyViolation,
    SetRejected,
    TransientError,
)
from edgefleet.core.manifest_set import ManifestEntry, ManifestSet, SignedSet
from edgefleet.core.policy import ModelCheck, Policy, canonical, check_manifests


class Outcome(StrEnum):
    """How one poll ended. A ``StrEnum``: compares equal to its value ("applied")."""

    UNCHANGED = "unchanged"  # nothing new (or nothing that may be applied)
    APPLIED = "applied"  # a new set passed its gate and is committed
    REJECTED = "rejected"  # the set's content must not run (never retried as is)
    ROLLED_BACK = "rolled-back"  # the set failed its gate; the previous one runs again
    ROLLBACK_FAILED = "rollback-failed"  # it failed its gate and the rollback failed too
    BACKING_OFF = "backing-off"  # this set failed before; waiting before trying again
    OFFLINE = "offline"  # the bucket cannot be reached
    FAILED = "failed"  # something that may pass (runtime, disk, check child) failed


class Reason(StrEnum):
    """Why a poll did not apply; reported verbatim in the status (``lastError`` /
    ``lastRejection``). The signature/expiry/replay reasons are manifest_set.REJECT_*."""

    INVALID_SET = "invalid-set"
    TOO_LARGE = "too-large"
    INVALID_MANIFEST = "invalid-manifest"
    POLICY = "policy"
    UNHEALTHY = "unhealthy"
    OFFLINE = "offline"
    NO_SET = "no-set"
    APPLY = "apply-failed"
    RUNTIME = "runtime-failed"
    CHECK = "check-failed"
    ROLLBACK = "rollback-failed"
    UNEXPECTED = "failed"


@dataclass(frozen=True, slots=True)
class PollResult:
    """The end of a poll: what happened, to which set, and why.

    ``reason`` is a :class:`Reason` value or a manifest_set.REJECT_* string.
    ``generation``/``digest`` name the set judged (0/"" when none was).
    """

    outcome: Outcome
    reason: str = ""
    detail: str = ""
    digest: str = ""
    generation: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.UNCHANGED, Outcome.APPLIED)


# -- products of the stages ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fetched:
    """The set object's bytes at ``generation``."""

    data: bytes
    generation: int


@dataclass(frozen=True, slots=True)
class Decoded:
    """A well-formed set document (signatures not yet judged)."""

    signed: SignedSet
    digest: str
    generation: int
    payload: bytes  # the signed payload the digest is of (encoded once, verified)

    @property
    def manifest_set(self) -> ManifestSet:
        return self.signed.manifest_set


@dataclass(frozen=True, slots=True)
class Verified:
    """A set this device may apply: right target, trusted signature, not expired, newer."""

    manifest_set: ManifestSet
    digest: str
    generation: int


@dataclass(frozen=True, slots=True)
class Selected:
    """What this device runs of the set: file name -> entry (``select`` decides)."""

    manifest_set: ManifestSet
    digest: str
    generation: int
    entries: Mapping[str, ManifestEntry]


@dataclass(frozen=True, slots=True)
class Checked:
    """Policy-checked manifests. ``files``: file name -> the exact bytes the runtime will
    read (``apply`` writes these); ``pods``: pod name -> the parsed pod."""

    manifest_set: ManifestSet
    digest: str
    generation: int
    files: Mapping[str, bytes]
    pods: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def sequence(self) -> int:
        return self.manifest_set.sequence


@dataclass(frozen=True, slots=True)
class Planned:
    """What an apply changes: the full folder content to write and the pods that change
    (the sync pod's own manifest is kept and never counted as a change)."""

    checked: Checked
    files: Mapping[str, bytes]
    changed: tuple[str, ...]


# The check of the V1Pod model; the wait between polls; the clock.
Wait = Callable[[float], str]
"""``wait(timeout) -> reason``: sleep up to ``timeout`` seconds between polls; return
early (e.g. "stop", "wake") when something asks for a poll now or for the agent to stop.
The reason "stop" ends the loop."""

WAIT_TIMEOUT = "timeout"
WAIT_STOP = "stop"


# -- pure stages ----------------------------------------------------------------------


def decode(fetched: Fetched) -> Decoded | PollResult:
    """Parse the set document (bounded by :data:`manifest_set.MAX_SET_BYTES`)."""
    try:
        signed = manifest_set.decode(fetched.data)
    except InvalidManifestSet as exc:
        raw_digest = hashlib.sha256(fetched.data).hexdigest()
        return PollResult(
            Outcome.REJECTED, Reason.INVALID_SET, str(exc), raw_digest, fetched.generation
        )
    payload = signed.manifest_set.payload()
    return Decoded(signed, hashlib.sha256(payload).hexdigest(), fetched.generation, payload)


@dataclass(frozen=True, slots=True)
class Trust:
    """What ``verify`` judges a set against: the device's keys and target, the time, and
    the set it runs now (sequence + digest: replay protection)."""

    keys: tuple[Ed25519PublicKey, ...]
    arch: str
    channel: str
    now: datetime
    applied_sequence: int | None = None
    applied_digest: str | None = None
    threshold: int = 1  # distinct trusted signatures needed (the root document's)
    insecure: bool = False  # EDGEFLEET_INSECURE_ALLOW_UNSIGNED: development only


def verify(decoded: Decoded, trust: Trust, *, running: bool = False) -> Verified | PollResult:
    """Target, signatures, expiry and (unless ``running``: the rewritten copy of the set
    that runs now) replay. A rejected set is reported, never applied."""
    try:
        s = manifest_set.verify(
            decoded.signed,
            trust.keys,
            arch=trust.arch,
            channel=trust.channel,
            now=trust.now,
            applied_sequence=None if running else trust.applied_sequence,
            applied_digest=None if running else trust.applied_digest,
            threshold=trust.threshold,
            insecure=trust.insecure,
            payload=decoded.payload,
        )
    except SetRejected as exc:
        return PollResult(
            Outcome.REJECTED, exc.reason, str(exc), decoded.digest, decoded.generation
        )
    return Verified(s, decoded.digest, decoded.generation)


def select(verified: Verified) -> Selected | PollResult:
    """Which manifests of the set this device runs. Today: all of them (the channel's own
    entry winning over a fleet-wide one of the same name)."""
    return Selected(
        verified.manifest_set,
        verified.digest,
        verified.generation,
        verified.manifest_set.effective(),
    )


def check(
    selected: Selected, policy: Policy, model_check: ModelCheck | None = None
) -> Checked | PollResult:
    """Every manifest parsed, model-checked and policy-checked; the bytes to write.

    A check that could not run (the child process failed) is not a verdict on the set:
    FAILED, retried after a back-off, and the current set stays."""
    entries = selected.entries
    try:
        verdicts = check_manifests(
            {f: e.yaml for f, e in entries.items()},
            policy,
            expected_names={f: e.name for f, e in entries.items()},
            model_check=model_check,
        )
    except TransientError as exc:
        return PollResult(
            Outcome.FAILED,
            Reason.CHECK,
            f"checking set {selected.digest[:12]}: {exc}",
            selected.digest,
            selected.generation,
        )
    files: dict[str, bytes] = {}
    pods: dict[str, Mapping[str, Any]] = {}
    for file_name, verdict in verdicts.items():
        if isinstance(verdict, InvalidInput):
            policy_error = isinstance(verdict, PolicyViolation)
            reason = Reason.POLICY if policy_error else Reason.INVALID_MANIFEST
            return PollResult(
                Outcome.REJECTED,
                reason,
                f"{file_name}: {verdict}",
                selected.digest,
                selected.generation,
            )
        entry = entries[file_name]
        pods[entry.name] = verdict
        # What was checked is what runs: the canonical JSON of the strict reading (kubelet
        # and podman both read JSON), never the YAML text a laxer parser might read else.
        files[file_name] = canonical(verdict)
    return Checked(selected.manifest_set, selected.digest, selected.generation, files, pods)


def plan(checked: Checked, live: Mapping[str, bytes], sync_pod_file: str) -> Planned:
    """The folder content to write: the checked files, plus the sync pod's own manifest
    when the set lacks it (a set never removes the agent that applies it)."""
    files = dict(checked.files)
    if sync_pod_file not in files and sync_pod_file in live:
        files[sync_pod_file] = live[sync_pod_file]
    changed = tuple(
        sorted(
            f[: -len(layout.MANIFEST_SUFFIX)]
            for f, data in files.items()
            if live.get(f) != data and f != sync_pod_file
        )
    )
    return Planned(checked, files, changed)

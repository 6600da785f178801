"""Read and update the manifest sets in the deploy bucket, and keep their mirrors in step.

Every update is optimistic: read the set and its generation, compute the successor, write
it with ``ifGenerationMatch`` on that generation. A :class:`~edgefleet.cloud.storage.Conflict`
means someone else wrote in between; the caller starts over. A result with the same
content as what is stored is not written at all, so replays cost no write and devices see
no new sequence.

With a signing key, the previous set must verify with the control plane's own public key
(or another trusted key, during a rotation) before anything is built on it: a set a
bucket writer tampered with is reported and never re-signed. Every write also stores a
copy at ``trusted/ARCH/CHANNEL.json``; when the live set does not verify, the store offers
that copy (if IT verifies) as the snapshot's ``fallback``, so tag_monitor rebuilds the
channel from its own last good content plus registry truth instead of freezing it.

Sets expire (default 7 days). A write whose content is unchanged is skipped only while the
stored set has more than ``refresh`` (default half the TTL) left; after that the same
content is re-signed with a new sequence and expiry. :meth:`SetStore.resign` does that for
one set: ``edgefleet resign`` and the ``resign_sets`` function (a scheduler tick) call it.

Right after a set is written, ``on_written`` (the MQTT wake-up publisher, see
:mod:`edgefleet.cloud.wakeup`) is told, so devices poll at once; its failure is logged,
never the write's.

After a write, the human-readable mirror (``ARCH/CHANNEL/NAME-pod.yaml``,
``ARCH/all/NAME-pod.yaml``) is made to match the set that was written. Mirror objects
are compared by MD5 from one listing and only differences are written or deleted. If the
set moved on meanwhile, the mirror is re-synced from the newer set, so concurrent
writers end with the mirror matching the last set.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgefleet.cloud.storage import Bucket
from edgefleet.core import layout, manifest_set, signing
from edgefleet.core.bucket import Conflict
from edgefleet.core.errors import ConfigError, EdgefleetError, InvalidInput, SetRejected
from edgefleet.core.logs import fields
from edgefleet.core.manifest_set import ManifestEntry, ManifestSet, RolloutRule

log = logging.getLogger(__name__)

SECRET_PREFIX = "projects/"
MIRROR_SYNC_ROUNDS = 5
UPDATE_ATTEMPTS = 20
MAX_CLOCK_SKEW_S = 24 * 3600
KEEP_ROLLOUT = "keep"  # SetStore.write: keep the stored rollout block if still valid


class UntrustedSet(EdgefleetError):
    """The stored set is malformed or fails verification; nothing is built on it."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A set as read, with the generation a write must match (0: no set yet)."""

    arch: str
    channel: str
    generation: int
    manifest_set: ManifestSet | None
    problem: str = ""  # why the stored set is not trusted ("" when it is)
    claimed_sequence: int | None = None  # an untrusted set's sequence, if it decodes
    fallback: ManifestSet | None = None  # the verified trusted copy, when the live one is not

    @property
    def trusted(self) -> bool:
        return not self.problem

    @property
    def entries(self) -> tuple[ManifestEntry, ...]:
        return self.manifest_set.entries if self.manifest_set else ()


@dataclass(frozen=True, slots=True)
class WriteResult:
    arch: str
    channel: str
    written: bool
    generation: int
    manifest_set: ManifestSet


def load_signer(value: str | None) -> Ed25519PrivateKey | None:
    """``SIGNING_KEY``: a PEM file path, or ``projects/P/secrets/S/versions/V`` (Secret
    Manager; needs ``google-cloud-secret-manager``). Empty: sets stay unsigned."""
    if not value or not value.strip():
        return None
    value = value.strip()
    if value.startswith(SECRET_PREFIX) and "/secrets/" in value:
        return signing.private_key_from_pem(_secret_bytes(value), value)
    return signing.load_private_key(value)


def _secret_bytes(name: str) -> bytes:
    parts = name.split("/")
    if len(parts) != 6 or parts[2] != "secrets" or parts[4] != "versions":
        raise ConfigError(
            f"SIGNING_KEY {name!r}: expected projects/PROJECT/secrets/SECRET/versions/VERSION"
        )
    try:
        from google.cloud import secretmanager
    except ImportError as exc:
        raise ConfigError(
            "SIGNING_KEY names a Secret Manager secret but google-cloud-secret-manager is "
            "not installed: pip install 'edgefleet[functions]'"
        ) from exc
    try:
        client = secretmanager.SecretManagerServiceClient()
        return bytes(client.access_secret_version(name=name, timeout=10).payload.data)
    except Exception as exc:  # the client raises many google.api_core types
        raise ConfigError(f"cannot read signing key {name}: {exc}") from exc


def md5_b64(data: bytes) -> str:
    """The MD5 as GCS lists it (base64)."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


class SetStore:
    def __init__(
        self,
        bucket: Bucket,
        *,
        signer: Ed25519PrivateKey | None = None,
        trusted_keys: Sequence[Ed25519PublicKey] = (),
        clock: Callable[[], datetime] | None = None,
        ttl: timedelta = manifest_set.DEFAULT_TTL,
        on_written: Callable[[WriteResult], None] | None = None,
        refresh: timedelta | None = None,
    ) -> None:
        self.bucket = bucket
        self._on_written = on_written
        self._signer = signer
        keys = list(trusted_keys)
        if signer is not None:
            keys.insert(0, signer.public_key())
        self._trusted = tuple(keys)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._ttl = ttl
        self._refresh = refresh if refresh is not None else ttl / 2

    @property
    def signing(self) -> bool:
        return self._signer is not None

    # -- read ----------------------------------------------------------------------

    def read(self, arch: str, channel: str) -> Snapshot:
        """The stored set (one storage request) and whether it may be built upon."""
        name = layout.set_object(arch, channel)
        blob = self.bucket.fetch(name, max_bytes=manifest_set.MAX_SET_BYTES)
        if blob is None:
            return Snapshot(arch, channel, 0, None)
        signed = None
        try:
            signed, s = self._judge(blob.data, arch, channel)
        except (InvalidInput, SetRejected) as exc:
            problem = str(exc)
            log.error(
                "stored manifest set is not trusted; not building on it",
                extra=fields(
                    event="set-untrusted",
                    object=f"gs://{self.bucket.name}/{name}",
                    generation=blob.generation,
                    reason=getattr(exc, "reason", "malformed"),
                    detail=problem,
                ),
            )
            claimed = signed.manifest_set.sequence if signed is not None else None
            fallback = self._trusted_copy(arch, channel)
            return Snapshot(arch, channel, blob.generation, None, problem, claimed, fallback)
        return Snapshot(arch, channel, blob.generation, s)

    def _judge(
        self, data: bytes, arch: str, channel: str
    ) -> tuple[manifest_set.SignedSet, ManifestSet]:
        signed = manifest_set.decode(data)
        s = signed.manifest_set
        if self._signer is not None:
            # Expiry is no reason to distrust our own previous set: check at issue time.
            manifest_set.verify(signed, self._trusted, arch=arch, channel=channel, now=s.issued_at)
        elif (s.arch, s.channel) != (arch, channel):
            raise SetRejected(manifest_set.REJECT_WRONG_TARGET, f"set is for {s.arch}/{s.channel}")
        return signed, s

    def _trusted_copy(self, arch: str, channel: str) -> ManifestSet | None:
        """Our copy of the last set written, if it verifies (only when signing: unsigned,
        anyone could have written the copy too)."""
        if self._signer is None:
            return None
        blob = self.bucket.fetch(
            layout.trusted_copy_object(arch, channel), max_bytes=manifest_set.MAX_SET_BYTES
        )
        if blob is None:
            return None
        try:
            return self._judge(blob.data, arch, channel)[1]
        except (InvalidInput, SetRejected):
            return None

    # -- write ---------------------------------------------------------------------

    def write(
        self,
        snap: Snapshot,
        entries: Iterable[ManifestEntry],
        *,
        poll_seconds: int | None = manifest_set.KEEP_POLL_HINT,
        rollout: RolloutRule | str | None = KEEP_ROLLOUT,
    ) -> WriteResult:
        """Store ``entries`` as the successor of ``snap`` (raise Conflict if it moved).

        ``poll_seconds``: the devices' poll hint (default: keep the stored one).
        ``rollout``: the rollout block of the new set; by default the stored one is kept
        while the manifests it replaces are unchanged (see :func:`carried_rollout`).
        """
        entries = tuple(entries)
        if isinstance(rollout, str):
            rollout = carried_rollout(snap.manifest_set, entries)
        if not snap.trusted:
            raise UntrustedSet(
                f"{layout.set_object(snap.arch, snap.channel)} is not trusted "
                f"({snap.problem}); run `edgefleet bootstrap --replace-untrusted` to rebuild it"
            )
        now = self._clock()
        new = manifest_set.next_set(
            snap.manifest_set,
            snap.arch,
            snap.channel,
            entries,
            now=now,
            ttl=self._ttl,
            poll_seconds=poll_seconds,
            rollout=rollout,
        )
        if new.same_content(snap.manifest_set) and not self.needs_refresh(snap, now):
            assert snap.manifest_set is not None
            return WriteResult(snap.arch, snap.channel, False, snap.generation, snap.manifest_set)
        return self._store(snap, new)

    def needs_refresh(self, snap: Snapshot, now: datetime | None = None) -> bool:
        """True when the stored set expires within the refresh window (re-sign it)."""
        s = snap.manifest_set
        return s is not None and s.expires_at - (now or self._clock()) <= self._refresh

    def resign(self, arch: str, channel: str, *, force: bool = False) -> WriteResult | None:
        """Re-sign the stored set with a new sequence and expiry when it expires within the
        refresh window (or ``force``); None when there is no set. Raises UntrustedSet."""
        for _ in range(UPDATE_ATTEMPTS):
            snap = self.read(arch, channel)
            if snap.generation == 0:
                return None
            if snap.trusted and not (force or self.needs_refresh(snap)):
                assert snap.manifest_set is not None
                return WriteResult(arch, channel, False, snap.generation, snap.manifest_set)
            try:
                if not snap.trusted:
                    raise UntrustedSet(
                        f"{layout.set_object(arch, channel)} is not trusted ({snap.problem})"
                    )
                assert snap.manifest_set is not None
                return self._store(snap, self._successor(snap, snap.entries))
            except Conflict:
                continue
        raise Conflict(f"{layout.set_object(arch, channel)} kept changing: gave up")

    def _successor(self, snap: Snapshot, entries: Iterable[ManifestEntry]) -> ManifestSet:
        return manifest_set.next_set(
            snap.manifest_set, snap.arch, snap.channel, entries, now=self._clock(), ttl=self._ttl
        )

    def replace(self, snap: Snapshot, entries: Iterable[ManifestEntry]) -> WriteResult:
        """Write ``entries`` over an untrusted set (an operator's explicit choice).

        The new sequence still exceeds the untrusted set's when that one is plausible
        (not in the future), so devices never mistake the rebuild for a replay.
        """
        now = self._clock()
        previous = None
        claimed = snap.claimed_sequence
        floor = snap.fallback.sequence if snap.fallback else 0
        if claimed is not None and claimed <= (now.timestamp() + MAX_CLOCK_SKEW_S) * 1000:
            floor = max(floor, claimed)
        if floor:
            previous = ManifestSet(snap.arch, snap.channel, floor, now, now)
        new = manifest_set.next_set(
            previous, snap.arch, snap.channel, entries, now=now, ttl=self._ttl
        )
        return self._store(snap, new)

    def _store(self, snap: Snapshot, new: ManifestSet) -> WriteResult:
        data = manifest_set.encode(new, [self._signer] if self._signer else [])
        generation = self.bucket.write(
            layout.set_object(snap.arch, snap.channel),
            data,
            if_generation_match=snap.generation,
            content_type="application/json",
        )
        self._keep_copy(snap.arch, snap.channel, data)
        log.info(
            "manifest set written",
            extra=fields(
                event="set-written",
                arch=snap.arch,
                channel=snap.channel,
                sequence=new.sequence,
                generation=generation,
                manifests=[e.name for e in new.entries],
                signed=self._signer is not None,
            ),
        )
        result = WriteResult(snap.arch, snap.channel, True, generation, new)
        self._notify(result)
        scopes = _changed_scopes(snap.manifest_set, new)
        self.sync_mirrors(snap.arch, snap.channel, new, generation, scopes)
        return result

    def _notify(self, result: WriteResult) -> None:
        if self._on_written is None:
            return
        try:
            self._on_written(result)
        except Exception:  # a wake-up is an optimisation: the set is written regardless
            log.exception("set-written hook failed", extra=fields(event="set-notify-failed"))

    def _keep_copy(self, arch: str, channel: str, data: bytes) -> None:
        """The trusted copy (see the module doc); best effort: the live set is written, and
        racing writers may leave the copy one write behind (it is only a fallback)."""
        if self._signer is None:
            return
        try:
            self.bucket.write(
                layout.trusted_copy_object(arch, channel), data, content_type="application/json"
            )
        except EdgefleetError as exc:
            log.warning(
                "could not store the trusted copy of a set",
                extra=fields(
                    event="trusted-copy-failed", arch=arch, channel=channel, error=str(exc)
                ),
            )

    def update(
        self,
        arch: str,
        channel: str,
        change: Callable[[Snapshot], Iterable[ManifestEntry]],
        *,
        replace_untrusted: bool = False,
        poll_seconds: int | None = manifest_set.KEEP_POLL_HINT,
    ) -> WriteResult:
        """Read-modify-write with retries on conflict; ``change`` maps a snapshot to entries
        (``poll_seconds``: see :meth:`write`)."""
        for _ in range(UPDATE_ATTEMPTS):
            snap = self.read(arch, channel)
            try:
                if not snap.trusted and replace_untrusted:
                    return self.replace(snap, change(snap))
                return self.write(snap, change(snap), poll_seconds=poll_seconds)
            except Conflict:
                continue
        raise Conflict(f"{layout.set_object(arch, channel)} kept changing: gave up")

    # -- mirror --------------------------------------------------------------------

    def sync_mirrors(
        self,
        arch: str,
        channel: str,
        written: ManifestSet,
        generation: int,
        scopes: Sequence[str] = (manifest_set.SCOPE_CHANNEL, manifest_set.SCOPE_ALL),
    ) -> None:
        """Make the readable mirror of ``scopes`` match the newest set (see module doc)."""
        if not scopes:
            return
        current, current_generation = written, generation
        name = layout.set_object(arch, channel)
        for _ in range(MIRROR_SYNC_ROUNDS):
            for scope in scopes:
                folder = channel if scope == manifest_set.SCOPE_CHANNEL else layout.FLEET_WIDE
                wanted = {
                    layout.manifest_object(arch, folder, e.name): e.yaml.encode()
                    for e in current.entries
                    if e.scope == scope
                }
                self._sync_folder(f"{arch}/{folder}/", wanted)
            live = self.bucket.generation(name)
            if live == current_generation:
                return
            snap = self.read(arch, channel)
            if snap.manifest_set is None:
                return
            current, current_generation = snap.manifest_set, snap.generation

    def _sync_folder(self, prefix: str, wanted: Mapping[str, bytes]) -> None:
        listed = {
            info.name: info.md5_hash
            for info in self.bucket.list_objects(prefix)
            if "/" not in info.name[len(prefix) :]
        }
        for name, data in wanted.items():
            if listed.get(name) != md5_b64(data):
                self.bucket.write(name, data, content_type="application/yaml")
        for name in listed:
            if name not in wanted and layout.is_manifest_file_name(name[len(prefix) :]):
                self.bucket.delete(name)


def carried_rollout(
    old: ManifestSet | None, entries: Sequence[ManifestEntry]
) -> RolloutRule | None:
    """The stored rollout, kept while the baseline manifests it replaces are unchanged.

    A writer that changes one of them (``tag_monitor`` after a manual retag of the
    channel) ends the rollout in the set: the tag wins, the controller then records the
    rollout as superseded.
    """
    rule = old.rollout if old is not None else None
    if rule is None or old is None:
        return None
    for candidate in rule.entries:
        before = old.entry(manifest_set.SCOPE_CHANNEL, candidate.name)
        after = (
            next((e for e in entries if (e.scope, e.name) == (before.scope, before.name)), None)
            if before is not None
            else None
        )
        if before is None or after is None or after.yaml != before.yaml:
            return None
    return rule


def _changed_scopes(old: ManifestSet | None, new: ManifestSet) -> tuple[str, ...]:
    def by_scope(s: ManifestSet | None, scope: str) -> list[tuple[str, str]]:
        return [(e.name, e.yaml) for e in (s.entries if s else ()) if e.scope == scope]

    return tuple(
        scope
        for scope in (manifest_set.SCOPE_CHANNEL, manifest_set.SCOPE_ALL)
        if by_scope(old, scope) != by_scope(new, scope) or old is None
    )

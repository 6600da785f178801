"""The agent's root of trust: which keys sign sets, kept up to date from ``trust/root.json``.

A stage before ``fetch``: when the root document's generation changed, it is read
(bounded), verified against the provisioned root keys (or the newest root accepted so
far) and adopted; the accepted bytes are kept in ``STATE_DIR/trust.json`` so a restart
cannot be rolled back to an older root. A root that does not verify is one recorded
rejection (``root-signature``, ``root-rollback``, ``root-invalid``); the old trust stays.
Adopting a new root makes the channel's set be judged again (a set signed by a newly
authorised key may have arrived first). See :mod:`edgefleet.core.trust` for the format.

It also remembers the expiry of the sets it verified, so the status can say whether the
running set is fresh, stale (under a day left: the control plane stopped re-signing, or
this device stopped hearing from it) or expired.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from edgefleet.core import trust
from edgefleet.core.bucket import Conflict, DeviceBucket, TooLarge
from edgefleet.core.errors import InvalidInput, SetRejected, TransientError
from edgefleet.core.fsutil import atomic_write
from sync_pod.config import Config
from sync_pod.state import Rejection, State

log = logging.getLogger(__name__)

STALE_SECONDS = 24 * 3600


class RootOfTrust:
    def __init__(self, config: Config, bucket: DeviceBucket, clock: Callable[[], float]) -> None:
        self.config = config
        self.bucket = bucket
        self.clock = clock
        self.trust = config.trust()
        self.path = config.state_dir / "trust.json"
        self.expiry_path = config.state_dir / "expiry.json"
        self.trust.load(self.path)
        self.root_generation = -1
        if self.trust.insecure:
            log.warning(
                "INSECURE: %s=1: unsigned and expired manifest sets are accepted; "
                "for development only",
                trust.INSECURE_ENV,
            )
        elif not self.trust.root_keys and not self.trust.direct_keys:
            log.error(
                "no key is trusted: every set will be rejected (no-trusted-key); provision "
                "the root key (ROOT_KEYS)"
            )

    # -- the stage ------------------------------------------------------------------------

    def refresh(self, state: State) -> bool:
        """Adopt a new, verified root document; True when the trust changed."""
        if not self.trust.root_keys:
            return False
        try:
            generation = self.bucket.generation(trust.ROOT_OBJECT)
            if generation in (0, self.root_generation):
                return False
            blob = self.bucket.read(trust.ROOT_OBJECT, max_bytes=trust.MAX_ROOT_BYTES)
        except TooLarge as exc:
            self._reject(state, trust.REJECT_ROOT_INVALID, str(exc), b"")
            return False
        except (TransientError, Conflict):
            return False  # the set's own fetch reports offline; try again next poll
        if blob is None:
            return False
        self.root_generation = blob.generation
        before = self.trust.root.version if self.trust.root else 0
        try:
            root = self.trust.accept(blob.data)
        except (InvalidInput, SetRejected) as exc:
            reason = getattr(exc, "reason", trust.REJECT_ROOT_INVALID)
            self._reject(state, reason, str(exc), blob.data)
            return False
        self.trust.save(self.path, blob.data)
        if root.version == before:
            return False
        log.info("root of trust updated", extra={"fields": {"version": root.version}})
        state.seen_generation = 0  # judge the channel's set again under the new keys
        return True

    def reset_pending(self) -> bool:
        return self.trust.reset_pending(self.config.arch, self.config.channel)

    def take_reset(self) -> bool:
        """True once per root-signed sequence reset of this device's channel."""
        taken = self.trust.take_reset(self.config.arch, self.config.channel)
        if taken:
            self.trust.save(self.path)
            log.warning("root-signed sequence reset: the replay floor is lifted once")
        return taken

    # -- freshness ------------------------------------------------------------------------

    def saw_expiry(self, digest: str, expires_at: datetime) -> None:
        known = self._expiries()
        iso = _iso(expires_at)
        if known.get(digest) == iso:
            return
        known = {digest: iso, **{k: v for k, v in known.items() if k != digest}}
        atomic_write(self.expiry_path, json.dumps(dict(list(known.items())[:8])).encode())

    def status(self, running_digest: str | None, now: float) -> dict[str, Any]:
        expires = self._expiries().get(running_digest or "")
        return {
            "trust": {
                "rootVersion": self.trust.root.version if self.trust.root else None,
                "insecure": self.trust.insecure,
            },
            "setExpiresAt": expires,
            "setFreshness": freshness(expires, now),
        }

    def _expiries(self) -> dict[str, str]:
        try:
            doc = json.loads(self.expiry_path.read_bytes())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in doc.items() if isinstance(v, str)} if isinstance(doc, dict) else {}

    def _reject(self, state: State, reason: str, detail: str, data: bytes) -> None:
        log.error("root document rejected", extra={"fields": {"reason": reason, "detail": detail}})
        digest = hashlib.sha256(data).hexdigest()
        state.reject(Rejection(reason, detail, _iso(datetime.fromtimestamp(self.clock(), UTC)),
                               digest, 0))  # fmt: skip


def freshness(expires_at: str | None, now: float) -> str:
    """``fresh``, ``stale`` (under a day left), ``expired`` or ``unknown`` (pure)."""
    if not expires_at:
        return "unknown"
    try:
        left = datetime.strptime(expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "unknown"
    seconds = left.timestamp() - now
    return "expired" if seconds <= 0 else "stale" if seconds < STALE_SECONDS else "fresh"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

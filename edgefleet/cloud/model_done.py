"""``TRAINER-DONE`` markers -> build requests: the logic behind ``model_done_watcher``.

Training writes a model version to ``gs://MODELS/MODEL/VERSION/…`` and, last, a
``TRAINER-DONE`` marker somewhere below that prefix. The version is named
``MODEL_MAJOR_UNIXTIME`` (``equipmentparts_1_1501089026``). Anything else is not ours
(ignored) or malformed (rejected with a reason); nothing here does I/O.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from edgefleet.cloud.build import BuildRequest
from edgefleet.core import layout
from edgefleet.core.errors import InvalidInput

MARKER = "TRAINER-DONE"
# 2001-09-09 (first 10-digit unix time): older "training times" are typos.
MIN_UNIXTIME = 1_000_000_000
FUTURE_SLACK_SECONDS = 24 * 3600
_MODEL_RE = re.compile(r"^[a-z](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
_VERSION_RE = re.compile(r"^(?P<model>.+)_(?P<major>[0-9]{1,6})_(?P<time>[0-9]{9,11})$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


@dataclass(frozen=True, slots=True)
class StoredObject:
    bucket: str
    name: str


def is_marker(name: str) -> bool:
    return name == MARKER or name.endswith("/" + MARKER)


def parse_version(model: str, version: str, *, now: float | None = None) -> tuple[int, int]:
    """``(major, trained_at)`` of ``version``, which must be ``MODEL_MAJOR_UNIXTIME``."""
    if not _MODEL_RE.fullmatch(model):
        raise InvalidInput(
            f"model name {model!r} must be lowercase letters, digits, '-' or '_' "
            "(starting with a letter, at most 64)"
        )
    m = _VERSION_RE.fullmatch(version)
    if not m or m.group("model") != model:
        raise InvalidInput(
            f"version {version!r} under {model}/ must be named {model}_MAJOR_UNIXTIME, "
            f"e.g. {model}_1_1501089026"
        )
    major, trained_at = int(m.group("major")), int(m.group("time"))
    limit = (time.time() if now is None else now) + FUTURE_SLACK_SECONDS
    if not MIN_UNIXTIME <= trained_at <= limit:
        raise InvalidInput(
            f"version {version!r}: training time {trained_at} is not a plausible unix time"
        )
    return major, trained_at


def build_request(
    obj: StoredObject, arches: Sequence[str], *, now: float | None = None
) -> BuildRequest | None:
    """The build a finalized object asks for; ``None`` when it is not a marker."""
    if not is_marker(obj.name):
        return None
    if not _BUCKET_RE.fullmatch(obj.bucket or ""):
        raise InvalidInput(f"bucket name {obj.bucket!r} is not a valid GCS bucket name")
    parts = obj.name.split("/")
    if len(parts) < 3 or any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(
            f"marker gs://{obj.bucket}/{obj.name} must be at MODEL/VERSION/[…/]{MARKER}"
        )
    model, version = parts[0], parts[1]
    major, trained_at = parse_version(model, version, now=now)
    for arch in arches:
        layout.check_arch(arch)
    return BuildRequest(
        model=model,
        version=version,
        major=major,
        trained_at=trained_at,
        source=f"gs://{obj.bucket}/{model}/{version}/",
        arches=tuple(arches),
    )

"""Following a rollout from the deploy bucket (the I/O beside the pure edgefleet.operator.fleet).

``edgefleet rollout wait`` and the local-stack harness (the demo, e2e, benches) use it:
read every device's report, and the manifest set each arch's devices of a channel read
now, to tell "this device refused the set carrying the digest" (fail at once, with the
device's reason) from "refused an older set" (it will retry the newer one).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgefleet.core import layout, manifest_set
from edgefleet.core.bucket import TooLarge
from edgefleet.core.errors import InvalidInput
from edgefleet.operator import fleet

if TYPE_CHECKING:
    from edgefleet.cloud.storage import Bucket

MAX_REPORT_BYTES = 256 * 1024
STATUS_PREFIX = "status/"


def read_reports(bucket: Bucket) -> list[fleet.DeviceRow]:
    """Every ``status/*.json`` as a row; malformed or oversized reports are skipped with
    a warning on stderr naming the object."""
    rows = []
    for object_name in bucket.list(STATUS_PREFIX):
        try:
            blob = bucket.read(object_name, max_bytes=MAX_REPORT_BYTES)
        except TooLarge as exc:
            print(f"edgefleet: skipping {exc}", file=sys.stderr)
            continue
        if blob is None:
            continue
        try:
            rows.append(fleet.parse_report(blob.data, object_name))
        except InvalidInput as exc:
            print(f"edgefleet: skipping {exc}", file=sys.stderr)
    return rows


def sets_carrying(
    bucket: Bucket, channel: str, arches: Iterable[str], digest: str
) -> dict[str, str]:
    """``{arch: set digest}`` of the sets published now for ``channel`` that name the
    image ``digest`` (as devices compute it: the content digest of the set). A set that
    is missing, unreadable or does not name ``digest`` is left out."""
    out: dict[str, str] = {}
    for arch in sorted(set(arches)):
        try:
            blob = bucket.read(
                layout.set_object(arch, channel), max_bytes=manifest_set.MAX_SET_BYTES
            )
            if blob is None or digest.encode() not in blob.data:
                continue
            out[arch] = manifest_set.decode(blob.data).manifest_set.digest()
        except (TooLarge, InvalidInput):
            continue
    return out


@dataclass(frozen=True, slots=True)
class Watch:
    """One look at a rollout: its progress and the devices that refused it."""

    progress: fleet.RolloutProgress
    refusals: list[fleet.Refusal]
    rows: list[fleet.DeviceRow]


def look(bucket: Bucket, channel: str, digest: str, arch: str | None = None) -> Watch:
    rows = read_reports(bucket)
    progress = fleet.rollout_progress(rows, channel, digest, arch)
    refusals: list[fleet.Refusal] = []
    if not progress.complete:
        arches = {r.arch for r in rows if r.channel == channel and arch in (None, r.arch)}
        sets = sets_carrying(bucket, channel, arches, digest)
        refusals = fleet.rollout_refusals(rows, channel, digest, sets, arch)
    return Watch(progress, refusals, rows)

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

from edgefleet.core import layout, manifest_set, strict_yaml
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
        except TooLarge as exc:  # the name is a device's choice: cleaned like its content
            print(f"edgefleet: skipping {fleet.clean(str(exc))}", file=sys.stderr)
            continue
        if blob is None:
            continue
        try:
            rows.append(fleet.parse_report(blob.data, object_name))
        except InvalidInput as exc:
            print(f"edgefleet: skipping {exc}", file=sys.stderr)
    return rows


SOURCE_DIGEST_ANNOTATION = "edgefleet.dev/source-digest"


@dataclass(frozen=True, slots=True)
class Carrying:
    """The set published now for one arch that carries the rollout's digest."""

    set_digest: str  # the content digest of the set, as devices record their refusals
    image_digest: str  # the arch's image: the digest itself, or the image of its index


def sets_carrying(
    bucket: Bucket, channel: str, arches: Iterable[str], digest: str
) -> dict[str, Carrying]:
    """``{arch: Carrying}`` for the sets published now for ``channel`` that name the image
    ``digest``, or a multi-arch index of that digest (a channel manifest annotated
    ``edgefleet.dev/source-digest``: each arch then runs its own image). A set that is
    missing, unreadable or does not name ``digest`` is left out."""
    out: dict[str, Carrying] = {}
    for arch in sorted(set(arches)):
        try:
            blob = bucket.read(
                layout.set_object(arch, channel), max_bytes=manifest_set.MAX_SET_BYTES
            )
            if blob is None or digest.encode() not in blob.data:
                continue
            published = manifest_set.decode(blob.data).manifest_set
            image = image_for(published, digest)
            if image is not None:
                out[arch] = Carrying(published.digest(), image)
        except (TooLarge, InvalidInput):
            continue
    return out


def image_for(published: manifest_set.ManifestSet, digest: str) -> str | None:
    """The image digest a device of ``published`` runs for ``digest``: ``digest`` itself
    when a channel manifest pins it, the pinned image of a manifest annotated with it as
    its source index, else None. The set is read unverified (the CLI holds no device
    trust), so each manifest goes through the strict, bounded reader."""
    for entry in published.entries:
        if entry.scope != manifest_set.SCOPE_CHANNEL or digest not in entry.yaml:
            continue
        try:
            pod = strict_yaml.load(entry.yaml, what=entry.name)
        except InvalidInput:
            continue
        images = _pinned_images(pod)
        if digest in images:
            return digest
        meta = pod.get("metadata") if isinstance(pod, dict) else None
        notes = meta.get("annotations") if isinstance(meta, dict) else None
        if isinstance(notes, dict) and notes.get(SOURCE_DIGEST_ANNOTATION) == digest and images:
            return images[0]
    return None


def _pinned_images(pod: object) -> list[str]:
    spec = pod.get("spec") if isinstance(pod, dict) else None
    containers = spec.get("containers") if isinstance(spec, dict) else None
    out = []
    for c in containers if isinstance(containers, list) else []:
        image = c.get("image") if isinstance(c, dict) else None
        if isinstance(image, str) and "@" in image:
            out.append(image.rsplit("@", 1)[1])
    return out


@dataclass(frozen=True, slots=True)
class Watch:
    """One look at a rollout: its progress and the devices that refused it."""

    progress: fleet.RolloutProgress
    refusals: list[fleet.Refusal]
    rows: list[fleet.DeviceRow]


def look(
    bucket: Bucket,
    channel: str,
    digest: str,
    arch: str | None = None,
    *,
    rows: list[fleet.DeviceRow] | None = None,
) -> Watch:
    """``rows``: the reports already read (e.g. through the fleet index); else read here."""
    rows = read_reports(bucket) if rows is None else rows
    progress = fleet.rollout_progress(rows, channel, digest, arch)
    if progress.complete:  # every device runs ``digest`` itself: no set to read
        return Watch(progress, [], rows)
    arches = sorted({r.arch for r in rows if r.channel == channel and arch in (None, r.arch)})
    carrying = sets_carrying(bucket, channel, arches, digest)
    # Each arch waits for its own image: a multi-arch index's digest maps to one per arch.
    parts = [fleet.rollout_progress(rows, channel, _image(carrying, a, digest), a) for a in arches]
    progress = fleet.RolloutProgress(
        channel,
        digest,
        sum(p.total for p in parts),
        tuple(sorted(d for p in parts for d in p.done)),
        tuple(sorted(d for p in parts for d in p.pending)),
    )
    refusals: list[fleet.Refusal] = []
    if not progress.complete:
        for a in arches:
            if a in carrying:
                refusals += fleet.rollout_refusals(
                    rows, channel, carrying[a].image_digest, {a: carrying[a].set_digest}, a
                )
    return Watch(progress, sorted(refusals, key=lambda f: f.device_id), rows)


def _image(carrying: dict[str, Carrying], arch: str, digest: str) -> str:
    return carrying[arch].image_digest if arch in carrying else digest

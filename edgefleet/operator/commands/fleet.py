"""``edgefleet promote``, ``edgefleet status``, ``edgefleet rollout wait``: operate a fleet."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from edgefleet.core import layout, refs
from edgefleet.core.errors import ConfigError, InvalidInput, InvalidReference
from edgefleet.operator import context, fleet, watch

if TYPE_CHECKING:
    from edgefleet.cloud.storage import Bucket


def register(sub: argparse._SubParsersAction) -> None:
    promote = sub.add_parser(
        "promote",
        help="move a release channel to an image (retag in the registry)",
        description="Point CHANNEL's tag at SOURCE's manifest. Devices on that channel "
        "follow within one poll interval. Rolling back is promoting the old digest.",
    )
    promote.add_argument("source", help="REPO@sha256:DIGEST or REPO:TAG to promote")
    promote.add_argument("--channel", required=True, help="release channel, e.g. beta")
    promote.set_defaults(handler=_promote)

    status = sub.add_parser("status", help="show what every device runs")
    _bucket_arg(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument(
        "--check",
        action="store_true",
        help="exit 3 when any device is unhealthy, offline or stale",
    )
    status.add_argument(
        "--stale-after",
        type=float,
        default=fleet.DEFAULT_STALE_SECONDS,
        metavar="SECONDS",
        help="a device not heard from for this long is stale (default %(default)s)",
    )
    status.add_argument("--channel", help="only devices on this channel")
    status.set_defaults(handler=_status)

    rollout = sub.add_parser("rollout", help="follow a rollout")
    verbs = rollout.add_subparsers(dest="verb", metavar="VERB", required=True)
    wait = verbs.add_parser(
        "wait",
        help="wait until every device of a channel runs a digest, healthy",
        description="Wait until every device of CHANNEL reports DIGEST running and healthy. "
        "Stops at once when a device reports that it rejected or rolled back the set that "
        "carries DIGEST, printing the device, its reason and the runtime's message.",
        epilog=f"exit codes: 0 complete; 1 error (bad argument, bucket unreachable); "
        f"2 usage; {EXIT_TIMEOUT} not complete within --timeout; {EXIT_REFUSED} a device "
        "rejected or rolled back the digest",
    )
    _bucket_arg(wait)
    wait.add_argument("--channel", required=True)
    wait.add_argument("--digest", required=True, help="sha256:… the devices must run")
    wait.add_argument("--arch", help="only devices of this arch")
    wait.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS")
    wait.add_argument(
        "--min-devices",
        type=int,
        default=1,
        help="fail unless at least this many devices are on the channel (default 1)",
    )
    wait.set_defaults(handler=_rollout_wait)


# `rollout wait` exit codes besides 0 (complete), 1 (error) and 2 (usage).
EXIT_TIMEOUT = 4
EXIT_REFUSED = 5


def _bucket_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bucket", help="deploy bucket (default: $DEPLOY_BUCKET or local stack)")


def _promote(args: argparse.Namespace) -> int:
    from edgefleet.cloud.registry import NotFound, RegistryClient, parse_insecure

    context.apply_defaults()
    channel = _channel(args.channel)
    source = refs.parse(args.source)
    if not (source.digest or source.tag):
        raise InvalidReference(f"{args.source}: name a digest (REPO@sha256:…) or a tag (REPO:TAG)")
    client = RegistryClient(insecure=parse_insecure(os.environ.get("INSECURE_REGISTRIES")))
    manifest = client.get_manifest(source)
    target = source.with_tag(channel)
    try:
        previous: str | None = client.resolve(target)
    except NotFound:
        previous = None
    if previous == manifest.digest:
        print(f"{target} already points at {manifest.digest}: nothing to do")
        return 0
    client.put_manifest(target, manifest)
    was = f" (was {previous})" if previous else " (new channel tag)"
    print(f"promoted {source.name}@{manifest.digest} to {target}{was}")
    if previous:
        print(f"roll back with: edgefleet promote {source.name}@{previous} --channel {channel}")
    return 0


def _status(args: argparse.Namespace) -> int:
    rows = fleet.with_versions(watch.read_reports(_deploy_bucket(args.bucket)), VersionLookup())
    if args.channel:
        rows = [r for r in rows if r.channel == args.channel]
    now = datetime.now(UTC)
    if args.json:
        json.dump([fleet.to_json(r, now, args.stale_after) for r in rows], sys.stdout, indent=2)
        print()
    elif rows:
        print(fleet.table(rows, now, args.stale_after))
    else:
        print("no device has reported yet")
    if args.check:
        bad = [r for r in rows if fleet.problems(r, now, args.stale_after)]
        if bad or not rows:
            print(
                f"edgefleet: {len(bad)} of {len(rows)} devices need attention"
                if rows
                else "edgefleet: no device has reported",
                file=sys.stderr,
            )
            return 3
    return 0


def _rollout_wait(args: argparse.Namespace) -> int:
    channel = _channel(args.channel)
    digest = refs.check_digest(args.digest)
    if args.arch:
        layout.check_arch(args.arch)
    bucket = _deploy_bucket(args.bucket)
    deadline = time.monotonic() + args.timeout
    start = time.monotonic()
    last_line = ""
    while True:
        seen = watch.look(bucket, channel, digest, args.arch)
        progress = seen.progress
        line = (
            f"{channel}: {len(progress.done)}/{progress.total} devices run {digest[:19]}… healthy"
        )
        if line != last_line:
            print(f"[{time.monotonic() - start:5.1f}s] {line}", file=sys.stderr)
            last_line = line
        if progress.complete and progress.total >= args.min_devices:
            print(
                f"rollout of {digest} to {channel} complete: {progress.total} devices "
                f"in {time.monotonic() - start:.1f}s"
            )
            return 0
        if seen.refusals:
            for refusal in seen.refusals:
                print(
                    f"edgefleet: rollout of {digest[:19]}… to {channel} failed: {refusal.line()}",
                    file=sys.stderr,
                )
            return EXIT_REFUSED
        if time.monotonic() >= deadline:
            pending = ", ".join(progress.pending) or f"fewer than {args.min_devices} devices"
            print(
                f"edgefleet: rollout of {digest} to {channel} not complete after "
                f"{args.timeout:.0f}s; waiting on: {pending} (see `edgefleet status`)",
                file=sys.stderr,
            )
            return EXIT_TIMEOUT
        time.sleep(1.0)


def _channel(value: str) -> str:
    channel = layout.check_channel(value)
    configured = layout.parse_channels(os.environ.get("CHANNELS"))
    if channel not in configured:
        raise InvalidInput(
            f"channel {channel!r} is not one of {','.join(configured)}: "
            "set CHANNELS (as for the functions) to add it"
        )
    return channel


def _deploy_bucket(bucket_name: str | None) -> Bucket:
    from edgefleet.cloud.storage import Bucket, make_client

    context.apply_defaults()
    name = bucket_name or os.environ.get("DEPLOY_BUCKET")
    if not name:
        raise ConfigError(
            "no deploy bucket: pass --bucket, set DEPLOY_BUCKET or run `edgefleet up`"
        )
    return Bucket(make_client(), name)


VERSION_LABEL = "org.opencontainers.image.version"


class VersionLookup:
    """The VERSION column: each running image's version label, asked once per digest
    (content-addressed, so never stale) through one registry client. A registry that
    cannot answer leaves the column empty and is asked again next time."""

    def __init__(self) -> None:
        from edgefleet.cloud.registry import RegistryClient, parse_insecure

        self._client = RegistryClient(
            insecure=parse_insecure(os.environ.get("INSECURE_REGISTRIES"))
        )
        self._versions: dict[str, str | None] = {}

    def __call__(self, image: str) -> str | None:
        from edgefleet.core.errors import EdgefleetError

        try:
            ref = refs.parse(image)
        except InvalidReference:
            return None
        if not ref.digest:
            return None
        if ref.digest not in self._versions:
            try:
                config = self._client.get_config(ref, self._client.get_manifest(ref))
                labels = (config.get("config") or {}).get("Labels") or {}
                value = labels.get(VERSION_LABEL)
                self._versions[ref.digest] = str(value) if value else None
            except (EdgefleetError, OSError, AttributeError):
                return None
        return self._versions[ref.digest]

"""``edgefleet rollout start|status|pause|resume|abort``: progressive rollouts.

The operator writes a rollout's state (``rollouts/ARCH/CHANNEL.json``, with generation
preconditions); the ``rollout_controller`` function does the rest at its next tick
(sets, judgement, the tag on completion). The operator needs no signing key.
``rollout wait`` lives with ``status`` in :mod:`edgefleet.operator.commands.fleet`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from edgefleet.cloud import rollout
from edgefleet.core import layout, refs
from edgefleet.core.errors import InvalidInput, InvalidReference


def register_verbs(verbs: argparse._SubParsersAction) -> None:
    """Add start, status, pause, resume and abort to ``edgefleet rollout``."""
    start = verbs.add_parser(
        "start",
        help="roll an image out to a channel step by step, judged by the model's metrics",
        description="Start a progressive rollout of REF on CHANNEL: a cohort of devices "
        "(a percentage per step) runs it while its metrics are compared with the other "
        "devices'; it advances while every gate passes and halts and reverts by itself "
        "when one fails. See docs/rollouts.md.",
    )
    start.add_argument("ref", help="REPO@sha256:DIGEST (or REPO:TAG, resolved now)")
    start.add_argument("--channel", required=True)
    start.add_argument("--bucket", help="deploy bucket (default: $DEPLOY_BUCKET or local stack)")
    start.add_argument(
        "--steps", default="10,50,100", help="percent of the channel per step (default 10,50,100)"
    )
    start.add_argument(
        "--step-interval",
        default="10m",
        help="how long a step must pass its gates before the next (default 10m)",
    )
    start.add_argument(
        "--min-devices",
        type=int,
        default=rollout.DEFAULT_MIN_DEVICES,
        help="cohort devices that must report on the candidate before any verdict "
        "(default %(default)s; fewer if the cohort is smaller)",
    )
    start.add_argument(
        "--max-failure",
        default="5%",
        help="share of the cohort allowed to roll back or reject the candidate (default 5%%)",
    )
    start.add_argument(
        "--gate",
        action="append",
        metavar='"METRIC OP VALUE[x]"',
        help="latency_p95 | error_rate | confidence | drift, <=, >=, <, >; x = relative to "
        "the baseline devices (default: "
        + "; ".join(rollout.DEFAULT_GATES).replace("%", "%%")
        + ")",
    )
    start.add_argument("--arch", help="only this arch (default: every arch the image has)")
    start.set_defaults(handler=_start)

    status = verbs.add_parser("status", help="show rollouts: step, cohort, gates, verdict")
    status.add_argument("--channel")
    status.add_argument("--bucket", help="deploy bucket (default: $DEPLOY_BUCKET or local stack)")
    status.add_argument("--json", action="store_true", help="print the rollout documents")
    status.set_defaults(handler=_status)

    for action, text in (
        ("pause", "hold a rollout at its step (nothing reverts)"),
        ("resume", "continue a paused rollout (its step's clock restarts)"),
        ("abort", "end a rollout: every device back on the baseline, the tag stays"),
    ):
        verb = verbs.add_parser(action, help=text)
        verb.add_argument("--channel", required=True)
        verb.add_argument("--arch", help="only this arch (default: every arch)")
        verb.add_argument("--bucket", help="deploy bucket (default: $DEPLOY_BUCKET or local stack)")
        verb.set_defaults(handler=_operate, action=action)


def _bucket(name: str | None) -> Any:
    from edgefleet.operator.commands.fleet import _deploy_bucket

    return _deploy_bucket(name)


def _channel(value: str) -> str:
    from edgefleet.operator.commands.fleet import _channel as check

    return check(value)


def _registry() -> Any:
    from edgefleet.cloud.registry import RegistryClient, parse_insecure

    return RegistryClient(insecure=parse_insecure(os.environ.get("INSECURE_REGISTRIES")))


def _start(args: argparse.Namespace) -> int:
    spec = {  # every argument checked before anything is contacted
        "steps": rollout.parse_steps(args.steps),
        "step_interval": rollout.parse_duration(args.step_interval),
        "min_devices": args.min_devices,
        "max_failure": rollout.parse_ratio(args.max_failure),
        "gates": [rollout.parse_gate(g) for g in args.gate] if args.gate else None,
        "arch": layout.check_arch(args.arch) if args.arch else None,
    }
    if args.min_devices < 1:
        raise InvalidInput("--min-devices must be at least 1")
    channel = _channel(args.channel)
    started = start_rollout(_bucket(args.bucket), _registry(), args.ref, channel, **spec)
    for r in started:
        steps = ",".join(f"{s:g}" for s in r.steps)
        print(
            f"rollout {r.id} started on {r.arch}/{r.channel}: {r.candidate.digest} over "
            f"{r.baseline.digest}, steps {steps}% every {r.step_interval:g} s, gates: "
            + "; ".join(str(g) for g in r.gates)
        )
    print(f"follow it with: edgefleet rollout status --channel {channel}")
    return 0


def start_rollout(
    bucket: Any,
    client: Any,
    ref: str,
    channel: str,
    *,
    rollout_id: str | None = None,
    arch: str | None = None,
    **spec: Any,
) -> list[rollout.Rollout]:
    """Write a new rollout of ``ref`` on ``channel`` for every arch the image and the
    channel's current tag share (one rollout id for all). ``spec``: steps, step_interval,
    min_devices, max_failure, gates (see :func:`edgefleet.cloud.rollout.new_rollout`)."""
    from edgefleet.cloud import platforms
    from edgefleet.cloud.registry import NotFound
    from edgefleet.cloud.rollout_controller import write_new

    source = refs.parse(ref)
    manifest = client.get_manifest(source)
    pinned = refs.parse(f"{source.name}@{manifest.digest}")
    candidates = platforms.resolve(client, pinned)
    try:
        baselines = platforms.resolve(client, source.with_tag(channel))
    except NotFound:
        raise InvalidInput(
            f"{source.name}:{channel} does not exist, so there is no baseline to compare "
            f"with: `edgefleet promote {pinned} --channel {channel}` moves it at once"
        ) from None
    arches = [a for a in candidates if a in baselines and (not arch or a == arch)]
    if not arches:
        raise InvalidInput(
            f"{pinned} and {source.name}:{channel} share no arch" + (f" {arch}" if arch else "")
        )
    now = datetime.now(UTC)
    rollout_id = rollout_id or rollout.new_id()
    started = []
    for a in sorted(arches):
        r = rollout.new_rollout(
            arch=a,
            channel=channel,
            repository=source.name,
            source=str(pinned),
            candidate=rollout.Version(candidates[a], f"{source.name}@{candidates[a]}"),
            baseline=rollout.Version(baselines[a], f"{source.name}@{baselines[a]}"),
            now=now,
            rollout_id=rollout_id,
            **spec,
        )
        write_new(bucket, r)
        started.append(r)
    return started


def _operate(args: argparse.Namespace) -> int:
    from edgefleet.cloud.rollout_controller import operate

    bucket = _bucket(args.bucket)
    channel = _channel(args.channel)
    arches = [layout.check_arch(args.arch)] if args.arch else _arches_with_rollout(bucket, channel)
    if not arches:
        raise InvalidInput(f"no rollout on channel {channel}: nothing to {args.action}")
    for arch in arches:
        r = operate(bucket, arch, channel, args.action, datetime.now(UTC))
        print(f"rollout {r.id} on {arch}/{channel}: {r.state} ({r.verdict})")
    return 0


def _arches_with_rollout(bucket: Any, channel: str) -> list[str]:
    out = []
    for name in bucket.list(layout.ROLLOUTS_PREFIX):
        target = layout.parse_rollout_object(name)
        if target is not None and target[1] == channel:
            out.append(target[0])
    return out


def read_all(bucket: Any, channel: str | None = None) -> list[rollout.Rollout]:
    """Every rollout in the bucket (of ``channel``), newest first; invalid ones skipped
    with a one-line warning."""
    out = []
    for name in bucket.list(layout.ROLLOUTS_PREFIX):
        target = layout.parse_rollout_object(name)
        if target is None or (channel and target[1] != channel):
            continue
        blob = bucket.read(name, max_bytes=rollout.MAX_STATE_BYTES)
        if blob is None:
            continue
        try:
            out.append(rollout.decode(blob.data))
        except (InvalidInput, InvalidReference) as exc:
            print(f"edgefleet: skipping {name}: {exc}", file=sys.stderr)
    return sorted(out, key=lambda r: r.updated_at, reverse=True)


def _status(args: argparse.Namespace) -> int:
    bucket = _bucket(args.bucket)
    channel = _channel(args.channel) if args.channel else None
    rollouts = read_all(bucket, channel)
    if args.json:
        json.dump([r.to_dict() for r in rollouts], sys.stdout, indent=2)
        print()
        return 0
    if not rollouts:
        print("no rollout" + (f" on channel {channel}" if channel else ""))
        return 0
    print("\n\n".join(describe(r) for r in rollouts))
    return 0


def describe(r: rollout.Rollout) -> str:
    """The human view of one rollout (pure): what `rollout status` prints."""
    c = r.cohort
    steps = " → ".join(
        f"[{s:g}%]" if i == r.step_index else f"{s:g}%" for i, s in enumerate(r.steps)
    )
    lines = [
        f"rollout {r.id}  {r.arch}/{r.channel}  {r.state.upper()}",
        f"  candidate {_short(r.candidate.digest)}  baseline {_short(r.baseline.digest)}"
        f"  ({r.repository})",
        f"  step {r.step_index + 1}/{len(r.steps)}: {steps}  since "
        f"{rollout.fmt_time(r.step_started_at)}  (interval {r.step_interval:g} s)",
        f"  cohort: {c.get('devices', 0)} devices, {c.get('reported', 0)} reported on the "
        f"candidate, {c.get('failures', 0)} failed (max {r.max_failure:.0%}); "
        f"baseline: {c.get('baselineDevices', 0)} devices",
        "  gates:                        candidate    baseline",
    ]
    lines += [f"    {line}" for line in gate_lines(r)]
    lines.append(f"  verdict: {r.verdict}")
    return "\n".join(lines)


def gate_lines(r: rollout.Rollout) -> Sequence[str]:
    results = list(r.results) or [g.to_dict() for g in r.gates]
    out = []
    for g in results:
        spec = f"{g['metric']} {g['op']} {g['value']:g}{'x' if g.get('relative') else ''}"
        mark = {True: "ok", False: "FAIL", None: "…"}[g.get("ok")]
        out.append(
            f"{spec:26} {_val(g.get('candidate')):>11}  {_val(g.get('baseline')):>10}  {mark}"
        )
    return out


def _val(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _short(digest: str) -> str:
    return digest[:19] + "…"

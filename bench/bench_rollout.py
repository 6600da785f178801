"""Benchmark of a rollout on the real local stack: tag move -> every device of the channel
serving the new digest.

Starts a stack with 3 devices on one channel (own namespaces, own podman storage, sync
agents polling every --poll seconds), builds two real model-server images through the
TRAINER-DONE path (v1, v2), then promotes them alternately to the channel and measures,
per promotion:

  function  tag move (registry PUT returns) -> sets/ARCH/CHANNEL.json holds the digest
  sync      set written -> the device's agent starts applying it (its log line)
  runtime   applying -> the device's /version/ reports the digest (pull, kube play,
            model load, self-test, readiness)
  total     tag move -> the LAST device serves the digest

in three runs:

  warm           both images already pulled on every device;
  cold           the target image is removed from every device's storage before each
                 promotion, so each device pulls it: a new model version's rollout. The
                 layers it shares with the running version stay (model versions share all
                 but the model layer, see model_server/Containerfile);
  first install  every device's pod and ALL its images are removed first, so each device
                 pulls the whole image (~390 MB): a device's first model.

Prints p50/p95 of each and the ratio of the total p95 to its target (poll + 5 s warm,
poll + 15 s cold and first install). The devices share this machine's cores, so three
simultaneous whole-image pulls compete for CPU (layer decompression and digests) in a way
separate devices do not; the first-install run also prints one device pulling alone.

    .venv/bin/python bench/bench_rollout.py [--promotions 20] [--cold 20] [--first 5] [--poll 2]
    .venv/bin/python bench/bench_rollout.py --mqtt [--promotions 20] [--cold 0] [--first 0]

``--mqtt``: the stack runs mosquitto, tag_monitor publishes the wake-up after each set
write, devices poll only every 60 s (the fallback) and are woken by it: the total is then
judged against 2.5 s. Without it the stack has no broker (poll only, as before).

Other work on the machine skews the numbers: the load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.stats import median, percentile  # noqa: E402
from edgefleet.cloud import storage  # noqa: E402
from edgefleet.core import layout, manifest_set  # noqa: E402
from edgefleet.localstack import devices as dev  # noqa: E402
from edgefleet.localstack import harness  # noqa: E402
from edgefleet.localstack.arm64 import platform_digests  # noqa: E402

CHANNEL = "beta"
SETTLE_MAX = 2.0  # --mqtt: seconds between promotions (the commit is already waited for)
MQTT_TARGET = 2.5  # --mqtt: total p95 target, whatever the (fallback) poll
DEVICES = 3


@dataclass
class Sample:
    function: float
    total: float
    sync: list[float] = field(default_factory=list)
    runtime: list[float] = field(default_factory=list)


def wait_set(bucket: storage.Bucket, name: str, digest: str, timeout: float) -> tuple[float, int]:
    """(wall time the set holding ``digest`` was first seen, its sequence)."""
    deadline = time.time() + timeout
    seen = -1
    while time.time() < deadline:
        generation = bucket.generation(name)
        if generation != seen:
            seen = generation
            blob = bucket.read(name)
            if blob is not None and digest in blob.data.decode():
                at = time.time()
                return at, manifest_set.decode(blob.data).manifest_set.sequence
        time.sleep(0.02)
    raise SystemExit(f"bench: the set {name} never held {digest} within {timeout:.0f} s")


def apply_time(log: Path, sequence: int, message: str = "applying manifest set") -> float | None:
    """Wall time of the agent's ``message`` log line for ``sequence``."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if f'"{message}"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("sequence") == sequence:
            return datetime.fromisoformat(entry["time"]).timestamp()
    return None


def serving_times(devices: list[dict[str, Any]], digest: str, timeout: float) -> dict[str, float]:
    deadline = time.time() + timeout
    done: dict[str, float] = {}
    while len(done) < len(devices):
        for d in devices:
            if d["id"] not in done:
                info = harness.version_of(d)
                if info and info.get("version") == digest and harness.is_ready(d):
                    done[d["id"]] = time.time()
        if time.time() > deadline:
            raise SystemExit(f"bench: devices did not all serve {digest} within {timeout:.0f} s")
        time.sleep(0.05)
    return done


def evict(devices: list[dict[str, Any]], image: str) -> None:
    """Remove ``image`` from every device's storage (the next promotion pulls it)."""
    for d in devices:
        paths = dev.DevicePaths(Path(d["device_dir"]))
        done = dev.run_podman(paths, ["rmi", "--force", image])
        if done.returncode != 0 and "image not known" not in done.stderr:
            raise SystemExit(f"bench: podman rmi on {d['id']} failed: {done.stderr.strip()}")


def wipe(devices: list[dict[str, Any]]) -> None:
    """Every pod and image removed from each device: a device before its first model."""
    for d in devices:
        dev.wipe_device(d)


# Promotions land at a random phase of the devices' poll cycle: after each commit the bench
# waits one poll (settling) plus a uniform random fraction of another, so the sync time
# samples the whole 0..poll wait instead of one fixed offset from the last poll.
PHASE = random.Random(1101)


def promote_once(fleet: harness.Fleet, digest: str, timeout: float) -> Sample:
    bucket = fleet.bucket(fleet.stack.config.deploy_bucket)
    set_name = layout.set_object(dev.host_arch(), CHANNEL)
    harness.promote(fleet, digest, CHANNEL)
    moved = time.time()
    # The tag names an index; the host arch's set and devices run its image of it.
    digest = platform_digests(fleet, digest).get(dev.host_arch(), digest)
    set_at, sequence = wait_set(bucket, set_name, digest, timeout)
    on = fleet.on(CHANNEL)
    serving = serving_times(on, digest, timeout)
    sample = Sample(function=set_at - moved, total=max(serving.values()) - moved)
    logs = fleet.stack.workdir / "logs"
    for d in on:
        applied = apply_time(logs / f"agent-{d['name']}.log", sequence)
        if applied is None:
            raise SystemExit(f"bench: no apply of sequence {sequence} in {d['id']}'s log")
        sample.sync.append(applied - set_at)
        sample.runtime.append(serving[d["id"]] - applied)
    # Serving is not the end of the agent's work: its health gate commits the set a few
    # seconds later. The next promotion waits for that, a poll's worth of settling (else
    # its sync time would include the tail of this one), and a random phase.
    deadline = time.time() + timeout
    for d in on:
        log = logs / f"agent-{d['name']}.log"
        while apply_time(log, sequence, "manifest set applied") is None:
            if time.time() > deadline:
                raise SystemExit(f"bench: {d['id']} never committed sequence {sequence}")
            time.sleep(0.2)
    poll = fleet_poll(fleet)
    if fleet.stack.mosquitto is not None:  # woken over MQTT: the poll's phase is moot
        time.sleep(SETTLE_MAX)
    else:
        time.sleep(poll + PHASE.uniform(0, poll))
    return sample


def pull_alone(fleet: harness.Fleet, digest: str) -> float:
    """Seconds for one device to pull the whole image with nothing else running. Run last:
    the device's pod and images are removed for it."""
    on = fleet.on(CHANNEL)
    image = f"{fleet.repo}@{digest}"
    wipe(on[:1])
    paths = dev.DevicePaths(Path(on[0]["device_dir"]))
    start = time.monotonic()
    done = dev.run_podman(paths, ["pull", "-q", "--tls-verify=false", image], timeout=600)
    took = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"bench: pulling {image} on {on[0]['id']} failed: {done.stderr}")
    return took


def fleet_poll(fleet: harness.Fleet) -> float:
    return float(fleet.stack.devices[0].get("poll_seconds", 2.0))


def report_target(name: str, samples: list[Sample], target: float) -> None:
    """``report`` with a fixed target (the MQTT mode: no poll in the path)."""
    report(name, samples, 0.0, target)


def report(name: str, samples: list[Sample], poll: float, slack: float) -> None:
    rows = {
        "function (tag -> set)": [s.function for s in samples],
        "sync (set -> applying)": [x for s in samples for x in s.sync],
        "runtime (applying -> serving)": [x for s in samples for x in s.runtime],
        "total (tag -> all serving)": [s.total for s in samples],
    }
    print(f"\n{name}: {len(samples)} promotions x {len(samples[0].runtime)} devices")
    print(f"  {'':32} {'p50':>7} {'p95':>7} {'max':>7}")
    for label, values in rows.items():
        p50, p95 = percentile(values, 50), percentile(values, 95)
        print(f"  {label:32} {p50:6.2f}s {p95:6.2f}s {max(values):6.2f}s")
    target = poll + slack
    p95 = percentile(rows["total (tag -> all serving)"], 95)
    verdict = "meets" if p95 <= target else "MISSES"
    what = f"poll+{slack:.0f}s = {target:.1f}s" if poll else f"{target:.1f}s"
    print(f"  total p95 {p95:.2f}s vs target {what}: ratio {p95 / target:.2f} ({verdict})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promotions", type=int, default=20, help="warm promotions")
    parser.add_argument("--cold", type=int, default=20, help="cold-pull promotions")
    parser.add_argument("--first", type=int, default=5, help="first-install promotions")
    parser.add_argument(
        "--poll",
        type=float,
        default=None,
        help="device poll seconds (default 2; 60 with --mqtt: the fallback)",
    )
    parser.add_argument(
        "--mqtt",
        action="store_true",
        help="devices woken by the stack's mosquitto (else poll only)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=DEVICES,
        help="devices on the channel (default 3: the target's; 1 shows what one device takes)",
    )
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--workdir", type=Path, default=REPO / ".edgefleet" / "bench-rollout")
    args = parser.parse_args()
    if args.poll is None:
        args.poll = 60.0 if args.mqtt else 2.0
    os.environ.setdefault("CONTAINERS_CONF", str(REPO / "deploy" / "podman" / "containers.conf"))
    data = harness.data_dir()
    print(f"load average at start: {os.getloadavg()}")
    quiet = lambda _m: None  # noqa: E731
    fleet = harness.start(
        args.workdir,
        devices=args.devices,
        channels=(CHANNEL,),
        poll_seconds=args.poll,
        say=quiet,
        prefix="bq" if args.mqtt else "bn",  # namespace names are global
        mqtt=args.mqtt,
        # The first-install wipe stands in for a new device, which has nothing to heal: a
        # heal between the wipe and the promotion's poll would replay the old version.
        device_env={"HEAL_SECONDS": "0"},
    )
    print(
        f"devices: poll every {args.poll:g} s, "
        + ("woken over MQTT (mosquitto)" if args.mqtt else "no wake-up (poll only)")
    )
    try:
        harness.ensure_base(fleet, say=quiet)
        t = time.monotonic()
        d1 = harness.wait_built(fleet, harness.train(fleet, 1, data=data), say=quiet)
        d2 = harness.wait_built(fleet, harness.train(fleet, 2, data=data), say=quiet)
        print(f"built v1 and v2 through TRAINER-DONE in {time.monotonic() - t:.0f} s")
        digests = (d1, d2)
        # Warm up: every device pulls and runs both once.
        for d in digests:
            promote_once(fleet, d, args.timeout)
        warm = [promote_once(fleet, digests[i % 2], args.timeout) for i in range(args.promotions)]
        if args.mqtt:
            report_target("warm, MQTT wake-up", warm, MQTT_TARGET)
        else:
            report("warm (images already pulled)", warm, args.poll, 5.0)
        cold = []
        for i in range(args.cold):
            digest = digests[i % 2]
            evict(fleet.on(CHANNEL), f"{fleet.repo}@{digest}")
            cold.append(promote_once(fleet, digest, args.timeout))
        if cold:
            report("cold (each device pulls the new version)", cold, args.poll, 15.0)
        first = []
        for i in range(args.first):
            wipe(fleet.on(CHANNEL))
            first.append(promote_once(fleet, digests[i % 2], args.timeout))
        if first:
            report("first install (each device pulls the whole image)", first, args.poll, 15.0)
            alone = pull_alone(fleet, digests[0])
            print(f"  one device pulling the whole image alone: {alone:.2f}s")
        warm_rt = median(x for s in warm for x in s.runtime)
        for name, runs in (("cold", cold), ("first-install", first)):
            if runs:
                pulled = median(x for s in runs for x in s.runtime)
                print(f"{name}/warm runtime p50 ratio: {pulled / warm_rt:.2f}")
    finally:
        harness.stop(fleet, args.workdir)
        print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: a bad candidate's automatic revert, on the real local stack.

Starts a stack with 4 devices on one channel (own namespaces, own podman storage, sync
agents polling every --poll seconds, a model summary every 2 s), the rollout controller
woken by the stack's ticker (every 2 s), and real traffic on every device. Builds
v2 (the baseline) and v1 (the bad candidate: its confidence on the same image collapses)
through the TRAINER-DONE path. Then, --runs times: start a rollout of v1 whose first step's
cohort is 2 devices, wait until both serve it, and measure

  from   the moment the bad candidate's metrics are in the cohort's reports (the last of
         the 2 status objects holding a window of v1 with traffic)
  to     every cohort device serving the baseline again (/version/ + /readyz),

with its parts:

  tick wait  metrics in the reports -> the controller's tick that judged them began
  decision   that tick: read state, tag, reports; decide; write state and set (its log)
  poll       set without the rollout written -> every cohort device stopped serving v1
             (its agent fetched the set and took the candidate's pod down)
  switch     -> every cohort device serves the baseline, ready

Prints p50/p95 of each (seconds) and, as the baseline measured in the same run, the part a
manual revert (`edgefleet promote` of the old digest) would also pay -- poll + switch --
with the ratio total / (poll + switch): what judging automatically adds.

    .venv/bin/python bench/bench_rollout_revert.py [--runs 10] [--poll 1]

Other work on the machine skews the numbers: the load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.stats import percentile  # noqa: E402
from edgefleet.cloud import rollout  # noqa: E402
from edgefleet.core import layout  # noqa: E402
from edgefleet.localstack import devices as dev  # noqa: E402
from edgefleet.localstack import harness as h  # noqa: E402
from edgefleet.localstack import rollouts as ro  # noqa: E402
from edgefleet.localstack.process import wait_for  # noqa: E402

CHANNEL = "stable"
DEVICES = 4
COHORT = 2
PARTS = ("tick wait", "decision", "poll", "switch", "total")


@dataclass
class Sample:
    tick_wait: float
    decision: float
    poll: float
    switch: float

    @property
    def total(self) -> float:
        return self.tick_wait + self.decision + self.poll + self.switch

    def part(self, name: str) -> float:
        return self.total if name == "total" else getattr(self, name.replace(" ", "_"))


def until(check: Any, what: str, timeout: float = 180.0) -> None:
    wait_for(check, timeout=timeout, what=what, interval=0.02)


def metrics_in_reports(bucket: Any, cohort: list[dict], digest: str, since: datetime) -> bool:
    for d in cohort:
        blob = bucket.read(layout.status_object(str(d["id"])))
        report = rollout.parse_report(json.loads(blob.data), str(d["id"])) if blob else None
        if report is None or not rollout.windows([report], digest, since):
            return False
    return True


def tick_entries(fleet: h.Fleet) -> list[dict[str, Any]]:
    return [
        e
        for e in fleet.stack.functions["rollout_controller"].log_entries()
        if e.get("event") == "rollout-tick"
    ]


def judging_tick(fleet: h.Fleet, after: int, object_name: str) -> dict[str, Any]:
    """The first tick logged after entry ``after`` that left the rollout halted."""
    for entry in tick_entries(fleet)[after:]:
        if (entry.get("rollouts") or {}).get(object_name) == "halted":
            return entry
    raise SystemExit("bench: no tick entry records the halt (see function-rollout_controller.log)")


def one_run(fleet: h.Fleet, bad: str, good: str, image: bytes) -> Sample:
    bucket = fleet.bucket(fleet.stack.config.deploy_bucket)
    r = ro.start(
        fleet, bad, CHANNEL, sizes=(COHORT, DEVICES), step_interval=600, min_devices=COHORT,
        gates=("confidence >= 0.9x",),
    )  # fmt: skip
    cohort = ro.cohort_of(r, fleet)
    h.wait_serving(fleet, cohort, bad, since=time.monotonic(), timeout=180)
    object_name = layout.rollout_object(dev.host_arch(), CHANNEL)
    set_name = layout.set_object(dev.host_arch(), CHANNEL)
    ticks_before = len(tick_entries(fleet))
    until(lambda: metrics_in_reports(bucket, cohort, bad, r.step_started_at), "v1 metrics")
    t0 = time.time()
    set_generation = bucket.generation(set_name)
    halted = ro.wait_rollout(fleet, CHANNEL, lambda x: x.state != "running", what="halt",
                             interval=0.02)  # fmt: skip
    if halted.state != "halted":
        raise SystemExit(f"bench: the rollout ended {halted.state}: {halted.verdict}")
    until(lambda: bucket.generation(set_name) != set_generation, "the set without the rollout")
    t_set = time.time()
    until(lambda: all(ro.serving(fleet, [d])[str(d["id"])] != bad for d in cohort),
          "cohort devices leaving v1")  # fmt: skip
    t_poll = time.time()
    h.wait_serving(fleet, cohort, good, since=time.monotonic(), timeout=180, interval=0.02)
    t_switch = time.time()
    tick = judging_tick(fleet, ticks_before, object_name)
    tick_end = datetime.fromisoformat(tick["time"]).timestamp()
    decision = float(tick["seconds"])
    tick_start = tick_end - decision
    return Sample(
        tick_wait=max(0.0, tick_start - t0),
        decision=max(0.0, t_set - max(tick_start, t0)),
        poll=t_poll - t_set,
        switch=t_switch - t_poll,
    )


def report(samples: list[Sample]) -> None:
    print(f"\nrevert of a bad candidate, {len(samples)} runs, cohort {COHORT} of {DEVICES} (s)")
    print(f"  {'part':10} {'p50':>7} {'p95':>7}")
    for name in PARTS:
        values = [s.part(name) for s in samples]
        print(f"  {name:10} {percentile(values, 50):7.2f} {percentile(values, 95):7.2f}")
    manual = [s.poll + s.switch for s in samples]
    totals = [s.total for s in samples]
    print(
        f"  baseline (same run): a manual revert pays poll + switch, p50 "
        f"{percentile(manual, 50):.2f} s; ratio total/manual p50 "
        f"{percentile(totals, 50) / percentile(manual, 50):.2f}, p95 "
        f"{percentile(totals, 95) / percentile(manual, 95):.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--poll", type=float, default=1.0, help="device poll interval (s)")
    parser.add_argument("--workdir", type=Path, default=Path(".edgefleet/bench-rollout-revert"))
    args = parser.parse_args()
    os.environ["ARCHES"] = dev.host_arch()  # build and deploy the host's arch only
    print(f"load average at start: {os.getloadavg()}")
    data = h.data_dir()
    image = (data / h.IMAGE).read_bytes()
    fleet = None
    try:
        fleet = h.start(args.workdir, devices=DEVICES, channels=(CHANNEL,),
                        poll_seconds=args.poll, prefix="brr", device_env=ro.DEVICE_ENV)  # fmt: skip
        h.ensure_base(fleet)
        good = h.wait_built(fleet, h.train(fleet, 2, data=data))
        h.wait_serving(fleet, fleet.devices, good, since=h.promote(fleet, good, CHANNEL))
        bad = h.wait_built(fleet, h.train(fleet, 1, data=data))
        samples = []
        with ro.Traffic(fleet.devices, image, interval=0.2):
            for i in range(args.runs):
                sample = one_run(fleet, bad, good, image)
                samples.append(sample)
                print(
                    f"run {i + 1}: total {sample.total:.2f} s (tick wait {sample.tick_wait:.2f}, "
                    f"decision {sample.decision:.2f}, poll {sample.poll:.2f}, "
                    f"switch {sample.switch:.2f})",
                    flush=True,
                )
        report(samples)
    finally:
        h.stop(fleet, args.workdir)
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

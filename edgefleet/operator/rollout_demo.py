"""The demo's progressive-rollout chapter (docs/rollouts.md), on four more devices of
channel ``alpha`` with real traffic:

1. v1 runs on alpha; ``edgefleet rollout start`` of v2 goes 1 -> 2 -> 4 devices, judged
   by the model's own metrics, and completes (the alpha tag moves to v2);
2. a rollout of v1 over v2 (its confidence on the same image collapses, 0.33 vs 0.92)
   halts by itself at its first step, and its cohort returns to v2.

``edgefleet rollout status`` is printed at each step. Called by
:func:`edgefleet.operator.demo.run` with the fleet and the two digests it built.
"""

from __future__ import annotations

import time

from edgefleet.localstack import devices as dev
from edgefleet.localstack import harness as h
from edgefleet.localstack import rollouts as ro
from edgefleet.localstack.harness import Fleet, Say

CHANNEL = "alpha"
DEVICES = 4


def run(fleet: Fleet, v1: str, v2: str, *, say: Say = print) -> None:
    say(f"\n== progressive rollouts: {DEVICES} more devices on {CHANNEL}, real traffic")
    _, pub = dev.ensure_signing_key(fleet.stack.workdir)
    added = dev.start_devices(
        fleet.stack, DEVICES, channels=(CHANNEL,), poll_seconds=1.0, trusted_keys=str(pub),
        extra_env=ro.DEVICE_ENV, prefix="demora",
    )  # fmt: skip
    fleet.devices.extend(added)
    h.wait_serving(fleet, added, v1, since=h.promote(fleet, v1, CHANNEL))
    say(f"  {', '.join(str(d['id']) for d in added)} serve v1 on {CHANNEL}")
    image = (h.data_dir() / h.IMAGE).read_bytes()
    with ro.Traffic(added, image):
        say(f"\n== edgefleet rollout start {fleet.repo}@{v2[:19]}… --channel {CHANNEL} (v2)")
        r = ro.start(fleet, v2, CHANNEL, sizes=(1, 2, DEVICES), step_interval=15)
        for step in range(len(r.steps)):
            now = ro.wait_rollout(
                fleet, CHANNEL, lambda x, s=step: x.step_index >= s or not x.active,
                what=f"step {step + 1}",
            )  # fmt: skip
            h.wait_serving(fleet, ro.cohort_of(now, fleet), v2, since=time.monotonic())
            ro.print_status(fleet, CHANNEL)
        done = ro.wait_rollout(fleet, CHANNEL, lambda x: not x.active, what="the end")
        ro.print_status(fleet, CHANNEL)
        if done.state == "completed":
            ro.wait_tag(fleet, CHANNEL, v2)
            say(f"  -> completed: every {CHANNEL} device runs v2, the {CHANNEL} tag moved")
        else:
            say(f"  -> {done.state}: {done.verdict}; every {CHANNEL} device runs v1 again")

        say(f"\n== edgefleet rollout start {fleet.repo}@{v1[:19]}… --channel {CHANNEL} (v1)")
        bad = ro.start(fleet, v1, CHANNEL, sizes=(2, DEVICES), step_interval=60, min_devices=2)
        cohort = ro.cohort_of(bad, fleet)
        h.wait_serving(fleet, cohort, v1, since=time.monotonic())
        ro.print_status(fleet, CHANNEL)
        halted = ro.wait_rollout(fleet, CHANNEL, lambda x: not x.active, what="a verdict")
        h.wait_serving(fleet, cohort, v2, since=time.monotonic())
        ro.print_status(fleet, CHANNEL)
        say(f"  -> {halted.state} by itself; its cohort serves v2 again, the tag never moved")
    h.show(h.observe(fleet, image), say)

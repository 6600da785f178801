"""``edgefleet demo``: the product's whole story on this machine, told with the steps of
the local-stack harness (edgefleet.localstack.harness), which the end-to-end test and the
benchmarks share. See docs/local-stack.md ("Local demo")."""

from __future__ import annotations

import time
from pathlib import Path

from edgefleet.localstack import arm64, mosquitto
from edgefleet.localstack import devices as dev
from edgefleet.localstack import harness as h
from edgefleet.localstack.harness import Fleet, Say
from edgefleet.operator.dashboard import serve


def run(
    workdir: Path,
    *,
    poll_seconds: float = dev.DEFAULT_POLL_SECONDS,
    say: Say = print,
    keep: bool = False,
) -> int:
    """The demo: build v1, roll it out channel by channel, build v2, promote, roll back."""
    data = h.data_dir()
    image = (data / h.IMAGE).read_bytes()
    began = time.monotonic()
    fleet: Fleet | None = None
    dashboard = None
    steps: list[tuple[str, float]] = []

    def step(title: str) -> None:
        say(f"\n== [{time.monotonic() - began:5.0f} s] {title}")

    def converge(channel: str, digest: str, since: float, what: str) -> None:
        assert fleet is not None
        times = h.wait_serving(fleet, fleet.on(channel), digest, since=since)
        steps.append((what, max(times.values()) if times else 0.0))
        per = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(times.items()))
        say(f"  converged: every {channel} device serves {digest[:19]}… ({per})")
        h.show(h.observe(fleet, image), say)

    def build(major: int) -> str:
        assert fleet is not None
        version = h.train(fleet, major, data=data)
        say(f"  wrote gs://{fleet.stack.config.model_bucket}/{h.MODEL}/{version}/…/TRAINER-DONE")
        t0 = time.monotonic()
        digest = h.wait_built(fleet, version, say=say)
        took = time.monotonic() - t0
        say(f"  pushed {fleet.repo}:{version} and :latest = {digest} ({took:.0f} s)")
        converge("latest", digest, time.monotonic(), f"v{major} -> latest (after the push)")
        return digest

    try:
        step("starting the local stack: emulators, registry, functions, 3 devices")
        # Own device ids: namespace names are global, `edgefleet up` uses dev1..N.
        fleet = h.start(workdir, devices=3, poll_seconds=poll_seconds, say=say, prefix="demo")
        for d in fleet.devices:
            say(f"  device {d['id']} in netns {d['name']} on channel {d['channel']}")
        say(f"  wake-up: {mosquitto.describe(fleet.stack)}")
        dashboard = serve.for_demo(fleet.stack.env(), say=say)
        step("base image (built once, then cached)")
        say(f"  {h.ensure_base(fleet, say)}")

        step(f"training v1 ({h.VERSIONS[1][0]}): model package + TRAINER-DONE")
        say("  model_done_watcher builds and pushes the image (a minute or two)")
        d1 = build(1)
        step("promoting v1 to beta and stable")
        for channel in ("beta", "stable"):
            converge(channel, d1, h.promote(fleet, d1, channel), f"v1 -> {channel}")

        step(f"training v2 ({h.VERSIONS[2][0]})")
        d2 = build(2)
        for channel in ("beta", "stable"):
            step(f"promoting v2 to {channel}: edgefleet promote {fleet.repo}@{d2[:19]}…")
            converge(channel, d2, h.promote(fleet, d2, channel), f"v2 -> {channel}")
        step(f"an emulated arm64 {arm64.BOARD} joins beta: same tag, its arm64 image, under qemu")
        arm64.coral_board_step(fleet, "beta", d2, image, wait_serving=h.wait_serving, say=say)

        step("rolling stable back to v1")
        converge("stable", d1, h.promote(fleet, d1, "stable"), "stable rolled back to v1")

        step(f"edgefleet rollout wait --channel stable --digest {d1[:19]}… (device reports)")
        h.wait_reported(fleet, "stable", d1)
        step("edgefleet status")
        h.print_status(fleet)

        from edgefleet.operator import rollout_demo

        rollout_demo.run(fleet, d1, d2, say=say)  # progressive rollouts (docs/rollouts.md)
        step("convergence times (tag move -> every device of the channel serving it)")
        for what, seconds in steps:
            say(f"  {what:34} {seconds:6.1f} s")
        serve.hold(dashboard, keep, say)
    finally:
        if dashboard is not None:
            dashboard.stop()
        step("tearing down: agents, device pods and storage, namespaces, stack")
        h.stop(fleet, workdir)
    say(f"\ndemo finished in {time.monotonic() - began:.0f} s")
    return 0

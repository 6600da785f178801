"""Progressive-rollout steps on the local stack, shared by the rollout demo, its
end-to-end test and ``bench/bench_rollout_revert.py`` (on top of
:mod:`edgefleet.localstack.harness`).

- :func:`steps_for` picks step percentages that give exact cohort sizes for a rollout id
  over known device ids (the cohort rule is public: :mod:`edgefleet.core.cohort`);
- :func:`start` writes a rollout the way ``edgefleet rollout start`` does;
- :func:`wait_rollout` follows ``rollouts/ARCH/CHANNEL.json``; :func:`wait_tag` waits
  for the channel tag a completed rollout moves (the controller writes the state first,
  then moves the tag: "completed" is seen a moment before the registry says so);
- :class:`Traffic` sends real images to every device's model server and records which
  digest each device served (``/version/``), so a test can say "no other device ever
  ran it";
- :func:`container_ids` reads each device's model container id (podman, the device's own
  storage): a device outside the cohort keeps its pod.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from device.handover import SLOTS, slot_pod_name
from edgefleet.cloud import rollout
from edgefleet.core import cohort, layout, refs
from edgefleet.localstack import devices as dev
from edgefleet.localstack import harness as h
from edgefleet.localstack.harness import Fleet, StepError

# What a device's agent runs with in rollout runs: a short metrics window, a short health
# gate (a candidate that never gets ready is rolled back in 20 s, not 2 min).
DEVICE_ENV = {"METRICS_SECONDS": "2", "HEALTH_TIMEOUT": "20"}


def steps_for(rollout_id: str, device_ids: Sequence[str], sizes: Sequence[int]) -> list[float]:
    """Percentages whose cohorts over ``device_ids`` have exactly ``sizes`` devices (the
    last step is always 100)."""
    positions = sorted(cohort.position(rollout_id, d) for d in device_ids)
    steps = []
    for size in sizes:
        if size >= len(positions):
            steps.append(100.0)
            break
        low = positions[size - 1] if size else 0.0
        steps.append(round((low + positions[size]) / 2, 6))
    if steps[-1] != 100.0:
        steps.append(100.0)
    return steps


def start(
    fleet: Fleet,
    digest: str,
    channel: str,
    *,
    sizes: Sequence[int] | None = None,
    steps: Sequence[float] | None = None,
    step_interval: float = 10.0,
    min_devices: int = 1,
    max_failure: float = 0.0,
    gates: Sequence[str] = ("confidence >= 0.9x", "error_rate <= 1%"),
) -> rollout.Rollout:
    """``edgefleet rollout start REPO@DIGEST --channel CHANNEL …`` (one arch: the host's).
    With ``sizes``, the steps are chosen so that the cohorts have those sizes."""
    from edgefleet.operator.commands.rollout import start_rollout

    rollout_id = rollout.new_id()
    if sizes is not None:
        steps = steps_for(rollout_id, [str(d["id"]) for d in fleet.on(channel)], sizes)
    [r] = start_rollout(
        fleet.bucket(fleet.stack.config.deploy_bucket),
        fleet.registry(),
        f"{fleet.repo}@{digest}",
        channel,
        rollout_id=rollout_id,
        arch=dev.host_arch(),
        steps=tuple(steps or rollout.DEFAULT_STEPS),
        step_interval=step_interval,
        min_devices=min_devices,
        max_failure=max_failure,
        gates=[rollout.parse_gate(g) for g in gates],
    )
    return r


def read_rollout(fleet: Fleet, channel: str) -> tuple[rollout.Rollout, int] | None:
    bucket = fleet.bucket(fleet.stack.config.deploy_bucket)
    blob = bucket.read(layout.rollout_object(dev.host_arch(), channel))
    return None if blob is None else (rollout.decode(blob.data), blob.generation)


def wait_rollout(
    fleet: Fleet,
    channel: str,
    done: Callable[[rollout.Rollout], bool],
    *,
    what: str,
    timeout: float = 180.0,
    interval: float = 0.2,
) -> rollout.Rollout:
    """The rollout once ``done(rollout)``; StepError after ``timeout`` naming its verdict."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        got = read_rollout(fleet, channel)
        if got is not None:
            last = got[0]
            if done(last):
                return last
        time.sleep(interval)
    verdict = last.verdict if last else "no rollout state"
    raise StepError(f"rollout on {channel} did not reach {what} in {timeout:.0f} s: {verdict}")


def tag_digest(fleet: Fleet, channel: str) -> str:
    """What ``REPO:CHANNEL`` names in the stack's registry now."""
    return str(fleet.registry().resolve(refs.parse(f"{fleet.repo}:{channel}")))


def wait_tag(fleet: Fleet, channel: str, digest: str, *, timeout: float = 30.0) -> float:
    """Seconds until the channel tag names ``digest``; StepError naming what it names
    after ``timeout``. A completed rollout's state is written before the tag moves (a
    crash in between is repaired by the next tick), so a reader that saw "completed"
    waits for the move rather than reading the tag once."""
    began = time.monotonic()
    now = ""
    while time.monotonic() - began < timeout:
        now = tag_digest(fleet, channel)
        if now == digest:
            return time.monotonic() - began
        time.sleep(0.2)
    raise StepError(f"{fleet.repo}:{channel} names {now}, not {digest}, after {timeout:.0f} s")


def cohort_of(r: rollout.Rollout, fleet: Fleet, percent: float | None = None) -> list[Any]:
    p = r.percent if percent is None else percent
    return [d for d in fleet.on(r.channel) if cohort.in_cohort(r.id, str(d["id"]), p)]


def print_status(fleet: Fleet, channel: str) -> None:
    """The real ``edgefleet rollout status --channel CHANNEL``."""
    from edgefleet.operator import cli

    cli.main(
        ["rollout", "status", "--channel", channel, "--bucket", fleet.stack.config.deploy_bucket]
    )


class Traffic:
    """Real traffic: every device's model server gets ``image`` about every ``interval``
    seconds (one thread), and what each device served is recorded by digest."""

    def __init__(self, devices: Sequence[Mapping[str, Any]], image: bytes, interval: float = 0.3):
        self.devices = list(devices)
        self.image = image
        self.interval = interval
        self.seen: dict[str, set[str]] = {str(d["id"]): set() for d in self.devices}
        self.predictions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            for d in self.devices:
                info = h.version_of(d)
                if info and info.get("version"):
                    self.seen[str(d["id"])].add(str(info["version"]))
                if h.predict_of(d, self.image) is not None:
                    self.predictions += 1
            self._stop.wait(self.interval)


def container_ids(fleet: Fleet, pod: str = h.MODEL) -> dict[str, str]:
    """Device id -> id of the container running ``pod`` ("" when none runs). The pod runs
    as ``POD-a`` or ``POD-b`` (the hand-over slots, device/handover.py) or as ``POD``
    (``podman ps`` fills in ``PodName`` only with ``--pod``)."""
    names = {pod, *(slot_pod_name(pod, slot) for slot in SLOTS)}
    out = {}
    for d in fleet.devices:
        paths = dev.DevicePaths(Path(d["device_dir"]))
        done = dev.run_podman(
            paths, ["ps", "--pod", "--format", "{{.ID}} {{.IsInfra}} {{.PodName}}"]
        )
        ids = [
            fields[0]
            for fields in (line.split() for line in done.stdout.splitlines())
            if len(fields) == 3 and fields[1] == "false" and fields[2] in names
        ]
        out[str(d["id"])] = ids[0] if ids else ""
    return out


def serving(fleet: Fleet, devices: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Device id -> the digest its /version/ reports now ("" when nothing answers)."""
    out = {}
    for d in devices:
        info = h.version_of(d) or {}
        out[str(d["id"])] = str(info.get("version") or "")
    return out

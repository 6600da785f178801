"""Fleet simulator: N real sync agents against the GCS emulator and mosquitto, push vs poll.

    .venv/bin/python bench/bench_fleet.py [--agents 1000] [--workers 4] [--rollouts 5]
        [--poll 20] [--poll-rollouts 2] [--idle 40] [--v1pod-check]

Each simulated device is the real agent code (:class:`sync_pod.agent.Agent`) with its own
state and manifest directories (on /dev/shm: a device has its own disk, 1,000 devices
fsyncing to this host's one disk would measure the disk), its own GCS adapter
(:class:`device.gcs_json.JsonBucket`, own connection pool, every HTTP request and its
body bytes counted), its own MQTT client (:class:`sync_pod.wake.MqttWake`, push mode) and
the stand-in runtime ``tests/support/recording_runtime.py`` (records what a kubelet would
run). Agents run as threads, spread over ``--workers`` processes. Sets are signed and
written by the control plane's own :class:`~edgefleet.cloud.set_store.SetStore`, which
publishes the wake-up through :class:`~edgefleet.cloud.wakeup.WakeupPublisher` as
tag_monitor does after a tag move (the tag move -> set write part is measured by
bench_tag_to_manifest.py; here the clock starts when the set write starts).

The agents check manifests as devices do by default: the allowlist's walk alone
(``V1POD_CHECK`` off). With ``--v1pod-check`` they also run the V1Pod model check in a
real child process (:mod:`device.podcheck`), sharing one
:class:`device.podcheck.CachedModelCheck` verdict cache (the cache every device keeps
for itself, keyed by manifest SHA-256; across the worker processes through its
``shared`` directory): one child per new set, as one device pays, instead of 1,000
children costing ~0.5 s of CPU each, which on 2 cores would measure the simulation
host, not the fleet.

Printed, for push (MQTT wake-up + 600 s fallback poll) and poll (``--poll`` s):
  * set write -> every agent has handed the new set to its runtime: p50/p95/max (s);
  * set write -> every agent's status report of it has landed in the bucket (reports
    wait while a poll is in flight anywhere in the fleet: :class:`PollFirstGate`);
  * broker fan-out: publish -> each agent's client received the message (push);
  * GCS requests and bytes (bodies) per device per rollout, and per device per hour idle
    (measured over ``--idle`` s; push mode's hourly figure is its fallback polls and
    heartbeats, counted the same way);
  * CPU (s) and memory (RSS, MiB) per simulated agent: workers, their check children,
    the emulator and the broker; the workers' CPU split by thread (the agents' own
    threads, their MQTT network threads, the simulator's bookkeeping).
The ratio printed is poll p95 / push p95 (same run). Load average at start and end.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.stats import MiB, percentile  # noqa: E402

ARCH, CHANNEL, REG = "x86_64", "beta", "127.0.0.1:5999"
BUCKET = "edgefleet-fleet-sim"
IMAGE = f"{REG}/edgefleet/web@sha256:{'ab' * 32}"
SHM = Path("/dev/shm")
FALLBACK_POLL = 600.0
HEARTBEAT = 900.0


# -- a simulated device's parts ---------------------------------------------------------


class CountingHttp:
    """urllib3's PoolManager, counting requests and body bytes (sent + received)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests = 0
        self.reads = 0  # GETs (Class B: metadata and downloads); the rest are uploads
        self.bytes = 0

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        self.requests += 1
        self.reads += method == "GET"
        body = kwargs.get("body")
        self.bytes += len(body) if body else 0
        resp = self.inner.request(method, url, **kwargs)
        length = resp.headers.get("content-length")
        self.bytes += int(length) if length and length.isdigit() else 0
        return resp


@dataclass
class Device:
    index: int
    agent: Any
    runtime: Any
    http: CountingHttp
    wait: Any
    thread: threading.Thread | None = None
    reported: list[float] = field(default_factory=list)  # when each status upload landed


def make_device(index: int, root: Path, env: dict[str, str], check: Any, push: bool) -> Device:
    import urllib3
    from support.recording_runtime import RecordingRuntime

    from device import gcs_json
    from edgefleet.core import mqtt
    from sync_pod.agent import Agent
    from sync_pod.config import from_env
    from sync_pod.wait import Waiter
    from sync_pod.wake import MqttWake

    device_id = f"sim{index:05d}"
    base = root / device_id
    config = from_env(
        {
            **env,
            "DEVICE_ID": device_id,
            "MANIFEST_DIR": str(base / "pods"),
            "STATE_DIR": str(base / "state"),
        }
    )
    http = CountingHttp(urllib3.PoolManager(maxsize=1))
    retry = gcs_json.Retry(initial=0.2, maximum=1.0, multiplier=2.0, timeout=5.0)
    bucket = gcs_json.JsonBucket(
        BUCKET, http, endpoint=env["STORAGE_EMULATOR_HOST"], timeout=10.0, retry=retry
    )
    runtime = RecordingRuntime()
    agent = Agent(config, bucket, runtime, model_check=check)
    if push:
        wait: Any = MqttWake(
            config.mqtt,
            mqtt.topic(ARCH, CHANNEL),
            f"edgefleet-{device_id}",
            known_generation=lambda: agent.state.seen_generation,
        )
    else:
        wait = Waiter()
    return Device(index, agent, runtime, http, wait)


def worker_main(
    conn: Any,
    indices: list[int],
    root: str,
    env: dict[str, str],
    push: bool,
    concurrency: int,
    fleet_polls: Any,
) -> None:
    """One worker process: its agents as threads; answers the parent's commands. At most
    ``concurrency`` of its agents run a poll (or a status report) at a time: a device
    has its own CPU, this host has 2 cores for all of them, and hundreds of threads
    contending for one interpreter lock only add hand-offs (measured: 36.8 ms of worker
    CPU per agent per rollout with every agent let loose, 8-11 ms gated). The agents'
    MQTT clients are not gated: a message reaches its agent when it arrives."""
    from edgefleet.core import logs

    logs.configure("fleet-sim", "ERROR")
    from sync_pod.__main__ import device_model_check
    from sync_pod.config import from_env

    # As a device chooses, with one verdict cache across the workers (module doc).
    config = from_env({**env, "DEVICE_ID": "sim"})
    check = device_model_check(config, shared=Path(root) / "verdicts")
    devices = [make_device(i, Path(root), env, check, push) for i in indices]
    gate = PollFirstGate(concurrency, fleet_polls)
    for d in devices:
        d.agent.poll_once = _gated(gate, d.agent.poll_once, urgent=True)
        d.agent.report = _recorded(d, _gated(gate, d.agent.report, urgent=False))
    for d in devices:
        if push:
            d.wait.start()
        jitter = random.Random(d.index).uniform
        d.thread = threading.Thread(
            target=d.agent.run, args=(d.wait,), kwargs={"jitter": lambda j=jitter: j(0.8, 1.2)},
            name=f"agent-{d.index}", daemon=True,
        )  # fmt: skip
        d.thread.start()
    while True:
        cmd, arg = conn.recv()
        if cmd == "applied":  # since epoch time ``arg``: first hand-over per agent
            conn.send([_first_after(d.runtime.handed, arg) for d in devices])
        elif cmd == "reported":  # the first status upload after the agent applied the set
            conn.send([_reported_after(d, arg) for d in devices])
        elif cmd == "heard":  # wake-up messages naming generation ``arg``
            conn.send(
                [
                    d.wait.stats.last_message_at
                    if push and d.wait.stats.last_hint and d.wait.stats.last_hint.generation == arg
                    else None
                    for d in devices
                ]
            )
        elif cmd == "threads":
            conn.send(_cpu_by_thread())
        elif cmd == "counters":
            self_usage = resource.getrusage(resource.RUSAGE_SELF)
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            conn.send(
                {
                    "requests": sum(d.http.requests for d in devices),
                    "reads": sum(d.http.reads for d in devices),
                    "bytes": sum(d.http.bytes for d in devices),
                    "cpu": self_usage.ru_utime + self_usage.ru_stime,
                    "child_cpu": children.ru_utime + children.ru_stime,
                    "rss": _rss_bytes(),
                }
            )
        elif cmd == "stop":
            for d in devices:
                d.wait.stop()
            for d in devices:
                if d.thread is not None:
                    d.thread.join(timeout=30)
            conn.send("stopped")
            return


class PollFirstGate:
    """At most ``slots`` of a worker's agents run at a time, and a status report waits
    while a poll waits or runs anywhere in the fleet: the simulation's scheduling, not the
    agent's.

    Why polls first: in a fleet every device has its own CPU, so one device's status
    report never delays another device's apply. On this host it would: through a plain
    one-at-a-time gate the reports of the first agents woken queued among the polls of
    the rest (until 2026-11-30), and a worker whose polls were done spent the cores on
    reports while other workers still polled. The reports still run, as soon as no poll
    is in flight, and the bench prints when the last one landed (set write -> all
    reported). ``fleet_polls`` is the fleet-wide count of polls waiting or running (a
    shared integer); within a worker two conditions on one lock, so a release wakes one
    thread, not all 250; the one report thread let through re-checks the fleet-wide
    count every 5 ms and never holds a slot while it waits."""

    def __init__(self, slots: int, fleet_polls: Any) -> None:
        self._lock = threading.Lock()
        self._polls = threading.Condition(self._lock)
        self._reports = threading.Condition(self._lock)
        self._free = slots
        self._polls_waiting = 0
        self._fleet_polls = fleet_polls
        self._watched = False  # a report thread is watching the fleet-wide count

    def _fleet_add(self, n: int) -> None:
        with self._fleet_polls.get_lock():
            self._fleet_polls.value += n

    def acquire(self, urgent: bool) -> None:
        if urgent:
            self._fleet_add(1)
        with self._lock:
            if urgent:
                self._polls_waiting += 1
                while self._free == 0:
                    self._polls.wait()
                self._polls_waiting -= 1
            else:
                while self._free == 0 or self._polls_waiting or self._fleet_polls.value:
                    # Only a free slot kept from a report by other workers' polls is
                    # watched (by one thread, at 5 ms); the rest wait to be notified.
                    watch = bool(self._free) and not self._polls_waiting and not self._watched
                    self._watched |= watch
                    self._reports.wait(0.005 if watch else None)
                    self._watched &= not watch
            self._free -= 1
            if not urgent and self._free:
                self._reports.notify()  # the next report may take the slot left

    def release(self, urgent: bool) -> None:
        if urgent:
            self._fleet_add(-1)
        with self._lock:
            self._free += 1
            (self._polls if self._polls_waiting else self._reports).notify()


def _gated(gate: PollFirstGate, fn: Any, *, urgent: bool) -> Any:
    """``fn`` run only while holding a slot of ``gate``."""

    def gated(*args: Any, **kwargs: Any) -> Any:
        gate.acquire(urgent)
        try:
            return fn(*args, **kwargs)
        finally:
            gate.release(urgent)

    return gated


def _recorded(device: Device, report: Any) -> Any:
    """``report`` that remembers when each upload landed (set write -> all reported)."""

    def recorded(*args: Any, **kwargs: Any) -> Any:
        sent = report(*args, **kwargs)
        if sent:
            device.reported.append(time.time())
        return sent

    return recorded


def _reported_after(device: Device, since: float) -> float | None:
    applied = _first_after(device.runtime.handed, since)
    if applied is None:
        return None
    return next((t for t in device.reported if t >= applied), None)


def _first_after(handed: list[tuple[float, Path, tuple[str, ...]]], since: float) -> float | None:
    return next((t for t, _folder, _names in handed if t >= since), None)


def _thread_kind(name: str) -> str:
    if name.startswith("agent-"):
        return "agents' own threads (poll, apply, report)"
    if name.startswith("paho-mqtt-client-"):
        return "agents' MQTT network threads"
    return "simulator (the worker's command loop, others)"


def _cpu_by_thread() -> dict[str, float]:
    """This process's CPU (s) so far, by kind of thread, from each live thread's
    ``/proc/self/task/TID/schedstat`` (ns; its ``stat`` counts 10 ms ticks, too coarse
    for a thread that runs a few ms per rollout). Threads that ended are not counted."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as fh:
                ns = int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        kind = _thread_kind(names.get(int(tid), ""))
        out[kind] = out.get(kind, 0.0) + ns / 1e9
    return out


def _rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _proc_cpu(pid: int) -> float:
    """utime + stime of a process and its waited-for children, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


# -- the control plane side and the measurements ------------------------------------------


@dataclass
class Fleet:
    workers: list[tuple[Any, Any]]  # (process, connection)
    size: int
    shared: Any = None  # kept alive for the workers (its semaphore goes with it)

    def ask(self, cmd: str, arg: Any = None) -> list[Any]:
        for _, conn in self.workers:
            conn.send((cmd, arg))
        return [conn.recv() for _, conn in self.workers]

    def applied(self, since: float) -> list[float | None]:
        return [t for part in self.ask("applied", since) for t in part]

    def reported(self, since: float) -> list[float | None]:
        return [t for part in self.ask("reported", since) for t in part]

    def counters(self, cmd: str = "counters") -> dict[str, float]:
        total: dict[str, float] = {}
        for part in self.ask(cmd):
            for key, value in part.items():
                total[key] = total.get(key, 0) + value
        return total

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("stop")
        for proc, _ in self.workers:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


def start_fleet(
    n: int, workers: int, root: Path, env: dict[str, str], push: bool, concurrency: int
) -> Fleet:
    ctx = mp.get_context("spawn")
    fleet_polls = ctx.Value("i", 0)  # polls waiting or running in any worker
    parts = [list(range(n))[w::workers] for w in range(workers)]
    procs = []
    for indices in parts:
        parent, child = ctx.Pipe()
        work = (child, indices, str(root), env, push, concurrency, fleet_polls)
        proc = ctx.Process(target=worker_main, args=work)
        proc.start()
        procs.append((proc, parent))
    return Fleet(procs, n, fleet_polls)


@dataclass
class Publisher:
    store: Any
    wakeup: Any
    step: int = 0
    published_at: list[float] = field(default_factory=list)

    def write(self) -> tuple[float, Any]:
        """A new set (one pod's env changes, like a new image digest would): the time the
        write started and its result."""
        from support.sync import entries, pod_yaml

        self.step += 1
        step_env = {"env": [{"name": "STEP", "value": str(self.step)}]}
        pod = pod_yaml("web", IMAGE, host_network=False, container_extra=step_env)
        started = time.time()
        result = self.store.update(ARCH, CHANNEL, lambda _snap: entries({"web": pod}))
        return started, result

    def on_written(self, result: Any) -> None:
        if self.wakeup is not None:
            self.published_at.append(time.time())
            self.wakeup(result)


def wait_all(fleet: Fleet, since: float, timeout: float) -> list[float]:
    deadline = time.monotonic() + timeout
    while True:
        times = fleet.applied(since)
        done = [t for t in times if t is not None]
        if len(done) == fleet.size or time.monotonic() > deadline:
            if len(done) < fleet.size:
                print(f"    ! only {len(done)}/{fleet.size} applied within {timeout:.0f} s")
            return [t - since for t in done]
        time.sleep(0.1)


def settle(fleet: Fleet, push: bool, quiet: float = 1.0, timeout: float = 60.0) -> None:
    """Let the last requests land (status reports, a start-up's woken polls) so that the
    next window measures only its own rollout. Push mode: until no agent has made a
    request for ``quiet`` s (an idle pushed fleet makes none). Poll mode never goes
    quiet (a poll lands every 1/N of the interval): a fixed 3 s."""
    if not push:
        time.sleep(3)
        return
    deadline = time.monotonic() + timeout
    last, since = fleet.counters()["requests"], time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = fleet.counters()["requests"]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    print(f"    ! requests still arriving after {timeout:.0f} s")


@dataclass
class ModeResult:
    name: str
    latencies: list[float]
    reported: list[float]
    fanout: list[float]
    per_rollout_requests: float
    per_rollout_reads: float
    per_rollout_bytes: float
    idle_requests_hour: float
    idle_bytes_hour: float
    cpu_per_agent_rollout: float
    cpu_per_agent_idle_hour: float
    rss_per_agent: float
    startup_s: float


def host_cpu(fleet_counters: dict[str, float], pids: list[int]) -> float:
    return fleet_counters["cpu"] + fleet_counters["child_cpu"] + sum(_proc_cpu(p) for p in pids)


def cpu_parts(fleet_counters: dict[str, float], pids: list[int]) -> dict[str, float]:
    """Host CPU (s) by part: agent workers, their check children, the emulator, the broker."""
    gcs, broker = (_proc_cpu(p) for p in pids)
    return {
        "workers": fleet_counters["cpu"],
        "check children": fleet_counters["child_cpu"],
        "GCS emulator": gcs,
        "broker": broker,
    }


def run_mode(args: argparse.Namespace, push: bool, env: dict[str, str], pub: Publisher,
             service_pids: list[int]) -> ModeResult:  # fmt: skip
    name = "push (MQTT + 600 s fallback poll)" if push else f"poll every {args.poll:g} s"
    print(f"\n== {name}: starting {args.agents} agents in {args.workers} workers")
    root = Path(tempfile.mkdtemp(prefix="fleet-sim-", dir=SHM if SHM.is_dir() else None))
    mode_env = dict(env)
    if push:
        mode_env["POLL_SECONDS"] = f"{FALLBACK_POLL:g}"
    else:
        mode_env.pop("MQTT_URL", None)
        mode_env["POLL_SECONDS"] = f"{args.poll:g}"
    t0 = time.time()
    fleet = start_fleet(args.agents, args.workers, root, mode_env, push, args.concurrency)
    try:
        got = wait_all(fleet, t0, timeout=300)
        startup = max(got) if got else float("nan")
        print(f"  all agents up and on the current set: {startup:.1f} s")
        settle(fleet, push)
        latencies: list[float] = []
        reported: list[float] = []
        fanout: list[float] = []
        before = fleet.counters()
        threads_before = fleet.counters("threads")
        cpu_before = host_cpu(before, service_pids)
        parts_before = cpu_parts(before, service_pids)
        rollouts = args.rollouts if push else args.poll_rollouts
        for k in range(rollouts):
            n_pub = len(pub.published_at)
            started, result = pub.write()
            timeout = 60 if push else 2 * args.poll + 30
            lat = wait_all(fleet, started, timeout)
            latencies += lat
            line = f"  rollout {k + 1}: p50 {percentile(lat, 50):.2f} s, max {max(lat):.2f} s"
            if push and len(pub.published_at) > n_pub:
                published = pub.published_at[n_pub]
                heard = [t for part in fleet.ask("heard", result.generation) for t in part]
                fan = [t - published for t in heard if t is not None]
                fanout += fan
                if fan:
                    line += f"; fan-out max {max(fan) * 1000:.0f} ms to {len(fan)} agents"
            settle(fleet, push)  # let status reports land
            rep = [t - started for t in fleet.reported(started) if t is not None]
            reported += rep
            if rep:
                line += f"; all {len(rep)} reported by {max(rep):.2f} s"
            print(line)
        after = fleet.counters()
        threads_after = fleet.counters("threads")
        cpu_after = host_cpu(after, service_pids)
        per_rollout_requests = (after["requests"] - before["requests"]) / args.agents / rollouts
        per_rollout_reads = (after["reads"] - before["reads"]) / args.agents / rollouts
        per_rollout_bytes = (after["bytes"] - before["bytes"]) / args.agents / rollouts
        cpu_rollout = (cpu_after - cpu_before) / args.agents / rollouts
        parts = {
            k: (v - parts_before[k]) / args.agents / rollouts * 1000
            for k, v in cpu_parts(after, service_pids).items()
        }
        print(
            "  CPU per agent per rollout: " + ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items())
        )
        by_thread = {
            k: (v - threads_before.get(k, 0.0)) / args.agents / rollouts * 1000
            for k, v in threads_after.items()
        }
        print(
            "    workers by thread: "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(by_thread.items()))
        )
        # Idle: nothing changes; only polls (and, over an hour, heartbeats) cost anything.
        time.sleep(2)
        idle0 = fleet.counters()
        cpu_idle0 = host_cpu(idle0, service_pids)
        time.sleep(args.idle)
        idle1 = fleet.counters()
        cpu_idle1 = host_cpu(idle1, service_pids)
        scale = 3600 / args.idle / args.agents
        idle_requests = (idle1["requests"] - idle0["requests"]) * scale
        idle_bytes = (idle1["bytes"] - idle0["bytes"]) * scale
        rss = idle1["rss"] / args.agents
        return ModeResult(
            name, latencies, reported, fanout, per_rollout_requests, per_rollout_reads,
            per_rollout_bytes, idle_requests, idle_bytes, cpu_rollout,
            (cpu_idle1 - cpu_idle0) * scale, rss, startup,
        )  # fmt: skip
    finally:
        fleet.stop()
        shutil.rmtree(root, ignore_errors=True)


def report(result: ModeResult, idle_poll_requests: float | None) -> None:
    lat = result.latencies
    print(f"\n-- {result.name}")
    if lat:
        print(
            f"  set write -> all applied   p50 {percentile(lat, 50):.2f} s  "
            f"p95 {percentile(lat, 95):.2f} s  max {max(lat):.2f} s  ({len(lat)} device-rollouts)"
        )
    if rep := result.reported:
        print(
            f"  set write -> all reported  p50 {percentile(rep, 50):.2f} s  "
            f"p95 {percentile(rep, 95):.2f} s  max {max(rep):.2f} s  (status upload landed)"
        )
    if result.fanout:
        f = result.fanout
        print(
            f"  broker fan-out            p50 {percentile(f, 50) * 1000:.0f} ms  "
            f"p95 {percentile(f, 95) * 1000:.0f} ms  max {max(f) * 1000:.0f} ms"
        )
    print(
        f"  GCS per device per rollout {result.per_rollout_requests:.2f} requests "
        f"({result.per_rollout_reads:.2f} GET), "
        f"{result.per_rollout_bytes / 1000:.1f} kB (bodies; incl. the status report and "
        "any timed poll in the window)"
    )
    print(
        f"  GCS per device per hour idle (measured over the window): "
        f"{result.idle_requests_hour:.1f} requests, {result.idle_bytes_hour / 1000:.1f} kB"
    )
    if idle_poll_requests is not None:
        polls = 3600 / FALLBACK_POLL
        beats = 3600 / HEARTBEAT
        print(
            f"  GCS per device per hour idle (fallback {FALLBACK_POLL:g} s poll x "
            f"{idle_poll_requests:.2f} requests/poll measured + {beats:g} heartbeats): "
            f"{polls * idle_poll_requests + beats:.1f} requests"
        )
    print(
        f"  host CPU per agent: {result.cpu_per_agent_rollout * 1000:.1f} ms per rollout, "
        f"{result.cpu_per_agent_idle_hour:.2f} s per hour idle; "
        f"worker RSS per agent {result.rss_per_agent / MiB:.2f} MiB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rollouts", type=int, default=5, help="push-mode rollouts")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="agents polling at once per worker process"
    )
    parser.add_argument("--poll", type=float, default=20.0, help="poll-mode interval (s)")
    parser.add_argument("--poll-rollouts", type=int, default=2)
    parser.add_argument("--idle", type=float, default=40.0, help="idle window (s)")
    parser.add_argument("--skip-poll", action="store_true")
    parser.add_argument(
        "--v1pod-check",
        action="store_true",
        help="agents also run the V1Pod model check (V1POD_CHECK=on; devices' default: off)",
    )
    args = parser.parse_args()

    from edgefleet.cloud import storage
    from edgefleet.cloud.set_store import SetStore
    from edgefleet.cloud.wakeup import WakeupPublisher
    from edgefleet.core import mqtt, signing
    from edgefleet.localstack.gcs import GcsEmulator
    from edgefleet.localstack.mosquitto import Mosquitto

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} CPUs; "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    key = signing.generate(work / "signing.pem")
    pub_path = work / "signing.pem.pub"
    results = []
    with GcsEmulator(work) as gcs, Mosquitto(work) as broker:
        gcs.create_bucket(BUCKET)
        os.environ.update(gcs.env())
        bucket = storage.Bucket(storage.make_client(), BUCKET)
        wakeup = WakeupPublisher(mqtt.parse_url(broker.url))
        pub = Publisher(None, wakeup)
        pub.store = SetStore(bucket, signer=key, on_written=pub.on_written)
        pub.write()
        env = {
            **gcs.env(),
            "BUCKET": BUCKET,
            "ARCH": ARCH,
            "CHANNEL": CHANNEL,
            "RUNTIME": "kubelet",
            "ALLOWED_REGISTRIES": REG,
            "TRUSTED_KEYS": str(pub_path),
            "MQTT_URL": broker.url,
            "STATUS_SECONDS": f"{HEARTBEAT:g}",
            "HEALTH_TIMEOUT": "30",
            "V1POD_CHECK": "on" if args.v1pod_check else "off",
        }
        pids = [gcs.process.pid, broker.process.pid]
        results.append(run_mode(args, True, env, pub, pids))
        if not args.skip_poll:
            pub.wakeup = None
            results.append(run_mode(args, False, env, pub, pids))
        broker_rss = _rss_bytes(broker.process.pid)
        gcs_rss = _rss_bytes(gcs.process.pid)
    shutil.rmtree(work, ignore_errors=True)

    checks = "allowlist + V1Pod model (child)" if args.v1pod_check else "allowlist"
    print(f"\n== {args.agents} simulated devices, {args.workers} worker processes; "
          f"manifest checks: {checks}")  # fmt: skip
    poll_result = results[1] if len(results) > 1 else None
    per_poll = None
    if poll_result is not None:
        per_poll = poll_result.idle_requests_hour / (3600 / args.poll)
    report(results[0], per_poll)
    if poll_result is not None:
        report(poll_result, None)
        push_p95 = percentile(results[0].latencies, 95)
        poll_p95 = percentile(poll_result.latencies, 95)
        print(f"\n  ratio poll p95 / push p95: {poll_p95 / push_p95:.1f}x "
              f"(target push p95 <= 3 s: {'met' if push_p95 <= 3 else 'NOT met'})")  # fmt: skip
    print(
        f"  mosquitto RSS {broker_rss / MiB:.1f} MiB, fake-gcs-server RSS {gcs_rss / MiB:.1f} MiB"
    )
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

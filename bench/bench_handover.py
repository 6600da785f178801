"""Hand-over: a client sending requests back to back at one device through version switches.

    .venv/bin/python bench/bench_handover.py [--promotions 10] [--baseline-seconds 8]

The device side is real: the hand-over proxy and runtime (:mod:`device.handover`)
listening on the device's served port, the real model server (LiteRT, the test
MobileNet) for each version, the agent's readiness probe. The pods are played by the
stand-in ``tests/support/process_runtime.py`` (the model server as a process on the
pod's hostPort, as podman would publish it). Each promotion hands the runtime the next
version's manifest folder, exactly as the agent's apply stage does (v1, v2, v1, ...: a
promotion and a rollback alternate).

A client thread sends ``GET /version/`` back to back, one TCP connection per request (as
``curl localhost:5000/version/`` does), and records each answer's latency and version.
Printed:
  * failed requests during the promotions (target 0), and what the same client sees
    when the runtime switches by stop-then-start on the port (the old behaviour,
    measured in the same run, ``--old-switches`` switches);
  * latency p50/p95 direct to the server vs through the proxy while nothing switches
    (the hand-over path's added latency at p50; target <= 5 %), interleaved in rounds
    so that load changes on this shared machine hit both alike;
  * time per promotion (new version ready -> switched) and versions seen.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.stats import percentile  # noqa: E402

IMAGE = Path("/work/shared/testdata/coral/grace_hopper.bmp")
DIGESTS = {1: "sha256:" + "1" * 64, 2: "sha256:" + "2" * 64}


def manifest(version: int, port: int) -> str:
    """The model-server Pod as the template renders it (hostPort on 127.0.0.1)."""
    import yaml
    from support.process_runtime import model_server_pod

    return yaml.safe_dump(model_server_pod(DIGESTS[version], port), sort_keys=False)


def write_folder(root: Path, version: int, port: int) -> Path:
    folder = root / f"set-{time.monotonic_ns()}"
    folder.mkdir(parents=True)
    (folder / "model-server-pod.yaml").write_text(manifest(version, port))
    return folder


@dataclass
class Client:
    """Runs in its own process (as a device's client would), so the proxy in this process
    never competes with it for the interpreter lock."""

    port: int
    ok: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    stop: Any = None
    image: bytes | None = None  # POST /predict/ with this image instead of GET /version/

    def one(self) -> None:
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            if self.image is None:
                conn.request("GET", "/version/")
            else:
                conn.request("POST", "/predict/", body=self.image,
                             headers={"Content-Type": "application/octet-stream"})  # fmt: skip
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                self.failures.append(f"HTTP {resp.status}")
                return
            self.ok.append(time.perf_counter() - started)
            version = json.loads(body).get("version", "?") if self.image is None else "-"
            self.versions[version] = self.versions.get(version, 0) + 1
        except (OSError, http.client.HTTPException) as exc:
            self.failures.append(type(exc).__name__)
        finally:
            conn.close()

    def run(self) -> Client:
        while not self.stop.is_set():
            self.one()
        self.stop = None
        return self

    def timed(self, count: int) -> list[float]:
        start = len(self.ok)
        for _ in range(count):
            self.one()
        return self.ok[start:]


def timed(port: int, count: int, image: bytes | None = None) -> list[float]:
    return Client(port, image=image).timed(count)


def run_until(port: int, stop: Any) -> Client:
    return Client(port, stop=stop).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--promotions", type=int, default=10)
    parser.add_argument("--old-switches", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10, help="latency rounds")
    parser.add_argument("--per-round", type=int, default=200, help="requests per round")
    args = parser.parse_args()

    from support.process_runtime import ProcessRuntime

    from device.handover import HandoverProxy, HandoverRuntime, slot_port
    from edgefleet.localstack.process import free_port

    print(f"load average at start: {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="bench-handover-"))
    served = free_port()  # the device's localhost:5000, on a free port here
    proxy = HandoverProxy(served).start()
    inner = ProcessRuntime(work / "logs")
    runtime = HandoverRuntime(inner, {served: proxy}, work / "state", ready_timeout=120)
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=2, mp_context=ctx)
    manager = ctx.Manager()
    try:
        runtime.reconcile(write_folder(work, 1, served))
        assert pool.submit(timed, served, 1).result(), "nothing serves after the first apply"

        # Added latency of the hand-over path: direct to the live slot vs through the
        # proxy, in alternating rounds.
        live_port = slot_port(served, runtime.slots["model-server"].slot)
        direct: list[float] = []
        proxied: list[float] = []
        for _ in range(args.rounds):
            direct += pool.submit(timed, live_port, args.per_round).result()
            proxied += pool.submit(timed, served, args.per_round).result()
        d50, p50 = percentile(direct, 50), percentile(proxied, 50)
        d95, p95 = percentile(direct, 95), percentile(proxied, 95)
        image = IMAGE.read_bytes()
        direct_predict: list[float] = []
        proxied_predict: list[float] = []
        for _ in range(args.rounds):
            direct_predict += pool.submit(timed, live_port, args.per_round // 10, image).result()
            proxied_predict += pool.submit(timed, served, args.per_round // 10, image).result()

        # Promotions under load.
        stop = manager.Event()
        running = pool.submit(run_until, served, stop)
        time.sleep(1.0)
        switch_times = []
        for k in range(args.promotions):
            version = 2 if k % 2 == 0 else 1
            t0 = time.monotonic()
            runtime.reconcile(write_folder(work, version, served))
            switch_times.append(time.monotonic() - t0)
        time.sleep(0.5)
        stop.set()
        load = running.result()

        # The old behaviour on the same servers: stop, then start on the served port.
        proxy.stop()  # the port is the server's own again
        inner.stop_all()
        old_root = work / "old"
        inner.reconcile(write_folder(old_root, 1, served))
        _wait_serving(Client(served))
        stop = manager.Event()
        running = pool.submit(run_until, served, stop)
        time.sleep(1.0)
        for k in range(args.old_switches):
            inner.reconcile(write_folder(old_root, 2 if k % 2 == 0 else 1, served))
            _wait_serving(Client(served))
        stop.set()
        old = running.result()
    finally:
        inner.stop_all()
        proxy.stop()
        pool.shutdown()
        manager.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    total = len(load.ok) + len(load.failures)
    print(f"\n{args.promotions} promotions (v1 <-> v2, hand-over) under back-to-back requests")
    print(f"  requests: {total}, failed: {len(load.failures)} (target 0)"
          + (f" {sorted(set(load.failures))}" if load.failures else ""))  # fmt: skip
    print("  versions answered: " + ", ".join(f"{v[:15]}… {n}" for v, n in load.versions.items()))
    print(f"  per promotion (new version start -> ready -> switched -> old drained): "
          f"p50 {percentile(switch_times, 50):.2f} s, max {max(switch_times):.2f} s")  # fmt: skip
    old_total = len(old.ok) + len(old.failures)
    print(f"  baseline, stop-then-start on the port ({args.old_switches} switches): "
          f"{len(old.failures)} of {old_total} requests failed")  # fmt: skip
    print(f"\nlatency of GET /version/ (one connection per request), "
          f"{len(direct)} requests each, rounds interleaved")  # fmt: skip
    print(f"  direct to the server: p50 {d50 * 1000:.2f} ms, p95 {d95 * 1000:.2f} ms")
    print(f"  through the proxy:    p50 {p50 * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms")
    print(f"  added at p50: {(p50 / d50 - 1) * 100:+.1f} % (target <= 5 %), "
          f"ratio proxy/direct p50 {p50 / d50:.3f}")  # fmt: skip
    dp, pp = percentile(direct_predict, 50), percentile(proxied_predict, 50)
    print(f"latency of POST /predict/ (the workload; {IMAGE.name}), "
          f"{len(direct_predict)} requests each")  # fmt: skip
    print(f"  direct p50 {dp * 1000:.2f} ms, through the proxy p50 {pp * 1000:.2f} ms: "
          f"added {(pp / dp - 1) * 100:+.1f} %")  # fmt: skip
    print(f"load average at end: {os.getloadavg()}")
    return 0 if not load.failures else 1


def _wait_serving(client: Client, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = len(client.ok)
        client.one()
        if len(client.ok) > before:
            return
        time.sleep(0.05)
    raise SystemExit("the model server never answered")


if __name__ == "__main__":
    sys.exit(main())

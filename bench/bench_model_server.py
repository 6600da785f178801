"""Benchmark of the model server: /predict/ over loopback HTTP vs the same work in-process.

Starts the real server (``python -m model_server``, waitress) on a free loopback port with
the v2 Coral model, and in the same run measures in-process decode + resize + invoke with
the same code (model_server.predictor). Prints p50/p99 latency and throughput at
concurrency 1, 2, 4, 8, the HTTP overhead at p50, the c2/c1 throughput ratio and the
server's RSS, each against its target.

    .venv/bin/python bench/bench_model_server.py [--image cat_720p.jpg] [--requests 120]

Other work on the machine skews the numbers: the load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.stats import MB, fmt_bytes, median, percentile  # noqa: E402

CORAL = REPO.parent / "shared" / "testdata" / "coral"
MODEL = "mobilenet_v2_1.0_224_quant.tflite"
LABELS = "imagenet_labels.txt"
MIME = {".jpg": "image/jpeg", ".bmp": "image/bmp", ".png": "image/png"}
CONCURRENCY = (1, 2, 4, 8)

TARGET_OVERHEAD_PCT = 10.0
TARGET_C2_RATIO = 1.6
TARGET_RSS_MB = 150.0  # MB = 10^6 bytes


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_bytes(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of ``pid`` in bytes (/proc's "kB" are KiB)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def run_concurrent(
    call: Callable[[int], None], concurrency: int, total: int
) -> tuple[list[float], float]:
    """Run ``total`` calls on ``concurrency`` threads; per-call latencies and wall time."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker(slot: int) -> None:
        mine = []
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            start = time.perf_counter()
            call(slot)
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def make_predictor(workers: int) -> Any:
    """The server's own pipeline (model_server.predictor), in this process."""
    sys.path.insert(0, str(REPO))
    from model_server.package import from_files
    from model_server.predictor import Predictor
    from model_server.runtime import load_model

    package = from_files(CORAL / MODEL, CORAL / LABELS, None)
    return Predictor(
        load_model(package, workers=workers, threads=1), package, max_pixels=4096 * 4096
    )


def start_server(port: int, workdir: Path, telemetry: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for key in list(env):
        if key.startswith(("EDGEFLEET_", "PUBSUB_")):
            del env[key]
    args = [
        sys.executable, "-m", "model_server",
        "--model", str(CORAL / MODEL), "--labels", str(CORAL / LABELS),
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING",
    ]  # fmt: skip
    if telemetry == "offline":
        # Telemetry on, Pub/Sub unreachable: every prediction goes to the disk outbox.
        args += [
            "--telemetry", "on", "--pubsub-project", "bench",
            "--pubsub-emulator-host", "127.0.0.1:9", "--outbox-dir", str(workdir / "outbox"),
        ]  # fmt: skip
    else:
        args += ["--telemetry", "off"]
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def wait_ready(port: int, proc: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited: {(workdir / 'server.log').read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("server not ready after 60 s")


def http_caller(port: int, image: bytes, mime: str, concurrency: int) -> Callable[[int], None]:
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(concurrency)]

    def call(slot: int) -> None:
        conn = conns[slot]
        try:
            conn.request("POST", "/predict/", body=image, headers={"Content-Type": mime})
            resp = conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closes keep-alive connections idle for 30 s (waitress's
            # channel_timeout), e.g. during long in-process rounds on a busy machine.
            conn.close()
            conn.request("POST", "/predict/", body=image, headers={"Content-Type": mime})
            resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")

    return call


def fmt(latencies: list[float], wall: float) -> str:
    return (
        f"p50 {percentile(latencies, 50) * 1000:7.2f} ms  "
        f"p99 {percentile(latencies, 99) * 1000:7.2f} ms  "
        f"{len(latencies) / wall:7.1f} req/s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="cat_720p.jpg", help="image from the Coral test data")
    parser.add_argument("--requests", type=int, default=100, help="requests per phase and slot")
    parser.add_argument("--rounds", type=int, default=3, help="c1/c2 throughput rounds")
    parser.add_argument("--telemetry", choices=("offline", "off"), default="offline")
    args = parser.parse_args(argv)
    if not (CORAL / MODEL).is_file():
        sys.exit(f"bench: {CORAL / MODEL} missing (see ../shared/testdata/README.md)")
    image_path = CORAL / args.image
    image = image_path.read_bytes()
    mime = MIME[image_path.suffix]
    n = args.requests
    cpus = len(os.sched_getaffinity(0))
    print(f"model {MODEL}, image {args.image} ({len(image)} bytes), {cpus} CPUs")
    print(f"load average at start: {load_average()}")

    from edgefleet.localstack.process import free_port

    predictor = make_predictor(workers=2)

    def local(slot: int) -> None:
        predictor.predict_image(image, 5)

    with tempfile.TemporaryDirectory(prefix="bench-model-server-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        proc = start_server(port, workdir, args.telemetry)
        try:
            wait_ready(port, proc, workdir)
            idle_rss, _ = rss_bytes(proc.pid)
            remote = http_caller(port, image, mime, 8)
            for _ in range(5):
                local(0)
                remote(0)

            # 1. Latency: in-process and HTTP calls alternate, so that whatever else runs
            #    on the machine slows both sides alike.
            lat_local: list[float] = []
            lat_http: list[float] = []
            for _ in range(n):
                for call, out in ((local, lat_local), (remote, lat_http)):
                    start = time.perf_counter()
                    call(0)
                    out.append(time.perf_counter() - start)
            print(f"\nconcurrency 1, {n} alternating calls each")
            print(f"  in-process (decode + resize + invoke): {fmt(lat_local, sum(lat_local))}")
            print(f"  HTTP /predict/ (waitress, telemetry {args.telemetry}):"
                  f" {fmt(lat_http, sum(lat_http))}")  # fmt: skip

            # 2. Throughput c1 vs c2, in alternating rounds.
            ratios, local_ratios = [], []
            results: dict[int, tuple[list[float], float]] = {}
            print(f"\nthroughput rounds (c1: {n} requests, c2: {2 * n})")
            for r in range(args.rounds):
                c1 = run_concurrent(remote, 1, n)
                c2 = run_concurrent(remote, 2, 2 * n)
                l1 = run_concurrent(local, 1, n)
                l2 = run_concurrent(local, 2, 2 * n)
                ratios.append((len(c2[0]) / c2[1]) / (len(c1[0]) / c1[1]))
                local_ratios.append((len(l2[0]) / l2[1]) / (len(l1[0]) / l1[1]))
                results[1], results[2] = c1, c2
                print(f"  round {r + 1}: HTTP c1 {len(c1[0]) / c1[1]:5.1f} req/s, "
                      f"c2 {len(c2[0]) / c2[1]:5.1f} req/s -> {ratios[-1]:.2f}x; "
                      f"in-process {local_ratios[-1]:.2f}x")  # fmt: skip

            # 3. All concurrency levels over HTTP.
            print("\nHTTP /predict/ by concurrency")
            for c in CONCURRENCY:
                if c > 2:
                    results[c] = run_concurrent(remote, c, 2 * n)
                print(f"  c{c}: {fmt(*results[c])}")
            rss, peak = rss_bytes(proc.pid)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/version/")
            version = json.loads(conn.getresponse().read())
            conn.close()
        finally:
            proc.terminate()
            proc.wait(20)

    local_p50 = percentile(lat_local, 50)
    http_p50 = percentile(lat_http, 50)
    overhead = (http_p50 - local_p50) / local_p50 * 100
    ratio = median(ratios)

    def verdict(ok: bool) -> str:
        return "OK" if ok else "MISSED"

    print(f"\nserver: runtime {version['runtime']} {version['runtime_version']}, "
          f"delegate {version['delegate']}, 2 interpreters x 1 thread")  # fmt: skip
    print(
        f"HTTP overhead at p50: {overhead:+.1f} % of in-process "
        f"({http_p50 * 1000:.2f} vs {local_p50 * 1000:.2f} ms)  "
        f"target <= {TARGET_OVERHEAD_PCT:.0f} %: {verdict(overhead <= TARGET_OVERHEAD_PCT)}"
    )
    print(
        f"throughput c2/c1 over HTTP (median of {len(ratios)} rounds): {ratio:.2f}x  "
        f"target >= {TARGET_C2_RATIO}x: {verdict(ratio >= TARGET_C2_RATIO)}; "
        f"in-process {median(local_ratios):.2f}x"
    )
    print(
        f"server RSS: {fmt_bytes(idle_rss)} ready, {fmt_bytes(rss)} after the run, "
        f"peak {fmt_bytes(peak)}  "
        f"target <= {TARGET_RSS_MB:.0f} MB: {verdict(peak <= TARGET_RSS_MB * MB)}"
    )
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

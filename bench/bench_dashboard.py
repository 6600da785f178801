"""The dashboard and `edgefleet status` over a 10,000-device fleet, against the GCS emulator.

    .venv/bin/python bench/bench_dashboard.py [--devices 10000] [--changed 100] [--runs 5]
                                              [--baseline-objects 2000] [--no-browser]

Seeds ``--devices`` realistic status reports (the agent's report shape with a model
summary, tests/support/reports.py) into a fake-gcs-server bucket, then measures, with
request counts from the emulator's access log:

- baseline: what `edgefleet status` did before the index: list, then per object a
  metadata GET and a download (google-cloud-storage ``Bucket.read``), one after another.
  Timed over the first ``--baseline-objects`` listed objects and scaled linearly to the
  fleet (stated as such; 0 = the whole fleet);
- `edgefleet status` as a process: cold (no disk cache), warm (cache from the last run,
  nothing changed), and warm with ``--changed`` reports rewritten;
- the dashboard (`edgefleet dashboard` as a process, warm disk cache): time until its
  first refresh is done, the first page load in headless Chromium (navigation until the
  fleet table is rendered from /api/devices; plain HTTP GETs of the same four requests
  with --no-browser), each further page load, and the background refresh with nothing /
  ``--changed`` reports changed (the service's own timing, /api/status) and its requests.

Times are wall-clock seconds (s); percentiles from bench/stats.py. The machine is shared:
read the numbers with the load average printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support import reports  # noqa: E402

from bench.stats import percentile, summarize  # noqa: E402
from device import gcs_json  # noqa: E402
from edgefleet.cloud import storage  # noqa: E402
from edgefleet.localstack.gcs import GcsEmulator  # noqa: E402
from edgefleet.localstack.process import free_port  # noqa: E402

BUCKET = "bench-dashboard"
EDGEFLEET = str(Path(sys.executable).parent / "edgefleet")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--changed", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline-objects", type=int, default=2000)
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, GcsEmulator(Path(tmp) / "gcs") as gcs:
        env = {**os.environ, **gcs.env(), "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        os.environ.update(gcs.env())
        gcs.create_bucket(BUCKET)
        writer = gcs_json.connect(BUCKET, connections=16)
        t = time.monotonic()
        docs = reports.fleet(args.devices)
        reports.seed(writer, docs)
        print(f"seeded {args.devices} status reports in {time.monotonic() - t:.1f} s "
              f"({sum(len(reports.encode(d)) for d in docs) / 1e6:.1f} MB)")  # fmt: skip

        def count(since: int) -> int:
            return len(gcs.requests(since, bucket=BUCKET))

        base_s, base_n = baseline(gcs, args.baseline_objects, args.devices, count)
        status = {}
        for label, mutate in (("cold", None), ("warm", None), (f"{args.changed} changed", True)):
            if label == "cold":
                env_run = {**env, "XDG_CACHE_HOME": str(Path(tmp) / "cold-cache")}
            else:
                env_run = env
            if label == "warm":  # fill the shared cache first (not timed)
                run_status(env)
            if mutate:
                rewrite(writer, docs, args.changed)
            status[label] = run_status(env_run, gcs=gcs, count=count)
        dash = bench_dashboard(env, writer, docs, args)

    print("\n== edgefleet status over", args.devices, "devices (s; requests to the bucket)")
    print(f"  baseline (read one by one)  {base_s:8.2f} s  {base_n:6d} requests")
    for label, (secs, n) in status.items():
        print(f"  index, {label:19} {secs:8.2f} s  {n:6d} requests  "
              f"({base_s / secs:.1f}x faster than baseline)")  # fmt: skip
    print("\n== edgefleet dashboard over", args.devices, "devices")
    for line in dash:
        print("  " + line)
    print(f"\nload average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores shared)")
    return 0


def baseline(gcs, objects: int, devices: int, count) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """The pre-index read path, timed over ``objects`` objects, scaled to ``devices``."""
    bucket = storage.Bucket(storage.make_client(), BUCKET)
    mark = gcs.mark()
    t = time.monotonic()
    names = list(bucket.list("status/"))
    listed = time.monotonic() - t
    sample = names[: objects or len(names)]
    t = time.monotonic()
    for name in sample:
        bucket.read(name, max_bytes=256 * 1024)
    each = (time.monotonic() - t) / len(sample)
    n = count(mark)
    scale = devices / len(sample)
    if len(sample) < devices:
        print(f"baseline: {len(sample)} objects read in {each * len(sample):.1f} s, "
              f"scaled x{scale:.1f} to {devices}")  # fmt: skip
    list_requests = -(-devices // 1000)
    return listed + each * devices, round((n - list_requests) * scale) + list_requests


def rewrite(writer, docs, changed: int) -> None:  # type: ignore[no-untyped-def]
    step = max(1, len(docs) // changed)
    picked = [dict(d, health="degraded: mobilenet") for d in docs[::step][:changed]]
    reports.seed(writer, picked)


def run_status(env, *, gcs=None, count=None) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    mark = gcs.mark() if gcs else 0
    t = time.monotonic()
    proc = subprocess.run([EDGEFLEET, "status", "--bucket", BUCKET], env=env,
                          capture_output=True, timeout=600, check=False)  # fmt: skip
    took = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(f"edgefleet status failed: {proc.stderr.decode()[-500:]}")
    lines = proc.stdout.decode().count("\n")
    assert lines >= 1, "status printed no table"
    return took, (count(mark) if count else 0)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


def bench_dashboard(env, writer, docs, args) -> list[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    t = time.monotonic()
    proc = subprocess.Popen(
        [EDGEFLEET, "dashboard", "--bucket", BUCKET, "--port", str(port), "--refresh-seconds", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    out = []
    try:
        status = wait_ready(url, proc)
        out.append(f"ready (warm disk cache: list + parse {args.devices} reports) "
                   f"{time.monotonic() - t:6.2f} s")  # fmt: skip
        loads = page_loads(url, args.runs, args.no_browser)
        what = "HTTP GETs of page + css + js + /api/devices" if args.no_browser else "Chromium"
        out.append(f"first page load ({what})      {loads[0]:6.2f} s")
        if len(loads) > 1:
            s = summarize(loads[1:])
            out.append(f"page loads after it, n={s.n}: p50 {s.p50:.2f} s, p95 {s.p95:.2f} s")
        for label, changed in (("nothing changed", 0), (f"{args.changed} changed", args.changed)):
            times, reqs = [], []
            for _ in range(args.runs):
                if changed:
                    fresh = [dict(d, agentVersion=str(time.time())) for d in docs]
                    rewrite(writer, fresh, changed)
                status = next_refresh(url, status, want_fetched=changed)
                times.append(status["refreshSeconds"])
                reqs.append(status["lastRefresh"]["requests"])
            p50, most, n = percentile(times, 50), max(times), percentile(reqs, 50)
            out.append(f"refresh, {label:16}: p50 {p50:.2f} s, max {most:.2f} s; "
                       f"requests p50 {n:.0f} (the dashboard's own count)")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def next_refresh(url: str, status: dict, *, want_fetched: int) -> dict:  # type: ignore[type-arg]
    """The status after the next refresh; with ``want_fetched``, after the next one that
    fetched that many reports (a refresh already running may have caught only some)."""
    while True:
        before = status["refreshedAt"]
        while status["refreshedAt"] == before:
            time.sleep(0.1)
            status = json.loads(get(url + "api/status"))["status"]
        if not want_fetched or status["lastRefresh"]["fetched"] >= want_fetched:
            return status


def wait_ready(url: str, proc) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dashboard exited: {proc.stderr.read().decode()[-500:]}")
        try:
            status = json.loads(get(url + "api/status"))["status"]
            if status["ready"]:
                return status
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("dashboard not ready after 600 s")


def page_loads(url: str, runs: int, no_browser: bool) -> list[float]:
    if no_browser:
        out = []
        for _ in range(runs):
            t = time.monotonic()
            for path in ("", "static/dashboard.css", "static/dashboard.js", "api/devices"):
                get(url + path)
            out.append(time.monotonic() - t)
        return out
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        for _ in range(runs):
            context = browser.new_context()  # a fresh cache each time
            page = context.new_page()
            t = time.monotonic()
            page.goto(url)
            page.wait_for_selector("main[data-loaded]")
            out.append(time.monotonic() - t)
            assert page.locator("tbody tr").count() == 100
            context.close()
        browser.close()
    return out


if __name__ == "__main__":
    sys.exit(main())

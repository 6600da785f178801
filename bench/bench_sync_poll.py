"""Cost of a device's no-op poll, next to a gsutil-rsync-style baseline, in one run.

    .venv/bin/python bench/bench_sync_poll.py [--polls 50] [--idle-seconds 20]

Against a real fake-gcs-server (edgefleet.localstack.gcs) behind a counting TCP proxy:
requests per poll come from the emulator's access log, bytes per poll (both directions,
headers included) from the proxy. The baseline is what a no-op ``gsutil rsync`` of the
two prefixes ``ARCH/all/`` and ``ARCH/CHANNEL/`` costs: it compares from the LISTING
(name, size, generation, checksums of each object; no per-object request when nothing
changed), made with the same HTTP client as the agent (urllib3, the device adapter's
stack, same endpoint). The agent polls through the device's own adapter
(:mod:`device.gcs_json`). Then the real agent (``python -m sync_pod``) runs as a process
with POLL_SECONDS=1 after applying a set, with the device's default checks (the
allowlist): its RSS and CPU while idle and its peak; for ``V1POD_CHECK=on``, the peak
RSS of the per-set check child (:mod:`device.podcheck`), which then runs beside the agent
while a new set is applied, so the device's footprint is the sum; the RSS the same
process would have on real GCS (plus google.auth), and the latency the check child adds
to applying a new set.

Units: MiB = 2^20 bytes, MB = 10^6 bytes, kB = 10^3 bytes; the RSS target is in MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import urllib3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support.sync import FAKE_DIGEST, SetPublisher, entries, pod_yaml  # noqa: E402

from bench.stats import MB, Summary, fmt_bytes, median, summarize  # noqa: E402
from device import gcs_json  # noqa: E402
from device.podcheck import ChildModelCheck  # noqa: E402
from device.runtime import KubeletRuntime  # noqa: E402
from edgefleet.cloud import storage  # noqa: E402
from edgefleet.core import layout, manifest_set, policy, signing  # noqa: E402
from edgefleet.localstack.gcs import GcsEmulator  # noqa: E402
from sync_pod.agent import Agent  # noqa: E402
from sync_pod.config import from_env  # noqa: E402

ARCH, CHANNEL, REG = "x86_64", "beta", "127.0.0.1:5999"
TARGET_RSS_MB = 40.0


class CountingProxy:
    """A TCP proxy on 127.0.0.1 that counts the bytes it forwards, both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.bytes = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._sock.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.bytes += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def publish_fleet(bucket: storage.Bucket, signer: Ed25519PrivateKey) -> None:
    """A realistic channel, signed as the control plane signs it: the sync pod, a model
    server, a fleet-wide pod; plus the human-readable mirror objects the baseline syncs."""
    image = f"{REG}/edgefleet/model@{FAKE_DIGEST}"
    pods = {
        layout.SYNC_POD_NAME: pod_yaml(layout.SYNC_POD_NAME, f"{REG}/edgefleet/sync@{FAKE_DIGEST}"),
        "equipmentparts": pod_yaml("equipmentparts", image),
    }
    fleet = {"telemetry": pod_yaml("telemetry", image)}
    publisher = SetPublisher(bucket, ARCH, CHANNEL, signers=[signer])
    publisher.publish(entries(pods) + entries(fleet, "all"))
    for name, text in pods.items():
        bucket.write(layout.manifest_object(ARCH, CHANNEL, name), text.encode())
    for name, text in fleet.items():
        bucket.write(layout.manifest_object(ARCH, "all", name), text.encode())


def agent_set(bucket: storage.Bucket):  # type: ignore[no-untyped-def]
    blob = bucket.read(layout.set_object(ARCH, CHANNEL))
    assert blob is not None
    return manifest_set.decode(blob.data).manifest_set


# What gsutil rsync reads of each object to decide whether to copy it.
LIST_FIELDS = "items(name,size,generation,crc32c,md5Hash,updated),nextPageToken"


def rsync_list_poll(http: urllib3.PoolManager, endpoint: str, bucket_name: str) -> int:
    """One no-op rsync of the two prefixes: list each (every page), compare, copy nothing.
    Returns the number of objects listed."""
    listed = 0
    for prefix in (f"{ARCH}/all/", f"{ARCH}/{CHANNEL}/"):
        token = ""
        while True:
            params = {
                "prefix": prefix,
                "fields": LIST_FIELDS,
                **({"pageToken": token} if token else {}),
            }
            url = f"{endpoint}/storage/v1/b/{bucket_name}/o?{urlencode(params)}"
            resp = http.request("GET", url, timeout=10.0, retries=False)
            if resp.status != 200:
                raise SystemExit(
                    f"baseline listing failed: HTTP {resp.status}: {resp.data[:200]!r}"
                )
            page = json.loads(resp.data)
            listed += len(page.get("items", []))
            token = page.get("nextPageToken", "")
            if not token:
                break
    return listed


def measure(
    gcs: GcsEmulator, proxy: CountingProxy, polls: int, poll
) -> tuple[float, float, Summary]:  # type: ignore[no-untyped-def]
    """(requests per poll, bytes per poll, summary of each poll's wall time in seconds)."""
    poll()  # warm the connection pool
    mark, before = gcs.mark(), proxy.bytes
    times = []
    for _ in range(polls):
        t0 = time.perf_counter()
        poll()
        times.append(time.perf_counter() - t0)
    time.sleep(0.2)
    return len(gcs.requests(mark)) / polls, (proxy.bytes - before) / polls, summarize(times)


def proc_stats(pid: int) -> tuple[int, int, float]:
    """(RSS bytes, peak RSS bytes, CPU seconds) of a process, from /proc (kB there = KiB)."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0]) * 1024
    hwm = int(fields["VmHWM"].split()[0]) * 1024
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return rss, hwm, cpu


def met(ok: bool) -> str:
    return "MET" if ok else "MISSED"


# The check child as the agent runs it, plus one line: its peak RSS (VmHWM, KiB) written
# to the file named by argv[1] when it exits. Not ``ru_maxrss``: Linux carries that over
# an exec from the process image before it, and Python starts children by vfork, so the
# child's ``ru_maxrss`` is at least its PARENT's RSS (until 2026-11-30 this bench printed
# the bench process's ~80 MiB as the child's peak); VmHWM belongs to the new image.
PEAK_CHILD = (
    "import atexit, runpy, sys\n"
    "out = sys.argv.pop(1)\n"
    "def hwm():\n"
    "    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
    "    open(out, 'w').write(line.split()[1])\n"
    "atexit.register(hwm)\n"
    "runpy.run_module('device.podcheck', run_name='__main__')\n"
)


def check_child_peak(manifests: dict[str, str], work: Path) -> int:
    """Peak RSS (bytes) of the V1Pod check child checking ``manifests``."""
    out = work / "podcheck-peak"
    child = ChildModelCheck(command=[sys.executable, "-c", PEAK_CHILD, str(out)])
    if any(child(manifests).values()):
        _fail()
    return int(out.read_text()) * 1024


def rss_after_import(modules: str) -> float:
    """VmRSS (MiB) of a fresh interpreter once ``modules`` are imported."""
    code = (
        f"import {modules}\n"
        "print(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        check=True,
        text=True,
    )
    return int(out.stdout) / 1024


def timed(fn, runs: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Wall seconds of each of ``runs`` calls of ``fn``."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def check_latency(manifests: dict[str, str], runs: int = 5) -> tuple[float, float]:
    """Median seconds of the V1Pod check of one set: in a child process vs in-process (warm)."""
    child = ChildModelCheck()
    child_s = median(timed(lambda: not any(child(manifests).values()) or _fail(), runs))
    policy.model_errors(manifests)  # warm the import, as a long-lived process would be
    inproc = timed(lambda: not any(policy.model_errors(manifests).values()) or _fail(), runs)
    return child_s, median(inproc)


def _fail() -> None:
    raise SystemExit("the V1Pod check rejected the benchmark's own set")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--polls", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    with GcsEmulator(work / "gcs") as gcs:
        proxy = CountingProxy(gcs.port)
        endpoint = f"http://127.0.0.1:{proxy.port}"
        os.environ["STORAGE_EMULATOR_HOST"] = endpoint
        gcs.create_bucket("bench")
        client = storage.make_client()
        bucket = storage.Bucket(client, "bench")
        signer = signing.generate(work / "signing.pem")
        publish_fleet(bucket, signer)
        env = {
            "BUCKET": "bench",
            "ARCH": ARCH,
            "CHANNEL": CHANNEL,
            "DEVICE_ID": "bench-1",
            "MANIFEST_DIR": str(work / "device" / "pods"),
            "STATE_DIR": str(work / "state"),
            "ALLOWED_REGISTRIES": REG,
            "TRUSTED_KEYS": str(work / "signing.pem.pub"),
            "STATUS_SECONDS": "3600",
        }
        lean = gcs_json.connect("bench", timeout=10.0, retry=gcs_json.Retry(timeout=5.0))
        agent = Agent(from_env(env), lean, KubeletRuntime())
        agent.recover()
        assert agent.poll_once() == "applied"
        agent.report(force=True)

        agent_req, agent_bytes, agent_t = measure(gcs, proxy, args.polls, agent.poll_once)
        baseline_http = urllib3.PoolManager(maxsize=2)  # as gcs_json.connect builds it
        listed = rsync_list_poll(baseline_http, endpoint, "bench")
        base_req, base_bytes, base_t = measure(
            gcs, proxy, args.polls, lambda: rsync_list_poll(baseline_http, endpoint, "bench")
        )
        print(f"no-op poll, mean of {args.polls} (fake-gcs-server, counting proxy):")
        print(f"  sync agent      {agent_req:5.1f} requests  {agent_bytes:8.0f} bytes")
        print(
            f"  rsync baseline  {base_req:5.1f} requests  {base_bytes:8.0f} bytes  "
            f"(list-only, {listed} objects listed, same urllib3 client)"
        )
        print(f"  sync agent poll time      {agent_t.scaled(1000).line('ms')}")
        print(f"  rsync baseline poll time  {base_t.scaled(1000).line('ms')}")
        print(
            f"  ratio baseline/agent: {base_req / agent_req:.1f}x requests, "
            f"{base_bytes / agent_bytes:.1f}x bytes"
        )
        print(
            f"  targets: 1 request {'MET' if agent_req <= 1 else 'MISSED'}, "
            f"< 2 kB (2000 bytes) {'MET' if agent_bytes < 2000 else 'MISSED'}"
        )

        # The real agent process, idle after an apply (new state dir: it applies first).
        proc_env = {
            **os.environ,
            **env,
            "STATE_DIR": str(work / "state2"),
            "MANIFEST_DIR": str(work / "device2" / "pods"),
            "POLL_SECONDS": "1",
            "KUBELET_API": "off",  # no kubelet here: the health gate judges probes alone
            "PYTHONPATH": str(REPO),
        }
        log = open(work / "agent.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "sync_pod"], env=proc_env, stderr=log)
        try:
            deadline = time.time() + 60
            while b"manifest set applied" not in (work / "agent.log").read_bytes():
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit("agent did not apply the set: see " + str(work / "agent.log"))
                time.sleep(0.1)
            time.sleep(2)
            _, _, cpu0 = proc_stats(proc.pid)
            t0 = time.time()
            time.sleep(args.idle_seconds)
            rss, hwm, cpu1 = proc_stats(proc.pid)
            idle = time.time() - t0
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
        texts = {f: e.yaml for f, e in agent_set(bucket).effective().items()}
        child_peak = check_child_peak(texts, work)
        total = hwm + child_peak
        print(f"agent process (POLL_SECONDS=1, {idle:.0f} s idle after an apply):")
        print(f"  RSS idle {fmt_bytes(rss)}; agent peak {fmt_bytes(hwm)}")
        print(
            f"  device footprint while applying a set (default checks: the allowlist): agent "
            f"peak {fmt_bytes(hwm)}; target <= {TARGET_RSS_MB:.0f} MB: "
            f"{met(hwm <= TARGET_RSS_MB * MB)} (idle agent: {met(rss <= TARGET_RSS_MB * MB)})"
        )
        print(
            f"  with V1POD_CHECK=on: check child peak {fmt_bytes(child_peak)} beside the agent "
            f"for each new set; agent peak + child peak = {fmt_bytes(total)}: "
            f"{met(total <= TARGET_RSS_MB * MB)}"
        )
        print(
            f"  idle CPU {100 * (cpu1 - cpu0) / idle:.2f} % of one core "
            f"({(cpu1 - cpu0) / idle * 1000:.1f} ms per second at 1 poll/s)"
        )
        device = "sync_pod.__main__, sync_pod.agent, device.podman, device.gcs_json"
        on_gcs = rss_after_import(f"{device}, google.auth, google.auth.transport.urllib3")
        print(
            f"  after import: agent modules {rss_after_import(device):.1f} MiB; "
            f"with google.auth (real GCS) {on_gcs:.1f} MiB; "
            f"google-cloud-storage + kubernetes.client (before) "
            f"{rss_after_import(f'{device}, google.cloud.storage, kubernetes.client'):.1f} MiB"
        )
        child_s, inproc_s = check_latency(texts)
        print(
            f"V1Pod check of a new {len(texts)}-manifest set: child process "
            f"{child_s * 1000:.0f} ms vs in-process {inproc_s * 1000:.1f} ms "
            f"(adds {(child_s - inproc_s) * 1000:.0f} ms per applied set, 0 per no-op poll)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

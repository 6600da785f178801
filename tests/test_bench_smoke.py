"""The quick benches still run, end to end, and print their numbers.

A bench is not a timed test, so nothing here judges a number; it judges that the bench
runs against the code as it is now. bench_sync_poll had stopped running when devices
began to refuse unsigned sets (fail closed), and nothing noticed until it was run by
hand. Small sizes: the point is the path, not the measurement.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run_bench(name: str, *args: str, timeout: float) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / name), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_bench_sync_poll_measures_a_signed_channel_and_the_check_child() -> None:
    out = _run_bench("bench_sync_poll.py", "--polls", "5", "--idle-seconds", "2", timeout=300)
    assert "targets: 1 request MET" in out
    peak = re.search(r"check child peak ([\d.]+) MiB", out)
    assert peak is not None, out
    # The child's own peak (a fresh interpreter with the V1Pod models), not its parent's.
    assert 10 < float(peak.group(1)) < 70, out
    assert re.search(r"V1Pod check of a new 3-manifest set: child process \d+ ms", out), out


def test_bench_fleet_applies_and_reports_every_agent_in_both_modes() -> None:
    out = _run_bench(
        "bench_fleet.py", "--agents", "20", "--workers", "2", "--rollouts", "2",
        "--poll", "3", "--poll-rollouts", "1", "--idle", "2", timeout=300,
    )  # fmt: skip
    assert "! only" not in out, out  # "! only N/M applied": an agent missed a rollout
    assert out.count("set write -> all applied") == 2, out
    assert out.count("set write -> all reported") == 2, out
    assert "GCS per device per rollout 2.00 requests (1.00 GET)" in out, out
    assert "fan-out max" in out and "to 20 agents" in out, out

"""`kill -9` of the real agent process at random points of an apply: every manifest kubelet
can read is complete (the old or the new version of its name, never a torn file), no pod
of the new set is missing once removals start, and a restart converges on the new set."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.sync import FAKE_DIGEST, SetPublisher, entries, pod_yaml

from device.runtime import KubeletRuntime
from sync_pod.agent import APPLIED, Agent
from sync_pod.config import from_env

TRIALS = 51  # the first run calibrates the apply window; 50 are killed
REG = "127.0.0.1:5999"
IMAGE = f"{REG}/edgefleet/web@{FAKE_DIGEST}"
REPO = Path(__file__).resolve().parent.parent


def _set_files(trial: int) -> dict[str, str]:
    """Every set differs in every file, and sizes alternate so a mix would show."""
    count = 30 if trial % 2 else 24
    return {
        f"pod-{i}": pod_yaml(f"pod-{i}", IMAGE, command=["/bin/busybox", "sleep", str(trial)])
        for i in range(count)
    }


def _folder(manifest_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in manifest_dir.iterdir()}


def _expected(pods: dict[str, str]) -> dict[str, str]:
    return {f"{name}-pod.yaml": text for name, text in pods.items()}


def _wait_for_line(log: Path, needle: str, proc: subprocess.Popen, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and needle in log.read_text():
            return time.monotonic()
        if proc.poll() is not None:
            break
        time.sleep(0.001)
    raise AssertionError(f"agent never logged {needle!r}:\n{log.read_text()[-2000:]}")


@pytest.mark.slow
def test_kill_9_during_apply_leaves_old_or_new_set(bucket, tmp_path: Path) -> None:
    env = {
        "BUCKET": bucket.name,
        "ARCH": "x86_64",
        "CHANNEL": "beta",
        "DEVICE_ID": "crash-1",
        "MANIFEST_DIR": str(tmp_path / "device" / "pods"),
        "STATE_DIR": str(tmp_path / "state"),
        "ALLOWED_REGISTRIES": REG,
        "STATUS_SECONDS": "3600",
        "KUBELET_API": "off",  # no kubelet: this test is about the folder on disk
    }
    proc_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    manifest_dir = Path(env["MANIFEST_DIR"])
    pub = SetPublisher(bucket, "x86_64", "beta")

    def in_process_agent() -> Agent:
        return Agent(from_env(env), bucket, KubeletRuntime())

    current = _set_files(0)
    pub.publish(entries(current))
    agent = in_process_agent()
    agent.recover()
    assert agent.poll_once() == APPLIED

    rng = random.Random(20261123)
    window = None
    outcomes = {"old": 0, "new": 0, "mixed": 0, "journal-pending": 0}
    for trial in range(1, TRIALS + 1):
        nxt = _set_files(trial)
        pub.publish(entries(nxt))
        log = tmp_path / f"agent-{trial}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sync_pod", "--once"],
                env=proc_env,
                stdout=fh,
                stderr=fh,
                cwd=tmp_path,
            )
        try:
            started = _wait_for_line(log, "applying manifest set", proc, 60)
            if window is None:
                # Calibrate once: how long an apply takes, start to commit.
                _wait_for_line(log, "manifest set applied", proc, 60)
                window = max(time.monotonic() - started, 0.005)
                proc.wait(30)
            else:
                time.sleep(rng.uniform(0, window * 1.2))
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        seen = _folder(manifest_dir)
        old, new = _expected(current), _expected(nxt)
        # What kubelet can read (names without a leading dot): every file is complete,
        # the old or the new version of its name; no pod of the new set is missing once
        # removals started (adds come first).
        visible = {n: t for n, t in seen.items() if not n.startswith(".")}
        torn = [n for n, t in visible.items() if t not in (old.get(n), new.get(n))]
        assert not torn, f"trial {trial}: files neither old nor new: {torn[:5]}"
        if set(old) - set(new) - set(visible):  # removals have started
            assert set(new) <= set(visible), f"trial {trial}: removed before every add"
        if visible == old:
            outcomes["old"] += 1
        elif visible == new:
            outcomes["new"] += 1
        else:
            outcomes["mixed"] += 1
        state = json.loads((tmp_path / "state" / "state.json").read_text())
        outcomes["journal-pending"] += state["pending"] is not None
        # A restart (here in-process) finishes or discards, then converges on the new set.
        agent = in_process_agent()
        agent.recover()
        agent.poll_once()
        assert _folder(manifest_dir) == _expected(nxt), f"trial {trial}: did not converge"
        assert agent.state.pending is None
        leftovers = [p.name for p in manifest_dir.parent.iterdir() if p.name != "pods"]
        assert leftovers == [], leftovers
        assert len(list((tmp_path / "state" / "sets").iterdir())) <= 2
        current = nxt
    print(f"kill -9 outcomes over {TRIALS - 1} kills: {outcomes}, apply window {window:.3f}s")
    # The kills really landed inside applies: before, during and after the file renames.
    assert outcomes["journal-pending"] >= 5, outcomes
    assert outcomes["old"] >= 3 and outcomes["new"] + outcomes["mixed"] >= 3, outcomes

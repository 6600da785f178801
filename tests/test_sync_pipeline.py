"""The agent's pure pieces: what a poll's result makes it remember (sync_pod.memory), the
back-off policy, and the pluggable wait between polls (sync_pod.wait)."""

from __future__ import annotations

import threading
import time

import pytest
from support.sync import FAKE_DIGEST, TEST_REGISTRY, SetPublisher, agent_env, entries, pod_yaml

from device import gcs_json
from device.runtime import KubeletRuntime
from sync_pod.agent import Agent
from sync_pod.config import from_env
from sync_pod.folder import REMOVE, SYNC_POD_FILE, WRITE, write_order
from sync_pod.memory import BackoffPolicy, backing_off, remember
from sync_pod.pipeline import Outcome, PollResult, Reason
from sync_pod.state import State
from sync_pod.wait import Waiter

A, B = "a" * 64, "b" * 64
POLICY = BackoffPolicy(base=30.0, cap=3600.0)


def test_backoff_doubles_and_is_bounded() -> None:
    assert [POLICY.delay(n) for n in range(1, 10)] == [
        30, 60, 120, 240, 480, 960, 1920, 3600, 3600,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("outcome", "seen"),
    [
        (Outcome.APPLIED, True),
        (Outcome.REJECTED, True),
        (Outcome.ROLLED_BACK, True),
        (Outcome.ROLLBACK_FAILED, True),
        (Outcome.UNCHANGED, True),
        (Outcome.FAILED, False),
        (Outcome.OFFLINE, False),
        (Outcome.BACKING_OFF, False),
    ],
)
def test_only_a_final_verdict_marks_the_generation_seen(outcome: Outcome, seen: bool) -> None:
    state = State(seen_generation=1)
    remember(state, PollResult(outcome, Reason.UNEXPECTED, "x", A, 7), now=0.0, backoff=POLICY)
    assert state.seen_generation == (7 if seen else 1)
    assert (A in state.bad_digests) == (outcome in (Outcome.ROLLED_BACK, Outcome.ROLLBACK_FAILED))


def test_failures_of_one_set_back_off_and_another_set_starts_over() -> None:
    state = State()
    failed = PollResult(Outcome.FAILED, Reason.RUNTIME, "pull", A, 7)
    for n, now in enumerate((100.0, 200.0, 400.0), start=1):
        remember(state, failed, now=now, backoff=POLICY)
        assert state.backoff is not None and state.backoff.failures == n
        assert state.backoff.until == now + 30 * 2 ** (n - 1)
    until = state.backoff.until
    assert backing_off(state, now=until - 1, generation=7) is not None
    assert backing_off(state, now=until - 1, digest=A) is not None
    assert backing_off(state, now=until, generation=7) is None
    assert backing_off(state, now=until - 1, generation=8, digest=B) is None
    # Offline and backing-off teach nothing: the back-off stays.
    remember(state, PollResult(Outcome.OFFLINE, Reason.OFFLINE), now=500.0, backoff=POLICY)
    assert state.backoff is not None and state.backoff.failures == 3
    remember(state, PollResult(Outcome.FAILED, Reason.RUNTIME, "pull", B, 8), now=600.0,
             backoff=POLICY)  # fmt: skip
    assert state.backoff.digest == B and state.backoff.failures == 1
    remember(state, PollResult(Outcome.REJECTED, Reason.POLICY, "no", B, 9), now=700.0,
             backoff=POLICY)  # fmt: skip
    assert state.backoff is None


def test_a_wake_ends_the_wait_early_and_stop_ends_the_loop() -> None:
    wait = Waiter()
    threading.Timer(0.1, wait.wake, args=("mqtt",)).start()
    started = time.monotonic()
    assert wait(10.0) == "mqtt"
    assert time.monotonic() - started < 2.0
    assert wait(0.05) == "timeout"
    threading.Timer(0.1, wait.stop).start()
    assert wait(10.0) == "stop"
    assert wait(10.0) == "stop"  # at once, every time after


def test_run_polls_reports_and_waits_through_the_given_wait(bucket, gcs, tmp_path) -> None:
    device = gcs_json.connect(bucket.name, timeout=5.0, retry=gcs_json.NO_RETRY, env=gcs.env())
    SetPublisher(bucket, "x86_64", "beta").publish(
        entries({"web": pod_yaml("web", f"{TEST_REGISTRY}/x/web@{FAKE_DIGEST}")})
    )
    agent = Agent(from_env(agent_env(bucket.name, tmp_path, POLL_SECONDS="30")), device,
                  KubeletRuntime())  # fmt: skip
    asked: list[float] = []

    def wait(timeout: float) -> str:
        asked.append(timeout)
        return "stop" if len(asked) == 2 else "wake"

    agent.run(wait, jitter=lambda: 1.0)
    assert asked == [30.0, 30.0]
    assert agent.state.applied is not None
    assert agent.last_result is not None and agent.last_result.outcome is Outcome.UNCHANGED


def test_write_order_adds_first_removes_after_and_the_sync_pod_last() -> None:
    live = {"a-pod.yaml": b"1", "b-pod.yaml": b"1", "gone-pod.yaml": b"1", SYNC_POD_FILE: b"1"}
    wanted = {"b-pod.yaml": b"2", "a-pod.yaml": b"1", "new-pod.yaml": b"1", SYNC_POD_FILE: b"2"}
    assert write_order(live, wanted) == [
        (WRITE, "b-pod.yaml"),
        (WRITE, "new-pod.yaml"),
        (REMOVE, "gone-pod.yaml"),
        (WRITE, SYNC_POD_FILE),
    ]
    assert write_order(wanted, wanted) == []

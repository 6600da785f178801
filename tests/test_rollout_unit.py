"""Progressive rollouts, the pure parts: cohort rule, the set's rollout block, operator
input, the decision at a tick, the device's select stage, and the model-metrics window
(read from a real model-server Metrics registry's Prometheus output)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import generate_latest

from edgefleet.cloud import rollout
from edgefleet.cloud.rollout import Report, View
from edgefleet.cloud.set_store import carried_rollout
from edgefleet.core import cohort, manifest_set
from edgefleet.core.errors import InvalidInput, SetRejected
from edgefleet.core.manifest_set import ManifestEntry, RolloutRule
from sync_pod import model_metrics
from sync_pod.pipeline import Outcome, PollResult, Reason, Verified
from sync_pod.rollout import RolloutMemory

T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
BASE = "sha256:" + "b" * 64
CAND = "sha256:" + "c" * 64
POD = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: model\n# {note}\n"


# -- cohort -----------------------------------------------------------------------------


def test_cohort_is_monotone_and_close_to_the_percentage() -> None:
    devices = [f"dev-{i}" for i in range(2000)]
    at10 = set(cohort.cohort("ro-abc123", devices, 10))
    at50 = set(cohort.cohort("ro-abc123", devices, 50))
    assert at10 <= at50 and len(cohort.cohort("ro-abc123", devices, 100)) == 2000
    assert 150 < len(at10) < 250 and 900 < len(at50) < 1100
    # Another rollout draws another cohort.
    assert set(cohort.cohort("ro-other1", devices, 10)) != at10


# -- the set's rollout block -----------------------------------------------------------


def _set(rule: RolloutRule | None, note: str = "base") -> manifest_set.ManifestSet:
    entries = [ManifestEntry("model", "channel", POD.format(note=note))]
    return manifest_set.next_set(None, "x86_64", "stable", entries, now=T0, rollout=rule)


def _rule(percent: float = 50, rid: str = "ro-abc123") -> RolloutRule:
    cand = ManifestEntry("model", "channel", POD.format(note="cand"))
    return RolloutRule(rid, percent, (cand,), CAND, BASE)


def test_rollout_block_is_signed_and_selects_per_device() -> None:
    key = Ed25519PrivateKey.generate()
    data = manifest_set.encode(_set(_rule()), [key])
    signed = manifest_set.decode(data)
    s = manifest_set.verify(
        signed, [key.public_key()], arch="x86_64", channel="stable", now=T0 + timedelta(hours=1)
    )
    assert s.rollout == _rule()
    ins = [d for d in (f"d{i}" for i in range(50)) if cohort.in_cohort("ro-abc123", d, 50)]
    outs = [d for d in (f"d{i}" for i in range(50)) if d not in ins]
    entries, chosen = s.select(ins[0])
    assert chosen and chosen.in_cohort and "cand" in entries["model-pod.yaml"].yaml
    entries, chosen = s.select(outs[0])
    assert chosen and not chosen.in_cohort and "base" in entries["model-pod.yaml"].yaml
    # The percentage is covered by the signature: raising it is a forgery.
    forged = data.replace(b'"percent": 50', b'"percent": 100')
    assert forged != data
    with pytest.raises(SetRejected):
        manifest_set.verify(
            manifest_set.decode(forged), [key.public_key()], arch="x86_64", channel="stable",
            now=T0,
        )  # fmt: skip


def test_set_without_rollout_encodes_as_before() -> None:
    assert "rollout" not in _set(None).to_dict()


def test_rollout_kept_while_baseline_unchanged_and_dropped_on_retag() -> None:
    old = _set(_rule())
    assert carried_rollout(old, old.entries) == _rule()
    retagged = [ManifestEntry("model", "channel", POD.format(note="retagged"))]
    assert carried_rollout(old, retagged) is None


# -- operator input --------------------------------------------------------------------


def test_gates_and_options_parse_and_bad_ones_name_the_fix() -> None:
    assert rollout.parse_gate("latency_p95 <= 1.2x") == rollout.Gate("latency_p95", "<=", 1.2, True)
    assert rollout.parse_gate("error_rate<=1%") == rollout.Gate("error_rate", "<=", 0.01, False)
    assert rollout.parse_steps("10,50,100") == (10, 50, 100)
    assert rollout.parse_duration("10m") == 600 and rollout.parse_ratio("5%") == 0.05
    for bad in ("latency <= 1", "confidence == 1", "drift <= -1", ""):
        with pytest.raises(InvalidInput, match="gate"):
            rollout.parse_gate(bad)
    for bad in ("50,10,100", "10,50", "0,100"):
        with pytest.raises(InvalidInput, match="steps"):
            rollout.parse_steps(bad)


# -- the decision ----------------------------------------------------------------------


def _rollout(**kw) -> rollout.Rollout:  # type: ignore[no-untyped-def]
    args = dict(
        arch="x86_64", channel="stable", repository="reg:5000/edgefleet/mobilenet",
        source=f"reg:5000/edgefleet/mobilenet@{CAND}",
        candidate=rollout.Version(CAND, "x"), baseline=rollout.Version(BASE, "y"), now=T0,
        steps=(10, 50, 100), step_interval=60, min_devices=2, max_failure=0.05,
        gates=[rollout.parse_gate("confidence >= 0.9x"), rollout.parse_gate("error_rate <= 1%")],
        rollout_id="ro-abc123",
    )  # fmt: skip
    args.update(kw)
    return rollout.new_rollout(**args)  # type: ignore[arg-type]


def _window(digest: str, at: datetime, confidence: float, requests: int = 50, errors: int = 0):  # type: ignore[no-untyped-def]
    return {
        "digest": digest,
        "window": {"start": rollout.fmt_time(at - timedelta(seconds=5)),
                   "end": rollout.fmt_time(at), "seconds": 5.0},
        "requests": requests, "errors": errors, "errorRate": errors / requests,
        "latencyP95Ms": 20.0, "confidenceMean": confidence, "drift": 0.0,
    }  # fmt: skip


def _fleet(r: rollout.Rollout, at: datetime, cand_conf: float, *, failed=()) -> list[Report]:  # type: ignore[no-untyped-def]
    """Devices d0..d19: cohort devices report the candidate, the others the baseline."""
    reports = []
    for i in range(20):
        d = f"d{i}"
        inside = cohort.in_cohort(r.id, d, r.percent)
        digest, conf = (CAND, cand_conf) if inside else (BASE, 0.9)
        reports.append(
            Report(
                d,
                "x86_64",
                "stable",
                at,
                () if d in failed else (_window(digest, at, conf),),
                r.id if d in failed else "",
                "unhealthy" if d in failed else "",
            )
        )
    return reports


def test_healthy_candidate_holds_for_the_interval_then_advances_to_completion() -> None:
    r = _rollout(min_devices=1)
    t = T0 + timedelta(seconds=10)
    r = rollout.decide(r, View(t, BASE, tuple(_fleet(r, t, 0.88))))
    assert r.state == "running" and r.step_index == 0 and r.verdict.startswith("advancing")
    for step in (1, 2):
        t += timedelta(seconds=61)
        r = rollout.decide(r, View(t, BASE, tuple(_fleet(r, t, 0.88))))
        assert (r.state, r.step_index) == ("running", step)
    t += timedelta(seconds=61)
    r = rollout.decide(r, View(t, BASE, tuple(_fleet(r, t, 0.88))))
    assert r.state == "completed"
    assert [h["event"] for h in r.history] == ["started", "advanced", "advanced", "completed"]


def test_no_verdict_before_min_devices_report_on_the_candidate() -> None:
    r = _rollout(min_devices=3, steps=(50, 100))
    t = T0 + timedelta(seconds=120)
    reports = _fleet(r, t, 0.1)  # a confidence that would fail the gate
    inside = [i for i, rep in enumerate(reports) if cohort.in_cohort(r.id, rep.device_id, 50)]
    for i in inside[2:]:  # only two cohort devices reported on the candidate
        reports[i] = dataclasses.replace(reports[i], models=())
    r = rollout.decide(r, View(t, BASE, tuple(reports)))
    assert r.state == "running" and r.verdict == (
        "holding: 2 of 3 cohort devices reported on the candidate"
    )


def test_confidence_collapse_halts_naming_the_gate_and_both_values() -> None:
    r = _rollout(min_devices=1)
    t = T0 + timedelta(seconds=5)
    r = rollout.decide(r, View(t, BASE, tuple(_fleet(r, t, 0.3))))
    assert r.state == "halted"
    assert r.verdict == "halted: confidence 0.3 < 0.9x 0.9"
    [gate] = [g for g in r.results if g["metric"] == "confidence"]
    assert (gate["candidate"], gate["baseline"], gate["ok"]) == (0.3, 0.9, False)


def test_rollbacks_count_as_failures_without_waiting_for_reports() -> None:
    r = _rollout(min_devices=5, steps=(50, 100))
    t = T0 + timedelta(seconds=5)
    inside = [f"d{i}" for i in range(20) if cohort.in_cohort(r.id, f"d{i}", 50)]
    r = rollout.decide(r, View(t, BASE, tuple(_fleet(r, t, 0.9, failed=inside[:2]))))
    assert r.state == "halted" and "failed the candidate" in r.verdict
    assert r.cohort["failures"] == 2


def test_retag_supersedes_and_deciding_twice_changes_nothing_twice() -> None:
    r = _rollout(min_devices=1)
    t = T0 + timedelta(seconds=61)
    once = rollout.decide(r, View(t, BASE, tuple(_fleet(r, t, 0.9))))
    twice = rollout.decide(once, View(t, BASE, tuple(_fleet(once, t, 0.9))))
    assert once.step_index == twice.step_index == 1
    assert [h["event"] for h in twice.history] == ["started", "advanced"]
    other = "sha256:" + "d" * 64
    gone = rollout.decide(twice, View(t, other, ()))
    assert gone.state == "superseded" and other in gone.verdict
    assert rollout.decide(gone, View(t, BASE, ())) is gone  # terminal: nothing moves


def test_pause_resume_abort_and_document_round_trip() -> None:
    r = _rollout()
    paused = rollout.operator_action(r, "pause", T0)
    assert rollout.decide(paused, View(T0 + timedelta(hours=1), "sha256:" + "e" * 64, ())) is paused
    resumed = rollout.operator_action(paused, "resume", T0 + timedelta(seconds=30))
    assert resumed.state == "running" and resumed.step_started_at == T0 + timedelta(seconds=30)
    aborted = rollout.operator_action(resumed, "abort", T0)
    assert aborted.state == "aborted"
    with pytest.raises(InvalidInput, match="aborted"):
        rollout.operator_action(aborted, "resume", T0)
    back = rollout.decode(rollout.encode(aborted))
    assert back.to_dict() == aborted.to_dict()
    doc = aborted.to_dict()
    for key in ("id", "arch", "channel", "repository", "candidate", "baseline", "steps",
                "stepIndex", "percent", "stepInterval", "minDevices", "maxFailure", "gates",
                "cohort", "state", "verdict", "history", "startedAt", "updatedAt"):  # fmt: skip
        assert key in doc, key


def test_invalid_state_documents_are_refused() -> None:
    good = rollout.encode(_rollout())
    for bad in (b"[]", b"{}", good.replace(b'"stepIndex": 0', b'"stepIndex": 9'),
                good.replace(b'"state": "running"', b'"state": "winning"'),
                b"x" * (rollout.MAX_STATE_BYTES + 1)):  # fmt: skip
        with pytest.raises(InvalidInput):
            rollout.decode(bad)


# -- the device: select stage and memory -----------------------------------------------


def test_device_in_cohort_runs_candidate_and_after_a_rollback_stays_on_baseline(
    tmp_path: Path,
) -> None:
    s = _set(_rule(percent=100))
    verified = Verified(s, s.digest(), 7)
    memory = RolloutMemory.load(tmp_path / "rollout.json")
    selected = memory.select(verified, "dev1")
    assert "cand" in selected.entries["model-pod.yaml"].yaml
    memory.settle(PollResult(Outcome.ROLLED_BACK, Reason.UNHEALTHY, "not ready", s.digest(), 7))
    again = RolloutMemory.load(tmp_path / "rollout.json")  # survives a restart
    assert again.status()["failed"]["reason"] == "unhealthy"
    s2 = _set(_rule(percent=100), note="base")
    selected = again.select(Verified(s2, s2.digest(), 8), "dev1")
    assert "base" in selected.entries["model-pod.yaml"].yaml
    again.settle(PollResult(Outcome.APPLIED, "", "", s2.digest(), 8))
    assert again.status()["runs"] == "baseline" and again.status()["failed"]


# -- model metrics window --------------------------------------------------------------


def test_window_summary_from_real_model_server_metrics() -> None:
    from model_server.metrics import Metrics

    m = Metrics()
    target = model_metrics.Target("mobilenet", f"reg/m@{CAND}", 5000)
    start = model_metrics.scrape_of(generate_latest(m.registry).decode(), 940.0)
    assert start is not None
    assert model_metrics.summary(target, None, start) is None  # start-up is not reported
    for i in range(100):
        m.request_latency.labels("/predict/").observe(0.010 if i < 90 else 0.2)
        m.requests.labels("/predict/", "200" if i < 99 else "500").inc()
        m.top1_score.observe(0.8)
    m.requests.labels("/metrics", "200").inc(5)  # not traffic
    m.requests.labels("/predict/", "503").inc(7)  # refused while not ready: not judged
    first = model_metrics.scrape_of(generate_latest(m.registry).decode(), 1000.0)
    assert first is not None
    s = model_metrics.summary(target, start, first)
    assert s is not None
    assert (s["requests"], s["errors"], s["digest"]) == (100, 1, CAND)
    assert s["confidenceMean"] == pytest.approx(0.8) and s["accelerator"] == "cpu"
    assert 5.0 <= s["latencyP50Ms"] <= 10.0 and 150 <= s["latencyP95Ms"] <= 250
    for _ in range(10):
        m.request_latency.labels("/predict/").observe(0.001)
        m.requests.labels("/predict/", "200").inc()
        m.top1_score.observe(0.4)
    second = model_metrics.scrape_of(generate_latest(m.registry).decode(), 1060.0)
    assert second is not None
    w = model_metrics.summary(target, first, second)  # only the new window
    assert w is not None
    assert (w["requests"], w["errors"], w["window"]["seconds"]) == (10, 0, 60.0)
    assert w["confidenceMean"] == pytest.approx(0.4) and w["latencyP95Ms"] <= 1.0
    restarted = dataclasses.replace(second, started=second.started + 1)
    assert model_metrics.summary(target, first, restarted) is None  # a new process


def test_hostile_metrics_text_is_bounded_and_skipped() -> None:
    junk = "\n".join(['edgefleet_top1_score_sum{a="b"} NaN', "garbage line", "x" * 10000])
    assert model_metrics.scrape_of(junk, 1.0) is None  # no start time: not a model server
    many = "\n".join(f'edgefleet_http_requests_total{{endpoint="/predict/",i="{i}"}} 1'
                     for i in range(20000))  # fmt: skip
    assert len(model_metrics.parse(many)) == model_metrics.MAX_SERIES


def test_a_poll_that_selected_nothing_keeps_the_reported_rollout(tmp_path: Path) -> None:
    s = _set(_rule(percent=100))
    memory = RolloutMemory.load(tmp_path / "rollout.json")
    memory.select(Verified(s, s.digest(), 7), "dev1")
    memory.settle(PollResult(Outcome.APPLIED, "", "", s.digest(), 7))
    assert memory.status()["runs"] == "candidate"
    # An interrupted apply finished by recover() (no select this poll), then no-op polls.
    assert not memory.settle(PollResult(Outcome.APPLIED, "", "", s.digest(), 7))
    assert not memory.settle(PollResult(Outcome.UNCHANGED))
    assert memory.status()["runs"] == "candidate"


def test_relative_gates_are_not_judged_without_baseline_devices_in_the_same_window() -> None:
    r = _rollout(min_devices=1, steps=(100,), gates=[rollout.parse_gate("confidence >= 0.9x")])
    r = dataclasses.replace(r, baseline_metrics={"confidence": 0.9})  # seen at an earlier step
    t = T0 + timedelta(seconds=61)
    r = rollout.decide(r, View(t, BASE, tuple(_fleet(r, t, 0.5))))  # everyone is in the cohort
    assert r.state == "completed", r.verdict
    assert r.results[0]["ok"] is None and r.results[0]["baseline"] is None

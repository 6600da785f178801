"""rollout_controller on the real GCS emulator and the real registry (no devices): the set
follows the rollout, signed; concurrent ticks take a step once; a retag supersedes;
completion moves the tag; a failing gate halts and removes the cohort rule. Device
reports are written as status objects, as devices write them."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.cloud import rollout
from edgefleet.cloud.registry import RegistryClient
from edgefleet.cloud.render import PackagedTemplates, Templates
from edgefleet.cloud.rollout_controller import RolloutController, operate, write_new
from edgefleet.cloud.set_store import SetStore
from edgefleet.cloud.tag_events import Reconciler
from edgefleet.core import cohort, layout, manifest_set, policy, refs

pytestmark = [pytest.mark.stack]

T0 = datetime.now(UTC).replace(microsecond=0)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def world(bucket, registry):  # type: ignore[no-untyped-def]
    repo = f"ro/m{uuid.uuid4().hex[:8]}"
    base = registry.push_minimal_image(repo, "stable", salt="base")
    cand = registry.push_minimal_image(repo, None, salt="cand")
    client = RegistryClient(insecure=frozenset({registry.host}))
    key = Ed25519PrivateKey.generate()
    store = SetStore(bucket, signer=key)
    templates = Templates([PackagedTemplates()])
    pol = policy.Policy(allowed_registries=(registry.host,))
    reconciler = Reconciler(client, store, templates, pol, channels=("stable",), arches=("x86_64",))
    name = f"{registry.host}/{repo}"
    reconciler.reconcile(refs.parse(name), "stable")
    clock = Clock()
    controller = RolloutController(bucket, store, client, templates, pol, clock=clock)
    return {
        "bucket": bucket, "name": name, "base": base, "cand": cand, "key": key,
        "controller": controller, "clock": clock, "reconciler": reconciler,
        "registry": registry, "client": client, "repo": repo,
    }  # fmt: skip


def start(w, **kw) -> rollout.Rollout:  # type: ignore[no-untyped-def]
    args = dict(
        arch="x86_64", channel="stable", repository=w["name"],
        source=f"{w['name']}@{w['cand']}",
        candidate=rollout.Version(w["cand"], f"{w['name']}@{w['cand']}"),
        baseline=rollout.Version(w["base"], f"{w['name']}@{w['base']}"),
        now=w["clock"](), steps=(50, 100), step_interval=30, min_devices=1,
        gates=[rollout.parse_gate("confidence >= 0.9x")],
    )  # fmt: skip
    args.update(kw)
    r = rollout.new_rollout(**args)  # type: ignore[arg-type]
    write_new(w["bucket"], r)
    return r


def report(w, r: rollout.Rollout, confidence: float, devices: int = 8) -> None:  # type: ignore[no-untyped-def]
    """Every device reports a window ending now: the cohort on the candidate."""
    now = w["clock"]()
    for i in range(devices):
        d = f"dev{i}"
        inside = cohort.in_cohort(r.id, d, r.steps[0])
        digest, conf = (w["cand"], confidence) if inside else (w["base"], 0.9)
        doc = {
            "deviceId": d, "arch": "x86_64", "channel": "stable",
            "reportedAt": rollout.fmt_time(now),
            "models": [{
                "digest": digest, "requests": 40, "errors": 0, "errorRate": 0.0,
                "latencyP95Ms": 12.0, "confidenceMean": conf, "drift": 0.0,
                "window": {"start": rollout.fmt_time(now - timedelta(seconds=5)),
                           "end": rollout.fmt_time(now), "seconds": 5.0},
            }],
        }  # fmt: skip
        w["bucket"].write(f"status/{d}.json", json.dumps(doc).encode())


def stored_set(w) -> manifest_set.ManifestSet:  # type: ignore[no-untyped-def]
    blob = w["bucket"].read(layout.set_object("x86_64", "stable"))
    signed = manifest_set.decode(blob.data)
    return manifest_set.verify(
        signed, [w["key"].public_key()], arch="x86_64", channel="stable", now=w["clock"]()
    )


def state(w) -> rollout.Rollout:  # type: ignore[no-untyped-def]
    return rollout.decode(w["bucket"].read(layout.rollout_object("x86_64", "stable")).data)


def test_set_carries_signed_rule_and_concurrent_ticks_take_a_step_once(world) -> None:  # type: ignore[no-untyped-def]
    w = world
    r = start(w)
    w["controller"].tick()
    s = stored_set(w)
    assert s.rollout is not None and (s.rollout.id, s.rollout.percent) == (r.id, 50)
    assert w["cand"] in s.rollout.entries[0].yaml and w["base"] in s.entries[0].yaml

    w["clock"].now += timedelta(seconds=31)
    report(w, r, confidence=0.88)
    barrier = threading.Barrier(3)

    def tick() -> None:
        barrier.wait()
        w["controller"].tick()

    threads = [threading.Thread(target=tick) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = state(w)
    assert after.step_index == 1 and [h["event"] for h in after.history] == [
        "started",
        "advanced",
    ]
    gen_state = w["bucket"].generation(layout.rollout_object("x86_64", "stable"))
    gen_set = w["bucket"].generation(layout.set_object("x86_64", "stable"))
    assert stored_set(w).rollout.percent == 100
    w["controller"].tick()  # a redelivered tick: the same view, nothing to write
    assert w["bucket"].generation(layout.rollout_object("x86_64", "stable")) == gen_state
    assert w["bucket"].generation(layout.set_object("x86_64", "stable")) == gen_set


def test_retag_during_rollout_supersedes_it_and_the_tag_wins(world) -> None:  # type: ignore[no-untyped-def]
    w = world
    start(w)
    w["controller"].tick()
    other = w["registry"].push_minimal_image(w["repo"], "stable", salt="manual")
    w["reconciler"].reconcile(refs.parse(w["name"]), "stable")  # tag_monitor's event
    s = stored_set(w)
    assert s.rollout is None and other in s.entries[0].yaml
    w["controller"].tick()
    r = state(w)
    assert r.state == "superseded" and other in r.verdict
    assert stored_set(w).same_content(s)  # the controller wrote nothing over the tag


def test_completion_moves_the_tag_and_the_set_holds_the_candidate(world) -> None:  # type: ignore[no-untyped-def]
    w = world
    r = start(w, steps=(100,), step_interval=1)
    w["controller"].tick()
    assert stored_set(w).rollout.percent == 100  # the set carries the rule first
    w["clock"].now += timedelta(seconds=5)
    report(w, r, confidence=0.9)
    w["controller"].tick()
    assert state(w).state == "completed"
    assert w["client"].resolve(refs.parse(f"{w['name']}:stable")) == w["cand"]
    s = stored_set(w)
    assert s.rollout is None and w["cand"] in s.entries[0].yaml
    # tag_monitor's event for the moved tag renders the same set: nothing is written.
    assert not w["reconciler"].reconcile(refs.parse(w["name"]), "stable").written


def test_failing_gate_halts_and_abort_leaves_the_tag(world) -> None:  # type: ignore[no-untyped-def]
    w = world
    r = start(w)
    w["controller"].tick()
    w["clock"].now += timedelta(seconds=5)
    report(w, r, confidence=0.3)
    w["controller"].tick()
    halted = state(w)
    assert halted.state == "halted" and halted.verdict == "halted: confidence 0.3 < 0.9x 0.9"
    assert stored_set(w).rollout is None and w["base"] in stored_set(w).entries[0].yaml

    r2 = start(w)  # a halted rollout frees the channel
    w["controller"].tick()
    assert stored_set(w).rollout.id == r2.id
    operate(w["bucket"], "x86_64", "stable", "abort", w["clock"]())
    w["controller"].tick()
    assert state(w).state == "aborted" and stored_set(w).rollout is None
    assert w["client"].resolve(refs.parse(f"{w['name']}:stable")) == w["base"]


def test_cli_start_pause_resume_abort_and_status(world, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from edgefleet.operator import cli

    w = world
    monkeypatch.setenv("INSECURE_REGISTRIES", w["registry"].host)
    monkeypatch.setenv("CHANNELS", "stable")
    bucket = ["--bucket", w["bucket"].name]
    ref = f"{w['name']}@{w['cand']}"
    argv = ["rollout", "start", ref, "--channel", "stable", "--steps", "20,100",
            "--step-interval", "2m", "--gate", "confidence >= 0.95x", *bucket]  # fmt: skip
    assert cli.main(argv) == 0
    r = state(w)
    assert (r.steps, r.step_interval, r.min_devices, r.max_failure) == ((20, 100), 120, 2, 0.05)
    assert [str(g) for g in r.gates] == ["confidence >= 0.95x"]
    assert cli.main(argv) == 1  # one active rollout per channel
    assert "abort --channel stable" in capsys.readouterr().err
    for verb, want in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        assert cli.main(["rollout", verb, "--channel", "stable", *bucket]) == 0
        assert state(w).state == want
    capsys.readouterr()
    assert cli.main(["rollout", "status", "--channel", "stable", "--json", *bucket]) == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert doc["state"] == "aborted" and doc["history"][-1]["event"] == "aborted"
    assert cli.main(["rollout", "status", *bucket]) == 0
    assert f"rollout {r.id}  x86_64/stable  ABORTED" in capsys.readouterr().out
    assert cli.main(["rollout", "start", ref, "--channel", "stable", "--gate", "speed > 1"]) == 1
    assert "unknown metric 'speed'" in capsys.readouterr().err

"""Pure logic of `edgefleet status` / `rollout wait`: reports -> rows -> verdicts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.core.errors import InvalidInput
from edgefleet.operator import fleet

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def report(
    device: str,
    channel: str,
    digest: str,
    *,
    health: str = "healthy",
    age: float = 5,
    offline: bool = False,
) -> bytes:
    seen = (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(
        {
            "deviceId": device,
            "arch": "x86_64",
            "channel": channel,
            "health": health,
            "offline": offline,
            "reportedAt": seen,
            "applied": {"sequence": 7},
            "pods": [
                {"name": "edgefleet-sync", "containers": [{"image": "r:1/sync@" + D2}]},
                {
                    "name": "mobilenet",
                    "containers": [
                        {
                            "name": "server",
                            "image": f"127.0.0.1:5000/m@{digest}",
                            "imageDigest": digest,
                        }
                    ],
                },
            ],
            "lastError": {"reason": "set-rejected", "detail": "unsigned"},
        }
    ).encode()


def test_report_row_ignores_the_sync_pod_and_reads_digests():
    row = fleet.parse_report(report("dev-1", "beta", D1), "status/dev-1.json")
    assert row.digests == (D1,)
    assert row.set_sequence == 7
    assert row.last_error == "set-rejected: unsigned"
    assert row.healthy()


@pytest.mark.parametrize("data", [b"not json", b"[]", b"[" * 100_000 + b"]" * 100_000])
def test_malformed_reports_name_the_object(data):
    with pytest.raises(InvalidInput, match=r"status/x\.json"):
        fleet.parse_report(data, "status/x.json")


def test_problems_cover_stale_offline_and_unhealthy():
    fine = fleet.parse_report(report("a", "beta", D1), "status/a.json")
    stale = fleet.parse_report(report("b", "beta", D1, age=900), "status/b.json")
    down = fleet.parse_report(
        report("c", "beta", D1, health="degraded: m", offline=True), "status/c.json"
    )
    assert fleet.problems(fine, NOW, 300) == []
    assert fleet.problems(stale, NOW, 300) == ["stale: last seen 900s ago"]
    assert fleet.problems(down, NOW, 300) == ["offline", "health: degraded: m"]


def test_rollout_completes_only_when_every_channel_device_runs_the_digest_healthy():
    rows = [
        fleet.parse_report(report("a", "beta", D1), "status/a.json"),
        fleet.parse_report(report("b", "beta", D2), "status/b.json"),
        fleet.parse_report(report("c", "stable", D2), "status/c.json"),
    ]
    progress = fleet.rollout_progress(rows, "beta", D1)
    assert (progress.done, progress.pending, progress.complete) == (("a",), ("b",), False)
    rows[1] = fleet.parse_report(report("b", "beta", D1, health="starting"), "status/b.json")
    assert not fleet.rollout_progress(rows, "beta", D1).complete
    rows[1] = fleet.parse_report(report("b", "beta", D1), "status/b.json")
    assert fleet.rollout_progress(rows, "beta", D1).complete
    assert not fleet.rollout_progress(rows, "alpha", D1).complete  # no device: not complete


def test_table_lists_every_device_with_short_digests():
    rows = [
        fleet.parse_report(report(d, "beta", D1), f"status/{d}.json") for d in ("dev-2", "dev-1")
    ]
    text = fleet.table(rows, NOW, 300).splitlines()
    assert text[0].split()[:3] == ["DEVICE", "ARCH", "CHANNEL"]
    assert [line.split()[0] for line in text[1:]] == ["dev-1", "dev-2"]
    assert "111111111111" in text[1]


def test_an_idle_device_is_judged_by_its_own_heartbeat():
    def with_heartbeat(age: float) -> fleet.DeviceRow:
        doc = json.loads(report("idle", "beta", D1, age=age))
        doc.update(heartbeatSeconds=900, pollSeconds=60)
        return fleet.parse_report(json.dumps(doc).encode(), "status/idle.json")

    # Reports come on change or every 900 s: 20 minutes of silence is expected...
    assert fleet.problems(with_heartbeat(1200), NOW, 300) == []
    # ...two missed heartbeats are not.
    assert fleet.problems(with_heartbeat(2000), NOW, 300) == ["stale: last seen 2000s ago"]
    # Without the fields (older agents) the operator's --stale-after decides alone.
    old = fleet.parse_report(report("old", "beta", D1, age=1200), "status/old.json")
    assert fleet.problems(old, NOW, 300) == ["stale: last seen 1200s ago"]


# -- device reports are untrusted (issue 12) ---------------------------------------------


def test_the_object_name_wins_over_the_reports_device_id_and_a_mismatch_is_flagged():
    row = fleet.parse_report(report("victim", "beta", D1), "status/liar.json")
    assert row.device_id == "liar"
    assert row.flags == ("report names device victim",)
    assert "report: report names device victim" in fleet.problems(row, NOW, 300)


def test_a_report_cannot_hide_in_a_name_that_is_not_a_status_object():
    for name in ("status/../x.json", "status/a/b.json", "other/a.json", "status/a.txt"):
        with pytest.raises(InvalidInput):
            fleet.parse_report(report("a", "beta", D1), name)


def test_an_oversized_report_is_refused_before_parsing():
    big = json.dumps({"deviceId": "a", "pad": "x" * fleet.MAX_REPORT_BYTES}).encode()
    with pytest.raises(InvalidInput, match="over"):
        fleet.parse_report(big, "status/a.json")


def test_lists_and_text_in_a_report_are_bounded():
    doc = json.loads(report("a", "beta", D1))
    doc["health"] = "h" * 10_000
    doc["rejections"] = [{"reason": "r", "detail": "d", "at": "t"}] * 500
    doc["pods"] = doc["pods"] * 300
    row = fleet.parse_report(json.dumps(doc).encode(), "status/a.json")
    assert len(row.health) == fleet.MAX_TEXT + 1  # cut, with a "…"
    assert len(row.rejections) == fleet.MAX_REJECTIONS
    assert row.digests == (D1,)


def test_control_and_format_characters_never_reach_the_terminal():
    doc = json.loads(report("a", "beta", D1))
    doc["health"] = "ok\x1b[2J\x1b]0;pwned\x07\r\u202eevil"
    doc["lastError"] = {"reason": "x\x1b[31m", "detail": "y\x00"}
    row = fleet.parse_report(json.dumps(doc).encode(), "status/a.json")
    text = fleet.table([row], NOW, 300) + json.dumps(fleet.to_json(row, NOW, 300))
    assert not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in text)
    assert "\u202e" not in text
    assert "\\u001b[2J" in row.health


def test_a_device_cannot_look_fresher_than_its_last_write():
    updated = NOW - timedelta(seconds=3600)
    doc = json.loads(report("a", "beta", D1, age=0))
    doc["reportedAt"] = "2099-01-01T00:00:00Z"
    row = fleet.parse_report(json.dumps(doc).encode(), "status/a.json", updated=updated)
    assert row.last_seen == updated
    assert row.liveness(NOW, 300) == "offline"  # an hour silent: 5x past stale
    assert "reportedAt is later than the report was written" in row.flags


def test_invalid_arch_channel_and_digests_are_not_believed():
    doc = json.loads(report("a", "<b>beta</b>", D1))
    doc["arch"] = "pdp11"
    doc["pods"][1]["containers"][0]["imageDigest"] = "sha256:<script>"
    doc["pods"][1]["containers"][0]["image"] = "not a ref"
    row = fleet.parse_report(json.dumps(doc).encode(), "status/a.json")
    assert (row.arch, row.channel, row.digests, row.images) == ("?", "?", (), ())
    assert any(f.startswith("invalid arch") for f in row.flags)


def test_model_summaries_are_read_per_the_contract_and_bounded():
    doc = json.loads(report("a", "beta", D1))
    good = {
        "digest": D1, "image": f"127.0.0.1:5000/m@{D1}", "name": "model-server",
        "window": {"start": "2026-11-23T11:59:00Z", "end": "2026-11-23T12:00:00Z",
                   "seconds": 60.0},
        "requests": 120, "errors": 1, "errorRate": 0.0083, "latencyP50Ms": 12.5,
        "latencyP95Ms": 30.1, "confidenceMean": 0.87, "drift": 0.02, "accelerator": "cpu",
    }  # fmt: skip
    bad = dict(good, digest="nope", image="x", latencyP95Ms=float("nan"))
    doc["models"] = [good, bad, dict(good, requests=-5, errorRate=7, latencyP95Ms=1e300)]
    row = fleet.parse_report(json.dumps(doc).encode(), "status/a.json")
    assert len(row.models) == 2
    m, odd = row.models
    assert (m.requests, m.latency_p95_ms, m.confidence_mean, m.accelerator) == (
        120,
        30.1,
        0.87,
        "cpu",
    )
    assert m.window_seconds == 60.0
    assert (odd.requests, odd.error_rate, odd.latency_p95_ms) == (0, None, None)

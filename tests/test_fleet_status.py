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


@pytest.mark.parametrize(
    "data", [b"not json", b"[]", b'{"arch": "x86_64"}', b'{"deviceId": "../etc"}']
)
def test_malformed_reports_name_the_object(data):
    with pytest.raises(InvalidInput, match=r"status/x\.json"):
        fleet.parse_report(data, "status/x.json")


def test_problems_cover_stale_offline_and_unhealthy():
    fine = fleet.parse_report(report("a", "beta", D1), "a")
    stale = fleet.parse_report(report("b", "beta", D1, age=900), "b")
    down = fleet.parse_report(report("c", "beta", D1, health="degraded: m", offline=True), "c")
    assert fleet.problems(fine, NOW, 300) == []
    assert fleet.problems(stale, NOW, 300) == ["stale: last seen 900s ago"]
    assert fleet.problems(down, NOW, 300) == ["offline", "health: degraded: m"]


def test_rollout_completes_only_when_every_channel_device_runs_the_digest_healthy():
    rows = [
        fleet.parse_report(report("a", "beta", D1), "a"),
        fleet.parse_report(report("b", "beta", D2), "b"),
        fleet.parse_report(report("c", "stable", D2), "c"),
    ]
    progress = fleet.rollout_progress(rows, "beta", D1)
    assert (progress.done, progress.pending, progress.complete) == (("a",), ("b",), False)
    rows[1] = fleet.parse_report(report("b", "beta", D1, health="starting"), "b")
    assert not fleet.rollout_progress(rows, "beta", D1).complete
    rows[1] = fleet.parse_report(report("b", "beta", D1), "b")
    assert fleet.rollout_progress(rows, "beta", D1).complete
    assert not fleet.rollout_progress(rows, "alpha", D1).complete  # no device: not complete


def test_table_lists_every_device_with_short_digests():
    rows = [fleet.parse_report(report(d, "beta", D1), d) for d in ("dev-2", "dev-1")]
    text = fleet.table(rows, NOW, 300).splitlines()
    assert text[0].split()[:3] == ["DEVICE", "ARCH", "CHANNEL"]
    assert [line.split()[0] for line in text[1:]] == ["dev-1", "dev-2"]
    assert "111111111111" in text[1]


def test_an_idle_device_is_judged_by_its_own_heartbeat():
    def with_heartbeat(age: float) -> fleet.DeviceRow:
        doc = json.loads(report("idle", "beta", D1, age=age))
        doc.update(heartbeatSeconds=900, pollSeconds=60)
        return fleet.parse_report(json.dumps(doc).encode(), "idle")

    # Reports come on change or every 900 s: 20 minutes of silence is expected...
    assert fleet.problems(with_heartbeat(1200), NOW, 300) == []
    # ...two missed heartbeats are not.
    assert fleet.problems(with_heartbeat(2000), NOW, 300) == ["stale: last seen 2000s ago"]
    # Without the fields (older agents) the operator's --stale-after decides alone.
    assert fleet.problems(fleet.parse_report(report("old", "beta", D1, age=1200), "old"),
                          NOW, 300) == ["stale: last seen 1200s ago"]  # fmt: skip

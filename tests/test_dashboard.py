"""The dashboard's app and API over a real bucket on the GCS emulator (no browser): what
each view's JSON says, that device text is never trusted, and the security headers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

import pytest
import requests
from support import reports

from edgefleet.core import layout
from edgefleet.operator.dashboard import data, svg
from edgefleet.operator.dashboard.app import create_app
from edgefleet.operator.dashboard.service import FleetService
from edgefleet.operator.fleet_index import open_index

pytestmark = pytest.mark.stack
NOW = datetime.now(UTC)
V1, V2 = reports.digest(1), reports.digest(2)


def _put(bucket, doc: dict, name: str | None = None) -> None:  # type: ignore[no-untyped-def]
    bucket.write(name or layout.status_object(doc["deviceId"]), reports.encode(doc))


def halted_rollout(arch: str = "x86_64", channel: str = "stable") -> dict:
    """A rollout state per the contract (COORDINATION.md "Rollout state"), halted by its
    confidence gate."""
    return {
        "apiVersion": "edgefleet.dev/v1", "kind": "Rollout", "id": "ro-abc123def",
        "arch": arch, "channel": channel, "repository": f"{reports.REPOSITORY}",
        "candidate": {"digest": V2, "image": f"{reports.REPOSITORY}@{V2}"},
        "baseline": {"digest": V1, "image": f"{reports.REPOSITORY}@{V1}"},
        "steps": [10, 50, 100], "stepIndex": 0, "percent": 10, "stepInterval": 600,
        "minDevices": 2, "maxFailure": 0.05,
        "gates": [
            {"metric": "latency_p95", "op": "<=", "value": 1.2, "relative": True,
             "candidate": 31.0, "baseline": 29.5, "ok": True},
            {"metric": "confidence", "op": ">=", "value": 0.9, "relative": True,
             "candidate": 0.41, "baseline": 0.88, "ok": False},
        ],
        "cohort": {"devices": 3, "reported": 3, "failures": 0, "baselineDevices": 6},
        "state": "halted", "verdict": "halted: confidence 0.41 < 0.9x 0.88",
        "history": [
            {"at": "2026-11-29T10:00:00Z", "stepIndex": 0, "percent": 10, "event": "started",
             "detail": "10% of 9 devices"},
            {"at": "2026-11-29T10:05:00Z", "stepIndex": 0, "percent": 10, "event": "halted",
             "detail": "confidence 0.41 < 0.9x 0.88"},
        ],
        "startedAt": "2026-11-29T10:00:00Z", "updatedAt": "2026-11-29T10:05:00Z",
    }  # fmt: skip


@pytest.fixture
def service(bucket, tmp_path: Path) -> FleetService:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    labels = {V1: "mobilenet_1_100", V2: "mobilenet_2_200"}
    return FleetService(
        open_index(bucket.name, env=env),
        version_of=lambda image: labels.get(image.rsplit("@", 1)[1]),
    )


@pytest.fixture
def client(service):  # type: ignore[no-untyped-def]
    return create_app(service).test_client()


def test_fleet_api_filters_sorts_pages_and_counts(bucket, service, client):
    reports.seed(bucket, reports.fleet(60, now=NOW))
    service.refresh()
    body = client.get("/api/devices?per=10&page=2").get_json()
    assert (body["total"], body["matched"], body["pages"], len(body["devices"])) == (60, 60, 6, 10)
    assert body["devices"][0]["id"] == "dev-00010"
    assert body["counts"]["offline"] == 1  # dev-00000: 4000 s silent
    assert body["counts"]["stale"] == 1  # dev-00037: 900 s, over 2 x (300 + 30) s
    beta = client.get("/api/devices?channel=beta&arch=aarch64&per=500").get_json()
    assert {(d["channel"], d["arch"]) for d in beta["devices"]} == {("beta", "aarch64")}
    assert all(d["version"] == "mobilenet_2_200" for d in beta["devices"])
    stale = client.get("/api/devices?liveness=stale").get_json()["devices"]
    assert [d["id"] for d in stale] == ["dev-00037"]
    by_seen = client.get("/api/devices?sort=seen&dir=desc&per=1").get_json()["devices"]
    assert by_seen[0]["id"] == "dev-00000"
    found = client.get("/api/devices?q=degraded").get_json()["devices"]
    assert [d["id"] for d in found] == ["dev-00000", "dev-00053"]


def test_device_api_has_history_rejections_and_models(bucket, service, client):
    rejection = {"reason": "set-rejected", "detail": "signature by an unknown key",
                 "at": "2026-11-29T10:00:00Z", "digest": None, "generation": 4}  # fmt: skip
    _put(bucket, reports.status("d1", running=V1, rejections=[rejection]))
    service.refresh()
    [seen] = client.get("/api/devices/d1").get_json()["device"]["rejections"]
    assert (seen["reason"], seen["detail"]) == ("set-rejected", "signature by an unknown key")
    _put(bucket, reports.status("d1", running=V2, sequence=4))
    service.refresh()
    d = client.get("/api/devices/d1").get_json()["device"]
    assert d["version"] == "mobilenet_2_200"
    assert [h["digest"] for h in d["history"]] == [data.short(V2), data.short(V1)]
    assert d["rejections"] == []  # the newest report has none
    assert d["models"][0]["latencyP95Ms"] == 30.0
    assert client.get("/api/devices/nobody").status_code == 404
    assert client.get("/api/devices/..%2Fetc").status_code == 404


def test_channels_matrix_counts_agreement(bucket, service, client):
    for i in range(3):
        _put(bucket, reports.status(f"s{i}", channel="stable", running=V1))
    _put(bucket, reports.status("s3", channel="stable", running=V2))
    _put(bucket, reports.status("b0", channel="beta", arch="aarch64", running=V2))
    service.refresh()
    body = client.get("/api/channels").get_json()
    cells = {(c["channel"], c["arch"]): c for c in body["cells"]}
    stable = cells[("stable", "x86_64")]
    assert (stable["devices"], stable["agree"]) == (4, 3)
    assert stable["running"][0]["version"] == "mobilenet_1_100"
    assert cells[("beta", "aarch64")]["agree"] == 1
    assert body["channels"] == ["beta", "stable"]


def test_models_api_aggregates_per_version(bucket, service, client):
    _put(bucket, reports.status("a", running=V1, requests=60, latency_p95_ms=20.0))
    _put(bucket, reports.status("b", running=V1, requests=180, latency_p95_ms=40.0,
                                accelerator="edgetpu"))  # fmt: skip
    service.refresh()
    [m] = client.get("/api/models").get_json()["models"]
    assert m["version"] == "mobilenet_1_100"
    assert m["requestRate"] == pytest.approx((60 + 180) / 60.0)
    assert m["latencyP95Ms"] == pytest.approx((20 * 60 + 40 * 180) / 240)  # request-weighted
    assert m["errorRate"] == pytest.approx((0 + 1) / 240, abs=1e-5)
    assert m["accelerators"] == {"cpu": 1, "edgetpu": 1}
    chart = client.get("/charts/models/latencyP95Ms.svg")
    assert chart.mimetype == "image/svg+xml"
    ElementTree.fromstring(chart.data)  # well-formed
    assert b"mobilenet_1_100" in chart.data


def test_rollouts_api_reads_the_contract_and_names_unusable_states(bucket, service, client):
    bucket.write("rollouts/x86_64/stable.json", json.dumps(halted_rollout()).encode())
    bucket.write("rollouts/x86_64/beta.json", b"[1, 2")
    service.refresh()
    body = client.get("/api/rollouts").get_json()
    [r] = body["rollouts"]
    assert (r["state"], r["stepIndex"], r["percent"]) == ("halted", 0, 10.0)
    failing = [g for g in r["gates"] if g["ok"] is False]
    assert failing == [{"metric": "confidence", "op": ">=", "value": 0.9, "relative": True,
                        "candidate": 0.41, "baseline": 0.88, "ok": False}]  # fmt: skip
    assert r["history"][0]["event"] == "halted"
    assert "rollouts/x86_64/beta.json" in body["unreadable"][0]


def test_pages_are_shells_with_strict_headers_and_no_report_text(bucket, service, client):
    _put(bucket, reports.status("x", health="<script>alert(1)</script>"))
    service.refresh()
    for path in ("/", "/channels", "/rollouts", "/models", "/devices/x"):
        resp = client.get(path)
        assert resp.status_code == 200, path
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert b"alert(1)" not in resp.data
        assert b"<script>" not in resp.data.replace(b'<script src="/static/dashboard.js"', b"")
    assert client.post("/api/devices").status_code == 405
    assert client.get("/devices/%3Cb%3E").status_code == 404
    assert client.get("/static/dashboard.js").status_code == 200


def test_a_failed_refresh_keeps_the_last_state_and_says_so(bucket, service, client, gcs):
    _put(bucket, reports.status("kept"))
    service.refresh()
    # The bucket goes away: listing it fails from now on.
    bucket.delete(layout.status_object("kept"))
    requests.delete(f"{gcs.endpoint}/storage/v1/b/{bucket.name}", timeout=10).raise_for_status()
    service.refresh()
    body = client.get("/api/devices").get_json()
    assert [d["id"] for d in body["devices"]] == ["kept"]
    assert body["status"]["error"]


def test_svg_chart_escapes_labels():
    out = svg.line_chart("t<", "ms", [("<script>x</script>", [(0.0, 1.0), (1.0, 2.0)])])
    root = ElementTree.fromstring(out)
    assert "<script>" not in out
    assert any(e.text == "<script>x</script>" for e in root.iter() if e.text)


def test_the_dashboard_command_serves_the_bucket(bucket, tmp_path):
    _put(bucket, reports.status("cli-1"))
    edgefleet = str(Path(sys.executable).parent / "edgefleet")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [edgefleet, "dashboard", "--bucket", bucket.name, "--port", "0", "--refresh-seconds", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert f"gs://{bucket.name}" in line, line + proc.stderr.read()
        url = line.split(": ", 1)[1].split()[0]
        deadline = time.monotonic() + 30
        while True:
            body = requests.get(url + "api/devices", timeout=5).json()
            if body["status"]["ready"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [d["id"] for d in body["devices"]] == ["cli-1"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_demo_serves_the_stacks_dashboard_and_prints_its_address(bucket, gcs, tmp_path):
    from edgefleet.operator.dashboard import serve

    _put(bucket, reports.status("demo1"))
    said: list[str] = []
    env = {**gcs.env(), "DEPLOY_BUCKET": bucket.name, "XDG_CACHE_HOME": str(tmp_path)}
    running = serve.for_demo(env, port=0, say=said.append)
    try:
        assert running.url in said[0]
        deadline = time.monotonic() + 30
        while not requests.get(running.url + "api/status", timeout=5).json()["status"]["ready"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        body = requests.get(running.url + "api/devices", timeout=5).json()
        assert [d["id"] for d in body["devices"]] == ["demo1"]
        serve.hold(running, False, said.append)
        assert running.url in said[-1] and "--keep" in said[-1]
    finally:
        running.stop()


def test_a_loopback_dashboard_answers_only_to_loopback_names(service):
    from edgefleet.operator.dashboard.serve import LOOPBACK_NAMES

    client = create_app(service, allowed_hosts=LOOPBACK_NAMES).test_client()
    assert client.get("/api/status", headers={"Host": "127.0.0.1:8080"}).status_code == 200
    assert client.get("/api/status", headers={"Host": "[::1]:8080"}).status_code == 200
    # A page elsewhere that rebinds its own name to 127.0.0.1 is refused.
    assert client.get("/api/status", headers={"Host": "evil.example:8080"}).status_code == 421

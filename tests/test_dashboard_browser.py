"""The dashboard in a real headless Chromium (Debian's, driven by Playwright).

The fleet: a real GCS emulator bucket and a real registry holding two model images whose
version labels the dashboard reads; one real sync agent (``python -m sync_pod``,
kubelet runtime: files only, so its report carries no running digest) that applies a
signed set and reports; and seven devices whose reports are written in the agent's own
report shape (tests/support/reports.py), because starting seven podman devices is too
heavy for this shared machine. A promotion is a real `edgefleet promote` in the registry;
its device half (the agent applying the new set and reporting the new digest) is that
device's report rewritten with the promoted digest.

Screenshots of each view go to docs/dashboard/ when EDGEFLEET_SCREENSHOTS=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import reports
from support.sync import SetPublisher, entries, pod_yaml

from edgefleet.cloud import storage
from edgefleet.core import layout, signing
from edgefleet.localstack.registry import OCI_CONFIG, OCI_MANIFEST
from edgefleet.operator import cli
from edgefleet.operator.dashboard import serve

pytestmark = [pytest.mark.stack, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SHOTS = REPO / "docs" / "dashboard"
REPOSITORY = "edgefleet/mobilenet"
EVIL_ID = '<img src=x onerror="document.body.dataset.pwned=1">'
# gw-3 once rolled back a set (the agent's rejection record, as it reports it).
REFUSED = [
    {
        "reason": "unhealthy",
        "detail": "mobilenet: readiness probe failed (HTTP 503)",
        "at": "2026-11-29T09:12:03Z",
        "digest": "sha256:" + "4e" * 32,
        "generation": 12,
    }
]


def push_version(registry, version: str) -> str:  # type: ignore[no-untyped-def]
    """A small real image whose config carries the OCI version label; its digest."""
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Labels": {"org.opencontainers.image.version": version}},
    }).encode()  # fmt: skip
    config_digest = registry.upload_blob(REPOSITORY, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
    }).encode()  # fmt: skip
    assert registry.put_manifest(REPOSITORY, version, manifest) == (
        "sha256:" + hashlib.sha256(manifest).hexdigest()
    )
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


class Fleet:
    def __init__(self, bucket: storage.Bucket, registry, v1: str, v2: str) -> None:  # type: ignore[no-untyped-def]
        self.bucket, self.registry, self.v1, self.v2 = bucket, registry, v1, v2
        self.repo = f"{registry.host}/{REPOSITORY}"

    def report(self, device_id: str, digest: str, **kw: object) -> dict:
        doc = reports.status(device_id, running=digest, **kw)  # type: ignore[arg-type]
        for pod in doc["pods"][1:]:
            pod["containers"][0]["image"] = f"{self.repo}@{digest}"
        doc["models"][0]["image"] = f"{self.repo}@{digest}"
        return doc

    def put(self, doc: dict, name: str | None = None) -> None:
        self.bucket.write(name or layout.status_object(doc["deviceId"]), reports.encode(doc))


@pytest.fixture(scope="module")
def fleet(gcs, registry, tmp_path_factory) -> Iterator[Fleet]:  # type: ignore[no-untyped-def]
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run 'make install' (apt chromium)", pytrace=False)
    work = tmp_path_factory.mktemp("dashboard")
    env = {**os.environ, **gcs.env(), "XDG_CACHE_HOME": str(work / "cache")}
    os.environ.update(gcs.env())
    name = f"dash-{os.urandom(5).hex()}"
    gcs.create_bucket(name)
    bucket = storage.Bucket(storage.make_client(), name)
    f = Fleet(bucket, registry, push_version(registry, "mobilenet_1_1700000000"),
              push_version(registry, "mobilenet_2_1700003600"))  # fmt: skip
    for i, (channel, arch, digest) in enumerate([
        ("stable", "x86_64", f.v1), ("stable", "x86_64", f.v1), ("stable", "aarch64", f.v1),
        ("beta", "x86_64", f.v2), ("beta", "aarch64", f.v2), ("latest", "x86_64", f.v2),
    ]):  # fmt: skip
        newer = digest == f.v2  # v2: slower and less confident, as a canary might be
        f.put(f.report(f"gw-{i + 1}", digest, channel=channel, arch=arch,
                       accelerator="edgetpu" if arch == "aarch64" else "cpu",
                       requests=90 + 30 * i, latency_p95_ms=36.0 + i if newer else 29.0 + i,
                       confidence=0.81 if newer else 0.88,
                       rejections=REFUSED if i == 2 else ()))  # fmt: skip
    # Silent for 20 minutes with a 5 minute heartbeat: stale (two intervals are 11 min).
    f.put(f.report("gw-stale", f.v1, channel="stable", age=1200))
    # A report under a sane name whose content claims a hostile id and health text.
    f.put(f.report(EVIL_ID, f.v1, health="<b>bold</b>"), "status/gw-evil.json")

    # One real agent: applies a signed set and reports (kubelet runtime: files only).
    key_path = work / "signing.pem"
    key = signing.generate(key_path)
    pub = SetPublisher(bucket, "x86_64", "stable", signers=[key])
    pub.publish(entries({"mobilenet": pod_yaml("mobilenet", f"{f.repo}@{f.v1}")}))
    agent_env = {
        **env, "BUCKET": name, "ARCH": "x86_64", "CHANNEL": "stable", "DEVICE_ID": "agent-1",
        "MANIFEST_DIR": str(work / "pods"), "STATE_DIR": str(work / "state"),
        "RUNTIME": "kubelet", "KUBELET_API": "off", "POLL_SECONDS": "1", "STATUS_SECONDS": "30",
        "ALLOWED_REGISTRIES": registry.host, "TRUSTED_KEYS": f"{key_path}.pub",
    }  # fmt: skip
    agent = subprocess.Popen(
        [sys.executable, "-m", "sync_pod"], env=agent_env, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=(work / "agent.log").open("wb"),
    )  # fmt: skip
    run = None
    try:
        deadline = time.monotonic() + 60
        while bucket.read(layout.status_object("agent-1")) is None:
            assert agent.poll() is None, (work / "agent.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the agent never reported"
            time.sleep(0.5)
        dash_env = {**env, "EDGEFLEET_REGISTRY": registry.host,
                    "INSECURE_REGISTRIES": registry.host}  # fmt: skip
        run = serve.start(serve.service_for(name, env=dash_env), refresh_seconds=1.0)
        f.url = run.url  # type: ignore[attr-defined]
        yield f
    finally:
        if run is not None:
            run.stop()
        agent.terminate()
        agent.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    # bypass_csp: Playwright's wait_for_function evaluates strings, which the page's CSP
    # forbids; the HTML-as-text test then proves escaping itself, not just the CSP.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    context.close()
    assert not errors, errors


def loaded(page, url: str, at_least: int = 1) -> None:  # type: ignore[no-untyped-def]
    """Open ``url`` and wait until the page rendered ``at_least`` API answers."""
    page.goto(url)
    page.wait_for_function(f"Number(document.querySelector('main').dataset.loaded) >= {at_least}")


def cells(page, device: str) -> list[str]:  # type: ignore[no-untyped-def]
    row = page.locator(f'tr[data-device="{device}"]')
    return [c.strip() for c in row.locator("th, td").all_inner_texts()]


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    if os.environ.get("EDGEFLEET_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_fleet_table_shows_every_device_with_its_version(fleet, page):
    loaded(page, fleet.url)
    page.wait_for_selector('tr[data-device="agent-1"]')
    ids = page.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.device)")
    assert sorted(ids) == sorted(
        ["agent-1", "gw-evil", "gw-stale"] + [f"gw-{i}" for i in range(1, 7)]
    )
    assert cells(page, "gw-1")[:4] == ["gw-1", "x86_64", "stable", "mobilenet_1_1700000000"]
    assert cells(page, "gw-4")[3] == "mobilenet_2_1700003600"
    assert data_short(fleet.v2) in cells(page, "gw-4")[4]
    assert cells(page, "agent-1")[2] == "stable"  # the real agent's own report
    shot(page, "fleet")


def data_short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def test_a_stale_device_is_marked(fleet, page):
    loaded(page, fleet.url)
    row = page.locator('tr[data-device="gw-stale"]')
    assert row.get_attribute("class") == "stale"
    assert "stale" in row.locator("td.seen").inner_text()
    assert page.locator('tr[data-device="gw-1"]').get_attribute("class") == "fresh"


def test_a_promotion_changes_the_row_without_reload(fleet, page, monkeypatch):
    loaded(page, fleet.url)
    page.evaluate("window.__sameDocument = true")
    assert cells(page, "gw-2")[3] == "mobilenet_1_1700000000"
    # The operator promotes v2 to stable in the real registry...
    monkeypatch.setenv("INSECURE_REGISTRIES", fleet.registry.host)
    assert cli.main(["promote", f"{fleet.repo}@{fleet.v2}", "--channel", "stable"]) == 0
    # ...and the device, having applied the new set, reports v2 (the agent's half, seeded).
    fleet.put(fleet.report("gw-2", fleet.v2, channel="stable", sequence=4))
    page.wait_for_function(
        "document.querySelector('tr[data-device=\"gw-2\"] td.version').textContent"
        " === 'mobilenet_2_1700003600'",
        timeout=15_000,
    )
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    fleet.put(fleet.report("gw-2", fleet.v1, channel="stable", sequence=5))  # roll back


def test_a_device_id_with_html_is_shown_as_text(fleet, page):
    loaded(page, fleet.url)
    row = page.locator('tr[data-device="gw-evil"]')
    text = row.inner_text()
    assert f"report names device {EVIL_ID}" in text
    assert "<b>bold</b>" in text
    assert row.locator("img, b").count() == 0
    assert page.evaluate("document.body.dataset.pwned") is None
    loaded(page, fleet.url + "devices/gw-evil")
    assert EVIL_ID in page.locator("#facts").inner_text()
    assert page.locator("#facts img").count() == 0


def test_filter_sort_and_keyboard(fleet, page):
    loaded(page, fleet.url)
    page.get_by_label("Channel").select_option("beta")
    page.wait_for_function("document.querySelectorAll('tbody tr').length === 2")
    page.get_by_label("Channel").select_option("")
    page.get_by_label("Search").fill("gw-stale")
    page.wait_for_function("document.querySelectorAll('tbody tr').length === 1")
    page.get_by_label("Search").fill("")
    # Keyboard only: focus the "Last seen" sort button and press Enter twice (descending).
    button = page.locator('th[data-sort="seen"] button')
    button.focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "document.querySelector('th[data-sort=\"seen\"]').ariaSort === 'ascending'"
    )
    page.keyboard.press("Enter")
    page.wait_for_function(
        "document.querySelector('th[data-sort=\"seen\"]').ariaSort === 'descending'"
    )
    page.wait_for_function("document.querySelector('tbody tr').dataset.device === 'gw-stale'")


def test_device_page_channels_and_models_views(fleet, page):
    loaded(page, fleet.url + "devices/gw-3")
    assert "mobilenet_1_1700000000" in page.locator("#facts").inner_text()
    rejection = page.locator("#rejections tbody").inner_text()
    assert "unhealthy" in rejection and "readiness probe failed (HTTP 503)" in rejection
    assert page.locator("#history tbody tr").count() >= 1
    shot(page, "device")
    loaded(page, fleet.url + "channels")
    cell = page.locator('td[data-cell="stable/x86_64"]').inner_text()
    assert "of" in cell and "mobilenet_1_1700000000" in cell
    shot(page, "channels")
    loaded(page, fleet.url + "models", at_least=3)  # a few samples for the charts
    versions = page.locator("#versions tbody").inner_text()
    assert "mobilenet_1_1700000000" in versions and "mobilenet_2_1700003600" in versions
    assert page.locator("img[data-chart]").count() == 6
    shot(page, "models")


def test_rollout_view_shows_a_halted_canary_with_its_failing_gate(fleet, page):
    from test_dashboard import halted_rollout

    state = halted_rollout()
    state["candidate"] = {"digest": fleet.v2, "image": f"{fleet.repo}@{fleet.v2}"}
    state["baseline"] = {"digest": fleet.v1, "image": f"{fleet.repo}@{fleet.v1}"}
    fleet.bucket.write("rollouts/x86_64/stable.json", json.dumps(state).encode())
    loaded(page, fleet.url + "rollouts")
    section = page.locator('section[data-rollout="x86_64/stable"]')
    section.wait_for(timeout=15_000)
    assert "halted" in section.locator("h2").inner_text()
    assert "confidence 0.41 < 0.9x 0.88" in section.locator(".verdict").inner_text()
    failing = section.locator("table.gates tr.failing")
    assert failing.count() == 1
    assert failing.locator("th").inner_text() == "confidence"
    assert "fail" in failing.inner_text() and "0.41" in failing.inner_text()
    shot(page, "rollouts")


def test_a_phone_sized_screen_keeps_the_table_usable(fleet, browser):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, bypass_csp=True
    )
    p = context.new_page()
    try:
        loaded(p, fleet.url)
        # The page itself does not scroll sideways: only the table's own box does.
        assert p.evaluate("document.documentElement.scrollWidth") <= 390
        assert p.get_by_label("Search").is_visible()
        shot(p, "fleet-phone")
    finally:
        context.close()

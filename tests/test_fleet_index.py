"""The incremental fleet index and `edgefleet status` over it, on the real GCS emulator:
only changed reports are fetched, the disk cache carries across runs, reports are
untrusted (object name wins, no control characters printed, no registry named by a report
is contacted)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import reports

from edgefleet.core import layout
from edgefleet.operator import cli, fleet_index

pytestmark = pytest.mark.stack


@pytest.fixture
def index(bucket, tmp_path: Path) -> fleet_index.FleetIndex:
    return fleet_index.open_index(bucket.name, env={**_env(), "XDG_CACHE_HOME": str(tmp_path)})


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _put(bucket, doc: dict, name: str | None = None) -> None:  # type: ignore[no-untyped-def]
    bucket.write(name or layout.status_object(doc["deviceId"]), reports.encode(doc))


def test_a_refresh_fetches_only_what_changed_and_forgets_what_is_gone(bucket, index):
    docs = reports.fleet(30)
    reports.seed(bucket, docs)
    first = index.refresh()
    assert (first.listed, first.fetched, first.removed) == (30, 30, 0)
    assert len(index.rows()) == 30

    before = index.requests.count
    assert index.refresh().fetched == 0
    assert index.requests.count - before == 1  # one listing page, nothing fetched

    _put(bucket, reports.status("dev-00003", running=reports.digest(9)))
    bucket.delete(layout.status_object("dev-00004"))
    before = index.requests.count
    again = index.refresh()
    assert (again.fetched, again.removed) == (1, 1)
    assert index.requests.count - before == 2
    assert index.row("dev-00003").digests == (reports.digest(9),)
    assert index.row("dev-00004") is None
    assert [s.digests for s in index.history["dev-00003"]][-1] == (reports.digest(9),)


def test_a_broken_report_is_fetched_once_and_named(bucket, index):
    bucket.write("status/broken.json", b"{not json")
    _put(bucket, reports.status("ok"))
    assert index.refresh().fetched == 2
    assert index.refresh().fetched == 0
    assert list(index.errors()) == ["status/broken.json"]
    assert [r.device_id for r in index.rows()] == ["ok"]


def test_the_disk_cache_spares_the_next_run_every_unchanged_fetch(bucket, tmp_path):
    reports.seed(bucket, reports.fleet(20))
    env = {**_env(), "XDG_CACHE_HOME": str(tmp_path)}
    assert fleet_index.open_index(bucket.name, env=env).refresh().fetched == 20
    _put(bucket, reports.status("dev-00001", running=reports.digest(7)))
    later = fleet_index.open_index(bucket.name, env=env)
    stats = later.refresh()
    assert (stats.listed, stats.fetched) == (20, 1)
    assert later.row("dev-00001").digests == (reports.digest(7),)
    assert later.requests.count == 2
    # Without the cache every report is fetched again.
    assert fleet_index.open_index(bucket.name, env=env, cache=False).refresh().fetched == 20


def test_a_corrupt_cache_is_ignored(bucket, tmp_path):
    reports.seed(bucket, reports.fleet(3))
    env = {**_env(), "XDG_CACHE_HOME": str(tmp_path)}
    fleet_index.open_index(bucket.name, env=env).refresh()
    for f in (tmp_path / "edgefleet" / "index").iterdir():
        f.write_bytes(b"garbage" * 100)
    assert fleet_index.open_index(bucket.name, env=env).refresh().fetched == 3


def test_status_prints_no_control_characters_and_trusts_the_object_name(
    bucket, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    evil = reports.status("victim", health="ok\x1b[2J\x1b]0;owned\x07\u202e")
    _put(bucket, evil, "status/liar.json")
    bucket.write("status/bad\x1b[31m.json", b"{}")
    assert cli.main(["status", "--bucket", bucket.name]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert not [c for c in text if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F]
    assert "\u202e" not in text
    line = next(li for li in out.out.splitlines() if li.startswith("liar "))
    assert "report names device victim" in line
    assert "\\u001b[2J" in line
    assert "skipping" in out.err and "\\u001b[31m" in out.err


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry_listener() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on loopback recording every request (as a registry would)."""
    seen: list[str] = []
    handler = type("H", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("configured", [False, True])
def test_status_asks_only_the_configured_registry_for_versions(
    bucket, tmp_path, monkeypatch, capsys, registry_listener, configured
):
    host, seen = registry_listener
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("INSECURE_REGISTRIES", host)
    monkeypatch.setenv("EDGEFLEET_REGISTRY", host if configured else "127.0.0.1:1")
    doc = reports.status("d1")
    doc["pods"][1]["containers"][0]["image"] = f"{host}/evil/m@{reports.digest(1)}"
    _put(bucket, doc)
    assert cli.main(["status", "--bucket", bucket.name, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["device_id"] == "d1"
    # The report's registry is contacted only when the operator configured it.
    assert bool(seen) is configured


def test_an_oversized_report_is_not_downloaded_whole_and_is_named(bucket, index):
    bucket.write("status/huge.json", b"{" + b" " * (300 * 1024) + b"}")
    _put(bucket, reports.status("ok"))
    assert index.refresh().fetched == 2
    assert "over" in index.errors()["status/huge.json"]
    assert index.refresh().fetched == 0  # remembered until it changes
    assert [r.device_id for r in index.rows()] == ["ok"]

"""Issue 12, Google tokens leak to any registry: a forged ``gcr`` event naming another
registry made tag_monitor resolve it BEFORE the allow-list check, answering that
registry's token challenge with the function's credentials. Now the repository is checked
first (no connection at all), and credentials only go to a Google registry's own token
endpoint for allowed registries. tag_monitor runs in-process on the real GCS emulator; the
"attacker registry" is a loopback listener that records every connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from support.security import pubsub_event

from edgefleet.cloud.control import TagMonitor, TagMonitorConfig
from edgefleet.cloud.registry import google_credentials_allowed


class Listener:
    """Accepts and records connections (an attacker's registry and token endpoint)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def attacker() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


def test_forged_event_naming_another_registry_makes_no_connection(bucket, attacker, caplog) -> None:
    config = TagMonitorConfig.from_env(
        {
            "DEPLOY_BUCKET": bucket.name,
            "ALLOWED_REGISTRIES": "127.0.0.1:5999/edgefleet",
            "INSECURE_REGISTRIES": f"127.0.0.1:{attacker.port}",
        }
    )
    monitor = TagMonitor.from_config(config, bucket)
    forged = {"action": "INSERT", "tag": f"127.0.0.1:{attacker.port}/x/y:stable"}
    assert monitor.handle_cloud_event(pubsub_event(forged)) is None
    assert attacker.connections == 0
    rejected = [
        r for r in caplog.records if getattr(r, "fields", {}).get("event") == "tag-event-rejected"
    ]
    assert rejected and "not under ALLOWED_REGISTRIES" in rejected[0].fields["error"]
    assert list(bucket.list_objects("sets/")) == []


def test_empty_allowed_registries_admits_no_event(bucket, attacker) -> None:
    config = TagMonitorConfig.from_env(
        {"DEPLOY_BUCKET": bucket.name, "INSECURE_REGISTRIES": f"127.0.0.1:{attacker.port}"}
    )
    monitor = TagMonitor.from_config(config, bucket)
    event = {"action": "INSERT", "tag": f"127.0.0.1:{attacker.port}/edgefleet/m:beta"}
    assert monitor.handle_cloud_event(pubsub_event(event)) is None
    assert attacker.connections == 0


@pytest.mark.parametrize(
    ("registry", "realm_host", "allowed", "expected"),
    [
        ("europe-docker.pkg.dev", "europe-docker.pkg.dev", {"europe-docker.pkg.dev"}, True),
        ("gcr.io", "gcr.io", {"gcr.io"}, True),
        # the realm elsewhere: a registry that sends token requests to a host of its own
        ("europe-docker.pkg.dev", "attacker.example", {"europe-docker.pkg.dev"}, False),
        # not a Google registry, even if allowed and its realm is its own host
        ("registry.example", "registry.example", {"registry.example"}, False),
        # a Google registry that is not allowed
        ("us-docker.pkg.dev", "us-docker.pkg.dev", {"europe-docker.pkg.dev"}, False),
        ("evil-docker.pkg.dev.attacker.example", "evil-docker.pkg.dev.attacker.example",
         {"evil-docker.pkg.dev.attacker.example"}, False),
    ],
)  # fmt: skip
def test_google_credentials_go_only_to_google_token_endpoints_of_allowed_registries(
    registry: str, realm_host: str, allowed: set[str], expected: bool
) -> None:
    assert google_credentials_allowed(registry, realm_host, allowed) is expected

"""Shared fixtures: the real local stack (emulators, registry, functions) for tests.

Session-scoped components start once per test run; function-scoped fixtures give each
test a fresh bucket/topic namespace on them. A missing tool FAILS the test with a message
naming ``make install``; nothing is skipped silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.localstack.process import MissingTool, StackError

REPO = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = REPO / "deploy" / "podman" / "containers.conf"


def pytest_configure(config: pytest.Config) -> None:
    # Podman must use runc and lowered ulimits everywhere in the test run.
    os.environ.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))


def _start(component):  # type: ignore[no-untyped-def]
    try:
        return component().start()
    except MissingTool as exc:
        pytest.fail(f"{exc} (the local stack needs it: run 'make install')", pytrace=False)
    except StackError as exc:
        pytest.fail(str(exc), pytrace=False)


def unique(prefix: str) -> str:
    """A short, unique, GCS/Pub/Sub-safe name."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """fake-gcs-server for the whole session (GcsEmulator)."""
    from edgefleet.localstack.gcs import GcsEmulator

    emulator = _start(lambda: GcsEmulator(tmp_path_factory.mktemp("gcs")))
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def pubsub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The Pub/Sub emulator for the whole session (PubsubEmulator)."""
    from edgefleet.localstack.pubsub import PubsubEmulator

    emulator = _start(lambda: PubsubEmulator(tmp_path_factory.mktemp("pubsub")))
    yield emulator
    emulator.stop()


@pytest.fixture
def bucket(gcs, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A fresh bucket on the emulator as edgefleet.storage.Bucket; STORAGE_EMULATOR_HOST
    is set in os.environ for the test."""
    from edgefleet import storage

    for key, value in gcs.env().items():
        monkeypatch.setenv(key, value)
    name = unique("test")
    gcs.create_bucket(name)
    return storage.Bucket(storage.make_client(), name)

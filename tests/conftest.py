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
    """A fresh bucket on the emulator as edgefleet.cloud.storage.Bucket; STORAGE_EMULATOR_HOST
    is set in os.environ for the test."""
    from edgefleet.cloud import storage

    for key, value in gcs.env().items():
        monkeypatch.setenv(key, value)
    name = unique("test")
    gcs.create_bucket(name)
    return storage.Bucket(storage.make_client(), name)


@pytest.fixture(scope="session")
def registry(pubsub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """docker-registry whose notifications reach topic ``gcr`` on the session ``pubsub``
    through the registry bridge (Registry; the bridge is ``registry.bridge``)."""
    from edgefleet.localstack.process import free_port
    from edgefleet.localstack.registry import Registry
    from edgefleet.localstack.registry_bridge import RegistryBridge

    workdir = tmp_path_factory.mktemp("registry")
    pubsub.create_topic("gcr")
    port = free_port()
    reg = Registry(workdir, notify_url=f"http://127.0.0.1:{port}/events")
    bridge = RegistryBridge(
        str(workdir),
        registry_host=reg.host,
        pubsub_host=pubsub.host,
        project=pubsub.project,
        port=port,
    )
    _start(lambda: bridge)
    try:
        _start(lambda: reg)
        reg.bridge = bridge  # type: ignore[attr-defined]
        yield reg
    finally:
        reg.stop()
        bridge.stop()


def _stack(tmp_path_factory: pytest.TempPathFactory, name: str, **config):  # type: ignore[no-untyped-def]
    from edgefleet.localstack.stack import LocalStack, StackConfig

    return _start(lambda: LocalStack(StackConfig(workdir=tmp_path_factory.mktemp(name), **config)))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A LocalStack WITHOUT functions: Pub/Sub, GCS (buckets edgefleet-deploy and
    edgefleet-models), registry + bridge to ``gcr``. Use ``stack.env()`` for clients."""
    s = _stack(tmp_path_factory, "stack", functions=())
    yield s
    s.stop()


@pytest.fixture(scope="session")
def stack_functions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A LocalStack with the real functions (functions/main.py): tag_monitor on ``gcr``,
    model_done_watcher on the model bucket's finalize events. ``template_key``: the
    operator key whose signatures make bucket templates usable (``TEMPLATE_KEYS``)."""
    from edgefleet.core import signing

    # The operator key tag_monitor trusts for bucket templates (templates are code).
    key = tmp_path_factory.mktemp("template-key") / "template.pem"
    signing.generate(key)
    s = _stack(tmp_path_factory, "stack-functions", function_env={"TEMPLATE_KEYS": f"{key}.pub"})
    s.template_key = key  # type: ignore[attr-defined]
    yield s
    s.stop()

"""LocalStack: the whole control plane on one machine, started and stopped as a unit.

Start order: Pub/Sub emulator (topics ``gcr``, ``gcs-model-events``) -> mosquitto (the
MQTT wake-up broker; ``MQTT_URL`` in every client's env) -> fake-gcs-server
(finalize events of the model bucket published to ``gcs-model-events``) -> buckets ->
registry bridge -> registry -> functions (push subscriptions) -> optional podman service.

Everything started is recorded in ``WORKDIR/stack.json`` as it starts (pid, process group,
kernel start time), so ``edgefleet down`` -- a different process -- stops exactly those
groups and nothing else, even after a partial start. ``down`` is idempotent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edgefleet.localstack import process as proc
from edgefleet.localstack.functions import DEFAULT_SOURCE, FunctionProcess
from edgefleet.localstack.gcs import GcsEmulator, PubsubEvents
from edgefleet.localstack.mosquitto import Mosquitto
from edgefleet.localstack.mosquitto import remove_files as mosquitto_files
from edgefleet.localstack.podman import PodmanEnv, PodmanService, forget_registry_images
from edgefleet.localstack.process import StackError
from edgefleet.localstack.pubsub import PubsubEmulator
from edgefleet.localstack.registry import Registry
from edgefleet.localstack.registry import host_for as registry_host_for
from edgefleet.localstack.registry_bridge import RegistryBridge

STATE_FILE = "stack.json"
GCR_TOPIC = "gcr"
MODEL_EVENTS_TOPIC = "gcs-model-events"
DEFAULT_CHANNELS = "latest,alpha,beta,stable"
FUNCTIONS = ("tag_monitor", "model_done_watcher", "rollout_controller")
T = TypeVar("T")


@dataclass
class StackConfig:
    """What to start. ``functions``: which of :data:`FUNCTIONS` to run (empty = none)."""

    workdir: Path
    deploy_bucket: str = "edgefleet-deploy"
    model_bucket: str = "edgefleet-models"
    channels: str = DEFAULT_CHANNELS
    functions: Sequence[str] = FUNCTIONS
    function_source: Path = DEFAULT_SOURCE
    function_env: Mapping[str, str] = field(default_factory=dict)
    podman_service: bool = False
    mqtt: bool = True  # run mosquitto: sets written wake devices at once
    # rollout_controller's tick (Cloud Scheduler's job in GCP): seconds between ticks.
    rollout_tick_seconds: float = 2.0


def read_state(workdir: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(workdir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StackError(f"{path} is unreadable ({exc}); remove it after checking 'ps'") from exc


def running_processes(state: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Recorded processes that are still the ones that were started."""
    alive = []
    for record in (state or {}).get("processes", []):
        started = proc.process_start_time(int(record["pid"]))
        same = started is not None and started == record.get("start_time")
        if same and proc.pid_alive(int(record["pid"])):
            alive.append(record)
    return alive


@contextlib.contextmanager
def _locked(workdir: Path) -> Iterator[None]:
    """Serialises ``up``/``down`` on one workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "stack.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class LocalStack:
    """Compose and run the stack; use as a context manager in tests.

    ``pubsub`` may be an already running emulator (a test session's); it is then used but
    neither recorded nor stopped.
    """

    def __init__(self, config: StackConfig, *, pubsub: PubsubEmulator | None = None) -> None:
        unknown = set(config.functions) - set(FUNCTIONS)
        if unknown:
            raise StackError(f"unknown function(s) {sorted(unknown)}: choose from {FUNCTIONS}")
        self.config = config
        self.workdir = Path(config.workdir).resolve()
        self._adopted_pubsub = pubsub
        self.pubsub: PubsubEmulator | None = pubsub
        self.gcs: GcsEmulator | None = None
        self.registry: Registry | None = None
        self.bridge: RegistryBridge | None = None
        self.podman: PodmanEnv | None = None
        self.podman_service: PodmanService | None = None
        self.mosquitto: Mosquitto | None = None
        self.functions: dict[str, FunctionProcess] = {}
        self._owned: list[Any] = []  # components we started, in start order
        self.devices: list[dict[str, Any]] = []

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> LocalStack:
        with _locked(self.workdir):
            running = running_processes(read_state(self.workdir))
            if running:
                names = ", ".join(f"{r['name']} (pid {r['pid']})" for r in running)
                raise StackError(
                    f"a local stack is already running in {self.workdir}: {names}; "
                    f"run 'edgefleet down --workdir {self.workdir}' first"
                )
            try:
                self._start_all()
            except BaseException as exc:
                failures = self._stop_owned()
                for failure in failures:  # the start error stays the one raised
                    exc.add_note(f"while stopping after the failed start: {failure}")
                if not failures:
                    (self.workdir / STATE_FILE).unlink(missing_ok=True)
                raise
        return self

    def _own(self, component: Any) -> Any:
        """Start ``component``, recording it before waiting for it to be ready."""
        self._owned.append(component)
        component.start()
        self._save()
        return component

    def _start_all(self) -> None:
        cfg = self.config
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.pubsub is None:
            self.pubsub = PubsubEmulator(self.workdir)
            self._own(self.pubsub)
        pubsub = self.pubsub
        for topic in (GCR_TOPIC, MODEL_EVENTS_TOPIC):
            pubsub.create_topic(topic)
        if cfg.mqtt:
            self.mosquitto = self._own(Mosquitto(self.workdir))
        events = PubsubEvents(
            project=pubsub.project,
            topic=MODEL_EVENTS_TOPIC,
            pubsub_host=pubsub.host,
            bucket=cfg.model_bucket,
        )
        self.gcs = self._own(GcsEmulator(self.workdir, events=events))
        for bucket in (cfg.deploy_bucket, cfg.model_bucket):
            self.gcs.create_bucket(bucket)

        bridge_port = proc.free_port()
        registry = Registry(self.workdir, notify_url=f"http://127.0.0.1:{bridge_port}/events")
        self.bridge = self._own(
            RegistryBridge(
                str(self.workdir),
                registry_host=registry.host,
                pubsub_host=pubsub.host,
                project=pubsub.project,
                topic=GCR_TOPIC,
                port=bridge_port,
            )
        )
        self.registry = self._own(registry)
        self.podman = PodmanEnv(self.workdir, [registry.host])

        fn_env = self.function_env()
        for name in cfg.functions:
            fn = self._own(
                FunctionProcess(self.workdir, name, source=cfg.function_source, env=fn_env)
            )
            self.functions[name] = fn
        if "tag_monitor" in self.functions:
            pubsub.create_push_subscription(
                GCR_TOPIC, "tag-monitor-push", self.functions["tag_monitor"].url
            )
        if "model_done_watcher" in self.functions:
            # A build takes minutes: a short ack deadline would redeliver the marker and
            # start a second, concurrent build of the same version.
            pubsub.create_push_subscription(
                MODEL_EVENTS_TOPIC,
                "model-done-push",
                self.functions["model_done_watcher"].url,
                ack_deadline_seconds=600,
            )
        if "rollout_controller" in self.functions:
            self._start_ticker(pubsub)
        if cfg.podman_service:
            self.podman_service = self._own(PodmanService(self.workdir, self.podman))
        self._save()

    def _start_ticker(self, pubsub: PubsubEmulator) -> None:
        """rollout_controller woken by a periodic tick, as Cloud Scheduler does in GCP."""
        from edgefleet.localstack.ticker import TICK_TOPIC, Ticker

        pubsub.create_topic(TICK_TOPIC)
        pubsub.create_push_subscription(
            TICK_TOPIC, "rollout-tick-push", self.functions["rollout_controller"].url
        )
        self._own(
            Ticker(
                self.workdir,
                host=pubsub.host,
                project=pubsub.project,
                topic=TICK_TOPIC,
                interval=self.config.rollout_tick_seconds,
            )
        )

    def stop(self) -> None:
        """Stop everything; when something could not be stopped, raise StackError naming
        it and keep ``stack.json``, so ``edgefleet down`` can finish the job."""
        with _locked(self.workdir):
            failures = self._stop_owned()
            if failures:
                raise StackError(_stop_failed(self.workdir, failures))
            (self.workdir / STATE_FILE).unlink(missing_ok=True)

    def _stop_owned(self) -> list[str]:
        """Stop devices, then components in reverse start order; every one is tried even
        when an earlier one fails. Returns the failures, one line each."""
        from edgefleet.localstack import netns

        failures = [
            *attempt_each(reversed(self.devices), netns.teardown_recorded, _device_label),
            *attempt_each(reversed(self._owned), lambda c: c.stop(), _component_label),
        ]
        self.devices.clear()
        self._owned.clear()
        return failures

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what clients need --------------------------------------------------------------

    def _require(self) -> tuple[PubsubEmulator, GcsEmulator, Registry]:
        if self.pubsub is None or self.gcs is None or self.registry is None:
            raise StackError("the local stack is not started")
        return self.pubsub, self.gcs, self.registry

    def env(self) -> dict[str, str]:
        """Environment for clients of the stack (CLI, tests, device agents on the host)."""
        pubsub, gcs, registry = self._require()
        env = {
            **gcs.env(),
            **pubsub.env(),
            "DEPLOY_BUCKET": self.config.deploy_bucket,
            "MODEL_BUCKET": self.config.model_bucket,
            "CHANNELS": self.config.channels,
            "INSECURE_REGISTRIES": registry.host,
            "EDGEFLEET_REGISTRY": registry.host,
        }
        if self.podman is not None:
            env.update(self.podman.env())
        if self.podman_service is not None:
            env["DOCKER_HOST"] = self.podman_service.docker_url
        if self.mosquitto is not None:
            env["MQTT_URL"] = self.mosquitto.url
        return env

    def function_env(self) -> dict[str, str]:
        env = self.env()
        if self.registry is not None:
            # tag_monitor resolves only allowed repositories (empty would allow none).
            env["ALLOWED_REGISTRIES"] = self.registry.host
        if self.config.podman_service and self.registry is not None:
            # model_done_watcher's PodmanBuilder: build through the stack's podman service
            # (started after the functions; the socket path is fixed) into its registry.
            env["IMAGE_REPOSITORY"] = f"{self.registry.host}/edgefleet"
            env["PODMAN_SOCKET"] = f"unix://{self.workdir / 'podman.sock'}"
        env.update(self.config.function_env)
        return env

    def state(self) -> dict[str, Any]:
        records = []
        for component in self._owned:
            with contextlib.suppress(StackError):
                records.append(component.process.record())
        ports: dict[str, Any] = {}
        if self.pubsub:
            ports["pubsub"] = self.pubsub.port
        if self.gcs:
            ports["gcs"] = self.gcs.port
        if self.registry:
            ports["registry"] = self.registry.port
        if self.bridge:
            ports["registry_bridge"] = self.bridge.port
        if self.mosquitto:
            ports["mqtt"] = self.mosquitto.port
        ports.update({f"function_{n}": f.port for n, f in self.functions.items()})
        env: dict[str, str] = {}
        with contextlib.suppress(StackError):
            env = self.env()
        return {
            "version": 1,
            "workdir": str(self.workdir),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "processes": records,
            "ports": ports,
            "env": env,
            "functions": {n: f.url for n, f in self.functions.items()},
            "logs": str(self.workdir / "logs"),
            "devices": self.devices,
        }

    def _save(self) -> None:
        path = self.workdir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2) + "\n")
        os.replace(tmp, path)

    def add_devices(self, count: int, *, prefix: str = "dev") -> list[dict[str, Any]]:
        """Create ``count`` device namespaces (ids PREFIX1..N) that reach the stack's
        GCS emulator and registry on the host's addresses; recorded in stack.json."""
        from edgefleet.localstack import netns

        pubsub, gcs, registry = self._require()
        ports = [gcs.port, registry.port, pubsub.port]
        if self.mosquitto is not None:
            ports.append(self.mosquitto.port)
        created = []
        for i in range(1, count + 1):
            record = netns.create_device(f"{prefix}{i}", workdir=self.workdir, forward_ports=ports)
            self.devices.append(record)
            created.append(record)
            self._save()
        return created

    def start_device_agent(self, record: dict[str, Any], env: Mapping[str, str]) -> Any:
        """Start ``python -m sync_pod`` inside a device namespace with the stack's env plus
        ``env`` (ARCH, CHANNEL, RUNTIME, MANIFEST_DIR, STATE_DIR, ...); recorded."""
        from edgefleet.localstack import netns

        _, _, registry = self._require()
        base = {
            **self.env(),
            "BUCKET": self.config.deploy_bucket,
            "ALLOWED_REGISTRIES": registry.host,
        }
        agent = netns.start_device_agent(record, workdir=self.workdir, env={**base, **env})
        self._save()
        return agent

    def save(self) -> None:
        """Persist the state (after adding devices)."""
        self._save()


def attempt_each(
    items: Iterable[T], action: Callable[[T], object], label: Callable[[T], str]
) -> list[str]:
    """Run ``action`` on every item, carrying on past failures; the failures, one line each
    (``LABEL: ErrorType: message``). Stopping is best effort, but never silent."""
    failures = []
    for item in items:
        try:
            action(item)
        except Exception as exc:
            failures.append(f"{label(item)}: {type(exc).__name__}: {' '.join(str(exc).split())}")
    return failures


def _device_label(record: Mapping[str, Any]) -> str:
    return f"device {record.get('name')}"


def _component_label(component: Any) -> str:
    name = getattr(getattr(component, "process", None), "name", None)
    return str(name or type(component).__name__)


def _stop_failed(workdir: Path, failures: Sequence[str]) -> str:
    return (
        f"could not stop all of the local stack in {workdir}: {'; '.join(failures)}; "
        f"{STATE_FILE} is kept: fix the cause, then run 'edgefleet down --workdir {workdir}'"
    )


def down(workdir: str | os.PathLike[str]) -> list[str]:
    """Stop what ``WORKDIR/stack.json`` records; returns what was stopped. Idempotent.

    Every recorded device and process is tried; if any could not be stopped, StackError
    names them and ``stack.json`` stays for the next ``down``."""
    from edgefleet.localstack import netns

    workdir = Path(workdir).resolve()
    stopped: list[str] = []
    with _locked(workdir):
        state = read_state(workdir)
        if state is None:
            return stopped

        def teardown(device: Mapping[str, Any]) -> None:
            netns.teardown_recorded(device)
            stopped.append(_device_label(device))

        def stop(record: Mapping[str, Any]) -> None:
            if proc.stop_recorded(record, timeout=10.0):
                stopped.append(f"{record['name']} (pid {record['pid']})")

        failures = [
            *attempt_each(reversed(state.get("devices", [])), teardown, _device_label),
            *attempt_each(reversed(state.get("processes", [])), stop, lambda r: str(r["name"])),
        ]
        if failures:
            raise StackError(_stop_failed(workdir, failures))
        registry_port = (state.get("ports") or {}).get("registry")
        if isinstance(registry_port, int):
            forget_registry_images(registry_host_for(registry_port))
        (workdir / STATE_FILE).unlink(missing_ok=True)
        mosquitto_files(workdir)
    return stopped

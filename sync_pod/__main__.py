"""``python -m sync_pod [--once]``: the device sync agent (config from env, see SPEC.md)."""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgefleet.core import logs, policy
from edgefleet.core.errors import EdgefleetError
from sync_pod.config import Config, from_env
from sync_pod.pipeline import Outcome
from sync_pod.wait import Waiter

# A refused connection fails a poll within seconds instead of the library's two minutes.
RETRY_SECONDS = 5.0
# The child running the kubernetes model check of a new set (imports take ~1 s here).
PODCHECK_SECONDS = 60.0
JITTER = 0.2

log = logging.getLogger(__name__)


def make_agent(config: Config):  # type: ignore[no-untyped-def]
    """The agent with its real adapters (GCS or the emulator, kubelet or podman). Both
    choices keep the long-lived process small (RSS budget 40 MiB, docs/device.md): the
    lean JSON-API bucket instead of google-cloud-storage, and no kubernetes client in this
    process (its V1Pod model check, when on, runs in a child per new set)."""
    from device import gcs_json
    from device.podman import PodmanRuntime
    from sync_pod.agent import Agent

    retry = gcs_json.Retry(initial=0.2, maximum=1.0, multiplier=2.0, timeout=RETRY_SECONDS)
    bucket = gcs_json.connect(config.bucket, timeout=10.0, retry=retry)
    runtime = (
        PodmanRuntime(
            config.state_dir,
            podman=config.podman,
            tls_verify=config.tls_verify,
            insecure_registries=config.insecure_registries,
        )
        if config.runtime == "podman"
        else kubelet_runtime(config)
    )
    if config.handover_ports:
        runtime = handover_runtime(config, runtime)
    return Agent(config, bucket, runtime, model_check=device_model_check(config))


def device_model_check(config: Config, *, shared: Path | None = None) -> policy.ModelCheck:
    """The allowlist's walk alone (``policy.walk_only``), or with ``V1POD_CHECK=on`` also the
    V1Pod model in a child per new manifest (docs/device.md, "V1Pod model check").
    ``shared``: the verdict directory of the fleet simulator's processes
    (:class:`device.podcheck.CachedModelCheck`); a device keeps its verdicts in memory."""
    from device.podcheck import CachedModelCheck, ChildModelCheck

    checks = "allowlist+v1pod-model" if config.v1pod_check else "allowlist"
    log.info("manifest checks", extra=logs.fields(checks=checks))
    if not config.v1pod_check:
        return policy.walk_only
    return CachedModelCheck(ChildModelCheck(timeout=PODCHECK_SECONDS), shared=shared)


def handover_runtime(config: Config, runtime: Any) -> Any:
    """The runtime wrapped for hand-over: this process listens on HANDOVER_PORTS and
    forwards to the live version of each pod serving one (docs/device.md)."""
    from device.handover import HandoverProxy, HandoverRuntime

    proxies = {port: HandoverProxy(port) for port in config.handover_ports}  # listen lazily
    return HandoverRuntime(runtime, proxies, config.state_dir, ready_timeout=config.health_timeout)


def make_wait(config: Config, known_generation: Callable[[], int]) -> Waiter:
    """The sleep between polls: ended early by an MQTT wake-up when ``MQTT_URL`` is set."""
    from edgefleet.core import mqtt
    from sync_pod.wake import MqttWake

    if config.mqtt is None:
        return Waiter()
    return MqttWake(
        config.mqtt,
        mqtt.topic(config.arch, config.channel),
        f"edgefleet-{config.device_id}",
        known_generation=known_generation,
        spread=config.wake_spread_seconds,
    ).start()


def kubelet_runtime(config: Config):  # type: ignore[no-untyped-def]
    """Kubelet runs what the folder holds; its node API says what runs (the gate's truth).
    Missing credentials fail the start: gating on ports alone could commit a set while
    kubelet still runs the old pods."""
    from device.kubelet import KubeletApi, KubeletCredentials
    from device.runtime import KubeletRuntime

    if config.kubelet_api is None:
        return KubeletRuntime()
    credentials = KubeletCredentials.in_dir(config.kubelet_credentials)
    credentials.check()
    return KubeletRuntime(KubeletApi(config.kubelet_api, credentials))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sync_pod", description=__doc__)
    parser.add_argument("--once", action="store_true", help="recover, poll once, report, exit")
    args = parser.parse_args(argv)
    logs.configure("sync_pod", os.environ.get("LOG_LEVEL", "INFO"))
    try:
        config = from_env()
        agent = make_agent(config)
        if args.once:
            agent.recover()
            outcome = agent.poll_once()
            agent.report(force=True)
            return 1 if outcome in (Outcome.FAILED, Outcome.ROLLBACK_FAILED) else 0
        wait = make_wait(config, lambda: agent.state.seen_generation)
        agent.wakeup_status = getattr(wait, "status", None)
        signal.signal(signal.SIGTERM, lambda _signum, _frame: wait.stop())
        signal.signal(signal.SIGINT, lambda _signum, _frame: wait.stop())
        try:
            agent.run(wait, jitter=lambda: random.uniform(1 - JITTER, 1 + JITTER))
        finally:
            wait.stop()
        return 0
    except EdgefleetError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

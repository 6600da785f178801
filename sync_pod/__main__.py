"""``python -m sync_pod [--once]``: the device sync agent (config from env, see SPEC.md)."""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
from collections.abc import Sequence

from edgefleet.core import logs
from edgefleet.core.errors import EdgefleetError
from sync_pod.config import Config, from_env
from sync_pod.pipeline import Outcome
from sync_pod.wait import Waiter

# A refused connection fails a poll within seconds instead of the library's two minutes.
RETRY_SECONDS = 5.0
# The child running the kubernetes model check of a new set (imports take ~1 s here).
PODCHECK_SECONDS = 60.0
JITTER = 0.2


def make_agent(config: Config):  # type: ignore[no-untyped-def]
    """The agent with its real adapters (GCS or the emulator, kubelet or podman). Both
    choices keep the long-lived process small (RSS budget 40 MiB, docs/device.md): the
    lean JSON-API bucket instead of google-cloud-storage, and the kubernetes model check
    in a child process per new set."""
    from device import gcs_json
    from device.podcheck import ChildModelCheck
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
    return Agent(config, bucket, runtime, model_check=ChildModelCheck(timeout=PODCHECK_SECONDS))


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
        wait = Waiter()
        signal.signal(signal.SIGTERM, lambda _signum, _frame: wait.stop())
        signal.signal(signal.SIGINT, lambda _signum, _frame: wait.stop())
        agent.run(wait, jitter=lambda: random.uniform(1 - JITTER, 1 + JITTER))
        return 0
    except EdgefleetError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

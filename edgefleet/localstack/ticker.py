"""The local stand-in for Cloud Scheduler: publish a tick to a Pub/Sub topic periodically.

In GCP a Cloud Scheduler job publishes to topic ``rollout-tick`` (see the GCP plan); the
local stack runs this small process instead (``python -m edgefleet.localstack.ticker``),
recorded in stack.json like every other component. It speaks the emulator's REST API
with the standard library, so it starts in a fraction of a second and stays small.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from edgefleet.localstack.process import ManagedProcess

TICK_TOPIC = "rollout-tick"
DEFAULT_TICK_SECONDS = 5.0


def publish_tick(host: str, project: str, topic: str, *, timeout: float = 5.0) -> None:
    """One tick message (``{"tick": UNIX_TIME}``) on ``topic`` of the emulator at ``host``."""
    body = json.dumps({"tick": time.time()}).encode()
    doc = {"messages": [{"data": base64.b64encode(body).decode()}]}
    request = urllib.request.Request(
        f"http://{host}/v1/projects/{project}/topics/{topic}:publish",
        data=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        resp.read()


class Ticker:
    """The ticker process of a local stack."""

    def __init__(
        self, workdir: str | Path, *, host: str, project: str, topic: str, interval: float
    ) -> None:
        argv = [
            sys.executable, "-m", "edgefleet.localstack.ticker",
            "--host", host, "--project", project, "--topic", topic,
            "--interval", f"{interval:g}",
        ]  # fmt: skip
        self.process = ManagedProcess("rollout-ticker", argv, workdir=workdir)

    def start(self) -> Ticker:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgefleet.localstack.ticker")
    parser.add_argument("--host", required=True, help="Pub/Sub emulator HOST:PORT")
    parser.add_argument("--project", required=True)
    parser.add_argument("--topic", default=TICK_TOPIC)
    parser.add_argument("--interval", type=float, default=DEFAULT_TICK_SECONDS)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.is_set():
        try:
            publish_tick(args.host, args.project, args.topic)
        except (OSError, urllib.error.URLError) as exc:
            print(f"ticker: publish failed: {exc}", file=sys.stderr, flush=True)
        stop.wait(max(0.2, args.interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stand-in for podman playing model-server Pods, for the hand-over test and bench.

Follows the reconcile contract of :class:`device.podman.PodmanRuntime` (play each pod
whose manifest changed, take down pods whose manifest is gone, report pods and whether
they run): each Pod's server runs as ``python -m model_server`` on the host, listening on
127.0.0.1 at the pod's hostPort (what podman's port mapping publishes), with the pod's
env (``CONTAINER_DIGEST`` makes ``/version/`` report the pod's digest) and the model its
image would carry (the LiteRT test model). A stop is SIGTERM, as podman's ``pod stop``.
Why not podman here: a real image build takes minutes and a podman pod start ~1 s of
this shared machine's CPU; the hand-over logic and the proxy are what is measured.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from device.runtime import PodStatus
from edgefleet.core import layout

REPO = Path(__file__).resolve().parent.parent.parent
MODEL = Path("/work/shared/testdata/coral/mobilenet_v1_0.25_128_quant.tflite")
LABELS = Path("/work/shared/testdata/coral/imagenet_labels.txt")


class ProcessRuntime:
    name = "podman"

    def __init__(self, log_dir: Path, *, model: Path = MODEL, labels: Path = LABELS) -> None:
        self.log_dir = log_dir
        self.model = model
        self.labels = labels
        self.procs: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}

    def prefetch(self, pods: Any) -> None:
        return None

    def reconcile(self, folder: Path, *, background: bool = False) -> list[str]:
        desired = {
            p.name[: -len(layout.MANIFEST_SUFFIX)]: p.read_text()
            for p in folder.iterdir()
            if layout.is_manifest_file_name(p.name)
        }
        started = []
        for name in [n for n in self.procs if n not in desired]:
            self._stop(name)
        for name, text in sorted(desired.items()):
            running = self.procs.get(name)
            if running is not None and running[0] == text and running[1].poll() is None:
                continue
            self.play(name, text)
            started.append(name)
        return started

    def play(self, name: str, text: str) -> None:
        if name in self.procs:
            self._stop(name)
        self.procs[name] = (text, self._start(name, yaml.safe_load(text)))

    def pods(self, *, background: bool = False) -> dict[str, PodStatus]:
        return {n: PodStatus(n, p.poll() is None) for n, (_, p) in self.procs.items()}

    def stop_all(self) -> None:
        for name in list(self.procs):
            self._stop(name)

    def _start(self, name: str, pod: dict[str, Any]) -> subprocess.Popen[bytes]:
        container = pod["spec"]["containers"][0]
        port = container["ports"][0]["hostPort"]
        env = {e["name"]: str(e.get("value", "")) for e in container.get("env") or []}
        env.pop("EDGEFLEET_HOST", None)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "model_server", "--model", str(self.model),
                 "--labels", str(self.labels), "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO,
                env={**os.environ, "EDGEFLEET_WORKERS": "1", "EDGEFLEET_TELEMETRY": "off", **env},
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def _stop(self, name: str) -> None:
        _, proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def model_server_pod(
    digest: str, port: int, *, ready_path: str = "/readyz", host_network: bool = False
) -> dict[str, Any]:
    """The model-server Pod as the template renders it (hostPort on 127.0.0.1), pinned to
    ``digest`` (what ``/version/`` reports), for the hand-over test and bench."""
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "model-server",
                "image": f"127.0.0.1:5999/edgefleet/model@{digest}",
                "ports": [
                    {"name": "http", "containerPort": 5000, "hostPort": port, "hostIP": "127.0.0.1"}
                ],
                "env": [{"name": "CONTAINER_DIGEST", "value": digest}],
                "readinessProbe": {"httpGet": {"path": ready_path, "port": "http"}},
            }
        ]
    }
    if host_network:
        spec["hostNetwork"] = True
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "model-server"}, "spec": spec}


class BackToBack:
    """A client thread calling ``request()`` back to back until stopped; what it got and
    what failed (used as ``with BackToBack(fn) as traffic: ...``)."""

    def __init__(self, request: Callable[[], str]) -> None:
        self.request = request
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(self.request())
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.failures.append(repr(exc))

    def __enter__(self) -> BackToBack:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

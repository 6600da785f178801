"""Build Pod manifests and publish manifest sets the way the control plane does.

Used by the device tests and by ``bench/bench_sync_poll.py``; nothing here runs on a
device. Sets are made with :func:`edgefleet.core.manifest_set.next_set` + ``encode`` and
written with :class:`edgefleet.cloud.storage.Bucket`, exactly like ``set_store``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.cloud.storage import Bucket
from edgefleet.core import layout, manifest_set
from edgefleet.core.manifest_set import ManifestEntry, ManifestSet

FAKE_DIGEST = "sha256:" + "ab" * 32


TEST_REGISTRY = "127.0.0.1:5999"


def agent_env(bucket_name: str, root: Path, **extra: str) -> dict[str, str]:
    """A kubelet-runtime device of x86_64/beta whose folders live under ``root``."""
    env = {
        "BUCKET": bucket_name,
        "ARCH": "x86_64",
        "CHANNEL": "beta",
        "DEVICE_ID": "dev-1",
        "MANIFEST_DIR": str(root / "device" / "pods"),
        "STATE_DIR": str(root / "state"),
        "ALLOWED_REGISTRIES": TEST_REGISTRY,
        # Unsigned sets in most device tests: the explicit development switch.
        "EDGEFLEET_INSECURE_ALLOW_UNSIGNED": "1",
        "HEALTH_TIMEOUT": "1.5",
        "STATUS_SECONDS": "3600",
    }
    env.update(extra)
    return env


def pod_yaml(
    name: str,
    image: str,
    *,
    command: Sequence[str] | None = None,
    port: int | None = None,
    readiness_path: str | None = None,
    host_network: bool = False,
    extra_spec: dict[str, Any] | None = None,
    container_extra: dict[str, Any] | None = None,
) -> str:
    """A policy-clean v1 Pod: limits set, image as given (pin it by digest), all
    capabilities dropped, RuntimeDefault seccomp; a ``port`` is published on the device's
    loopback (hostPort, hostIP 127.0.0.1)."""
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if command:
        container["command"] = list(command)
    if port:
        container["ports"] = [{"containerPort": port, "name": "http"}]
        if not host_network:
            container["ports"][0].update(hostPort=port, hostIP="127.0.0.1")
        if readiness_path:
            container["readinessProbe"] = {
                "httpGet": {"path": readiness_path, "port": port},
                "periodSeconds": 1,
            }
    container.update(container_extra or {})
    spec: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": "Always",
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    if host_network:
        spec["hostNetwork"] = True
    spec.update(extra_spec or {})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    return yaml.safe_dump(pod, sort_keys=False)


def entries(pods: dict[str, str], scope: str = manifest_set.SCOPE_CHANNEL) -> list[ManifestEntry]:
    return [ManifestEntry(name, scope, text) for name, text in pods.items()]


class ManualClock:
    """An agent's clock (and its gate's sleep) moved by the test; starts at the real time
    because sets expire."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class SetPublisher:
    """Writes successive sets for one arch/channel, like the control plane's set_store."""

    def __init__(
        self,
        bucket: Bucket,
        arch: str,
        channel: str,
        *,
        signers: Sequence[Ed25519PrivateKey] = (),
    ) -> None:
        self.bucket = bucket
        self.arch = arch
        self.channel = channel
        self.signers = tuple(signers)
        self.last: ManifestSet | None = None
        self.history: list[tuple[ManifestSet, bytes]] = []

    @property
    def object_name(self) -> str:
        return layout.set_object(self.arch, self.channel)

    def build(
        self,
        items: Iterable[ManifestEntry],
        *,
        now: datetime | None = None,
        ttl: timedelta = manifest_set.DEFAULT_TTL,
    ) -> ManifestSet:
        s = manifest_set.next_set(
            self.last, self.arch, self.channel, items, now=now or datetime.now(UTC), ttl=ttl
        )
        self.last = s
        return s

    def publish(
        self,
        items: Iterable[ManifestEntry],
        *,
        signers: Sequence[Ed25519PrivateKey] | None = None,
        now: datetime | None = None,
        ttl: timedelta = manifest_set.DEFAULT_TTL,
    ) -> ManifestSet:
        s = self.build(items, now=now, ttl=ttl)
        data = manifest_set.encode(s, self.signers if signers is None else signers)
        self.write_raw(data)
        self.history.append((s, data))
        return s

    def write_raw(self, data: bytes) -> int:
        return self.bucket.write(self.object_name, data, content_type="application/json")


def wait_for(pred: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Whether ``pred()`` became true within ``timeout`` s (checked every ``interval``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return False

"""Stand-in for many devices' status reports (``status/DEVICE_ID.json``), for the
dashboard's tests and bench: thousands of podman devices cannot run on one machine.

The shape is the sync agent's (``sync_pod.agent.Agent.status``, uploaded as
``sync_pod.status.StatusReporter`` does) plus the ``models`` summary of the wave-2
contract (COORDINATION.md, "Device status"); a report built here reads exactly as one a
device uploads. :func:`seed` writes many of them in parallel.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from edgefleet.core import layout

REGISTRY = "127.0.0.1:5000"
REPOSITORY = f"{REGISTRY}/edgefleet/mobilenet"
SYNC_DIGEST = "sha256:" + "5" * 64


def digest(n: int) -> str:
    """A stable, realistic-looking digest for version ``n``."""
    return "sha256:" + hashlib.sha256(f"edgefleet-test-{n}".encode()).hexdigest()


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(
    device_id: str,
    *,
    arch: str = "x86_64",
    channel: str = "stable",
    running: str = digest(1),
    health: str = "healthy",
    age: float = 2.0,
    now: datetime | None = None,
    sequence: int = 3,
    requests: int = 120,
    latency_p95_ms: float = 30.0,
    confidence: float = 0.87,
    accelerator: str = "cpu",
    rejections: Sequence[dict[str, Any]] = (),
    **extra: Any,
) -> dict[str, Any]:
    """One report as the agent writes it, running ``running`` on ``channel``."""
    now = now or datetime.now(UTC)
    seen = now - timedelta(seconds=age)
    image = f"{REPOSITORY}@{running}"
    doc: dict[str, Any] = {
        "deviceId": device_id,
        "arch": arch,
        "channel": channel,
        "runtime": "podman",
        "agentVersion": "0.1.0",
        "applied": {
            "sequence": sequence,
            "digest": "sha256:" + "a" * 64,
            "appliedAt": rfc3339(seen - timedelta(seconds=60)),
            "manifests": {"mobilenet-pod.yaml": "sha256:" + "b" * 64},
        },
        "pods": [
            {
                "name": layout.SYNC_POD_NAME,
                "running": True,
                "containers": [{"name": "sync", "image": f"{REGISTRY}/sync@{SYNC_DIGEST}"}],
            },
            {
                "name": "mobilenet",
                "running": True,
                "containers": [{"name": "server", "image": image, "imageDigest": running}],
            },
        ],
        "health": health,
        "offline": False,
        "offlineSince": None,
        "lastSync": rfc3339(seen),
        "lastPoll": rfc3339(seen),
        "lastError": None,
        "lastRejection": rejections[-1] if rejections else None,
        "rejections": list(rejections),
        "badDigests": [],
        "trustedKeys": ["ed25519:" + "c" * 16],
        "reportedAt": rfc3339(seen),
        "heartbeatSeconds": 300.0,
        "pollSeconds": 30.0,
        "models": [
            {
                "digest": running,
                "image": image,
                "name": "model-server",
                "window": {
                    "start": rfc3339(seen - timedelta(seconds=60)),
                    "end": rfc3339(seen),
                    "seconds": 60.0,
                },
                "requests": requests,
                "errors": requests // 100,
                "errorRate": round((requests // 100) / requests, 4) if requests else 0.0,
                "latencyP50Ms": round(latency_p95_ms / 2.4, 1),
                "latencyP95Ms": latency_p95_ms,
                "confidenceMean": confidence,
                "drift": 0.02,
                "accelerator": accelerator,
            }
        ],
    }
    doc.update(extra)
    return doc


def encode(doc: dict[str, Any]) -> bytes:
    """As the agent uploads it (sync_pod.status.StatusReporter)."""
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def fleet(count: int, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """``count`` varied reports: arches, channels, two versions, an Edge TPU share, a few
    stale and unhealthy devices, a rejection now and then."""
    now = now or datetime.now(UTC)
    channels = ("stable", "stable", "stable", "beta", "latest")
    out = []
    for i in range(count):
        arch = "aarch64" if i % 3 == 0 else "x86_64"
        channel = channels[i % len(channels)]
        newer = channel != "stable" or i % 10 == 0
        rejections = (
            [{"reason": "set-rejected", "detail": "signature by an unknown key",
              "at": rfc3339(now), "digest": None, "generation": 7}]
            if i % 97 == 0 else []
        )  # fmt: skip
        out.append(
            status(
                f"dev-{i:05d}",
                arch=arch,
                channel=channel,
                running=digest(2 if newer else 1),
                health="degraded: mobilenet" if i % 53 == 0 else "healthy",
                age=4000.0 if i % 71 == 0 else 900.0 if i % 37 == 0 else float(i % 30),
                now=now,
                requests=60 + i % 120,
                latency_p95_ms=(34.0 if newer else 30.0) + (i % 7),
                confidence=0.84 if newer else 0.88,
                accelerator="edgetpu" if arch == "aarch64" and i % 2 == 0 else "cpu",
                rejections=rejections,
            )
        )
    return out


def seed(bucket: Any, docs: Iterable[dict[str, Any]], *, workers: int = 16) -> int:
    """Write each report to ``status/ID.json`` of ``bucket`` (anything with ``write``)."""

    def put(doc: dict[str, Any]) -> None:
        bucket.write(
            layout.status_object(doc["deviceId"]), encode(doc), content_type="application/json"
        )

    docs = list(docs)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, docs))
    return len(docs)

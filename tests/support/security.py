"""Pods and policies for the security tests: a pod the allowlist accepts, to mutate."""

from __future__ import annotations

import base64
import json
from typing import Any

from edgefleet.core import policy

DIGEST = "sha256:" + "cd" * 32
REPO = "127.0.0.1:5000/team"
IMAGE = f"{REPO}/model@{DIGEST}"
POLICY = policy.Policy(allowed_registries=(REPO,))


def good_pod() -> dict[str, Any]:
    """What the packaged model-server template renders, in short."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "model", "labels": {"app": "model"}},
        "spec": {
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "server",
                    "image": IMAGE,
                    "ports": [
                        {
                            "name": "http",
                            "containerPort": 5000,
                            "hostPort": 5000,
                            "hostIP": "127.0.0.1",
                        }
                    ],
                    "resources": {"limits": {"cpu": "1", "memory": "256Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "spool", "mountPath": "/var/spool/edgefleet"}],
                }
            ],
            "volumes": [
                {
                    "name": "spool",
                    "hostPath": {"path": "/var/spool/edgefleet/model", "type": "Directory"},
                }
            ],
        },
    }


def pubsub_event(payload: dict[str, Any]) -> object:
    """A ``messagePublished`` CloudEvent as functions-framework hands it to a function."""

    class Event(dict):  # type: ignore[type-arg]
        data = {"message": {"data": base64.b64encode(json.dumps(payload).encode()).decode()}}

    return Event(id="1", type="google.cloud.pubsub.topic.v1.messagePublished")

"""Test-only CloudEvent functions with the real functions' names: each appends the events it
receives, as JSON lines, to $RECORD_DIR/<function>.jsonl."""

import json
import os

import functions_framework


def _record(name, cloud_event):  # type: ignore[no-untyped-def]
    entry = {
        "type": cloud_event["type"],
        "source": cloud_event["source"],
        "data": cloud_event.data,
        "env": {k: os.environ.get(k) for k in ("DEPLOY_BUCKET", "INSECURE_REGISTRIES", "EXTRA")},
    }
    with open(os.path.join(os.environ["RECORD_DIR"], f"{name}.jsonl"), "a") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")


@functions_framework.cloud_event
def tag_monitor(cloud_event):  # type: ignore[no-untyped-def]
    _record("tag_monitor", cloud_event)


@functions_framework.cloud_event
def model_done_watcher(cloud_event):  # type: ignore[no-untyped-def]
    _record("model_done_watcher", cloud_event)


@functions_framework.cloud_event
def rollout_controller(cloud_event):  # type: ignore[no-untyped-def]
    _record("rollout_controller", cloud_event)

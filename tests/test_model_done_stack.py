"""model_done_watcher in a real functions-framework process (the stack's), fed GCS
notifications in the Pub/Sub push format and Eventarc storage CloudEvents over HTTP."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import requests
from support.cloudbuild_api import CloudBuildApi

from edgefleet.localstack.functions import FunctionProcess

pytestmark = [pytest.mark.stack]


def log_entries(stack) -> list[dict]:
    return stack.functions["model_done_watcher"].log_entries()


def wait_for_entry(stack, event_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in log_entries(stack):
            if e.get("event_id") == event_id:
                return e
        time.sleep(0.05)
    raise AssertionError(f"no log entry for event {event_id}")


def notification(bucket: str, name: str, event_type: str = "OBJECT_FINALIZE") -> tuple[dict, str]:
    message_id = uuid.uuid4().hex
    body = {
        "message": {
            "data": base64.b64encode(
                json.dumps({"bucket": bucket, "name": name}).encode()
            ).decode(),
            "attributes": {"eventType": event_type, "bucketId": bucket, "objectId": name},
            "messageId": message_id,
        },
        "subscription": "projects/edgefleet-local/subscriptions/model-done-direct",
    }
    return body, message_id


def post(stack, body: dict) -> int:
    url = stack.functions["model_done_watcher"].url
    return requests.post(url, json=body, timeout=30).status_code


def test_other_objects_and_events_are_ignored(stack_functions) -> None:
    models = stack_functions.config.model_bucket
    for name, kind in [
        ("equipmentparts/equipmentparts_1_1501089026/model.tflite", "OBJECT_FINALIZE"),
        ("equipmentparts/equipmentparts_1_1501089026/TRAINER-DONE", "OBJECT_DELETE"),
    ]:
        body, message_id = notification(models, name, kind)
        assert post(stack_functions, body) == 200
        entry = wait_for_entry(stack_functions, message_id)
        assert entry["severity"] == "INFO" and "ignored" in entry["message"]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("equipmentparts/TRAINER-DONE", "MODEL/VERSION"),
        ("equipmentparts/other_1_1501089026/TRAINER-DONE", "must be named"),
        ("equipmentparts/equipmentparts_1_12345/TRAINER-DONE", "must be named"),
        ("equipmentparts/equipmentparts_1_99999999999/TRAINER-DONE", "plausible"),
        ("Equipment/Equipment_1_1501089026/TRAINER-DONE", "model name"),
    ],
)
def test_bad_markers_logged_once_and_acknowledged(stack_functions, name, fragment) -> None:
    body, message_id = notification(stack_functions.config.model_bucket, name)
    assert post(stack_functions, body) == 200  # acknowledged: a retry cannot fix a name
    entries = [e for e in log_entries(stack_functions) if e.get("event_id") == message_id]
    assert len(entries) == 1
    assert entries[0]["event"] == "model-done-rejected" and fragment in entries[0]["error"]


def test_marker_in_another_bucket_rejected(stack_functions) -> None:
    body, message_id = notification("someone-elses-bucket", "m/m_1_1501089026/TRAINER-DONE")
    assert post(stack_functions, body) == 200
    assert "MODEL_BUCKET" in wait_for_entry(stack_functions, message_id)["error"]


def storage_event(url: str, bucket: str, name: str) -> tuple[requests.Response, str]:
    """Eventarc's storage CloudEvent (binary mode), posted to the function at ``url``."""
    event_id = uuid.uuid4().hex
    headers = {
        "ce-id": event_id,
        "ce-specversion": "1.0",
        "ce-type": "google.cloud.storage.object.v1.finalized",
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "Content-Type": "application/json",
    }
    body = {"bucket": bucket, "name": name}
    return requests.post(url, json=body, headers=headers, timeout=30), event_id


def test_valid_marker_is_logged_and_a_missing_builder_config_fails_loudly(
    stack_functions,
) -> None:
    """The shared stack runs the function without builder settings: the request is logged,
    then the builder's config error surfaces loudly (HTTP 500, so Pub/Sub retries)."""
    models = stack_functions.config.model_bucket
    name = "equipmentparts/equipmentparts_3_1700000000/export/TRAINER-DONE"
    url = stack_functions.functions["model_done_watcher"].url
    resp, event_id = storage_event(url, models, name)
    entry = wait_for_entry(stack_functions, event_id)
    assert entry["event"] == "build-requested"
    assert (entry["model"], entry["version"]) == ("equipmentparts", "equipmentparts_3_1700000000")
    assert entry["source"] == f"gs://{models}/equipmentparts/equipmentparts_3_1700000000/"
    assert entry["arches"] == ["x86_64", "aarch64", "armv7l"]
    assert resp.status_code == 500


PIN = "@sha256:" + "ab" * 32
CLOUDBUILD_ENV = {
    "BUILDER": "cloudbuild",
    "MODEL_BUCKET": "acme-models",
    "ARCHES": "x86_64,aarch64",
    "IMAGE_REPOSITORY": "registry.example.internal/acme-fleet/edgefleet",
    "CLOUDBUILD_PROJECT": "acme-fleet",
    "CLOUDBUILD_REGION": "europe-west1",
    "CLOUDBUILD_SOURCE": "gs://acme-fleet-edgefleet-build/source/edgefleet-src.tar.gz",
    "CLOUDBUILD_SERVICE_ACCOUNT": "edgefleet-builder@acme-fleet.iam.gserviceaccount.com",
    "CLOUDBUILD_PYTHON_IMAGE": f"mirror.example.internal/python:3.11-slim{PIN}",
    "CLOUDBUILD_DOCKER_IMAGE": f"mirror.example.internal/docker:27-cli{PIN}",
    "CLOUDBUILD_BINFMT_IMAGE": f"mirror.example.internal/binfmt{PIN}",
}


def test_valid_marker_becomes_a_build_request(tmp_path) -> None:
    """The watcher (a real functions-framework process, configured as deploy-gcp.sh
    configures it) turns a TRAINER-DONE event into one Cloud Build builds.create request:
    received by the Cloud Build API stand-in, valid there, for this model version and
    every build arch, sent without credentials to a non-Google endpoint."""
    with CloudBuildApi() as api:
        env = {**CLOUDBUILD_ENV, "CLOUDBUILD_EMULATOR_HOST": api.host}
        with FunctionProcess(tmp_path, "model_done_watcher", env=env) as fn:
            name = "equipmentparts/equipmentparts_3_1700000000/TRAINER-DONE"
            resp, event_id = storage_event(fn.url, "acme-models", name)
            assert resp.status_code == 200, resp.text
            entries = fn.log_entries()
    [submitted] = api.submitted
    assert submitted.path == "/v1/projects/acme-fleet/locations/europe-west1/builds"
    assert "Authorization" not in submitted.headers
    build = submitted.body
    assert build["tags"] == ["edgefleet", "equipmentparts", "equipmentparts_3_1700000000"]
    assert build["source"]["storageSource"]["object"] == "source/edgefleet-src.tar.gz"
    steps = {s["id"]: s for s in build["steps"]}
    assert set(steps) == {"prepare", "binfmt", "buildx", "build"}
    prepare = steps["prepare"]["args"][1]
    assert "--source gs://acme-models/equipmentparts/equipmentparts_3_1700000000/" in prepare
    assert "--arches x86_64,aarch64" in prepare
    assert "--platform linux/amd64,linux/arm64" in steps["build"]["args"][1]
    repo = "registry.example.internal/acme-fleet/edgefleet/equipmentparts"
    assert f"--tag {repo}:equipmentparts_3_1700000000" in steps["build"]["args"][1]
    assert all(s["name"].endswith(PIN) for s in build["steps"])
    [requested] = [e for e in entries if e.get("event") == "build-requested"]
    assert requested["event_id"] == event_id
    [done] = [e for e in entries if e.get("event") == "build-done"]
    assert done["detail"].startswith("projects/acme-fleet/locations/europe-west1/operations/")

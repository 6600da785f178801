"""Registry bridge: distribution notifications -> GCR-format messages on topic ``gcr``."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
import requests

from edgefleet.core.errors import InvalidInput
from edgefleet.localstack import process
from edgefleet.localstack.registry_bridge import ENVELOPE_MEDIA_TYPE, serve, translate

HOST = "127.0.0.1:5001"
D1 = "sha256:" + "a" * 64
OCI = "application/vnd.oci.image.manifest.v1+json"


def _event(action, **target):  # type: ignore[no-untyped-def]
    return {"id": "x", "action": action, "target": {"repository": "models/app", **target}}


def test_tagged_manifest_push_is_an_insert_with_tag():
    env = {"events": [_event("push", mediaType=OCI, digest=D1, tag="beta")]}
    assert translate(env, HOST) == [
        {"action": "INSERT", "digest": f"{HOST}/models/app@{D1}", "tag": f"{HOST}/models/app:beta"}
    ]


def test_untagged_push_and_index_push():
    index = "application/vnd.oci.image.index.v1+json"
    env = {
        "events": [
            _event("push", mediaType=OCI, digest=D1),
            _event("push", mediaType=index, digest=D1, tag="latest"),
        ]
    }
    assert translate(env, HOST) == [
        {"action": "INSERT", "digest": f"{HOST}/models/app@{D1}"},
        {
            "action": "INSERT",
            "digest": f"{HOST}/models/app@{D1}",
            "tag": f"{HOST}/models/app:latest",
        },
    ]


def test_blobs_pulls_and_mounts_are_ignored():
    env = {
        "events": [
            _event(
                "push", mediaType="application/octet-stream", digest=D1, url="http://h/v2/x/blobs/s"
            ),
            _event("pull", mediaType=OCI, digest=D1, tag="beta"),
            _event("mount", mediaType=OCI, digest=D1),
        ]
    }
    assert translate(env, HOST) == []


def test_manifest_and_tag_deletes():
    env = {"events": [_event("delete", digest=D1), _event("delete", tag="beta")]}
    assert translate(env, HOST) == [
        {"action": "DELETE", "digest": f"{HOST}/models/app@{D1}"},
        {"action": "DELETE", "tag": f"{HOST}/models/app:beta"},
    ]


@pytest.mark.parametrize(
    "envelope",
    [
        None,
        [],
        {"events": "nope"},
        {"events": [42]},
        {"events": [_event("push", mediaType=OCI, digest="sha256:short", tag="x")]},
        {"events": [_event("push", mediaType=OCI, digest=D1, tag="-bad")]},
        {"events": [_event("push", mediaType=OCI, tag="beta")]},
        {"events": [_event("delete")]},
        {"events": [{"action": "push", "target": {"mediaType": OCI, "digest": D1}}]},
        {"events": [_event("push", mediaType=OCI, digest=D1, repository="Bad/Name")]},
    ],
)
def test_malformed_notifications_are_rejected(envelope):
    with pytest.raises(InvalidInput):
        translate(envelope, HOST)


@pytest.fixture
def bridge_server():  # type: ignore[no-untyped-def]
    published: list[bytes] = []
    failing = {"on": False}

    def publish(data: bytes) -> None:
        if failing["on"]:
            raise ConnectionError("pubsub down")
        published.append(data)

    server = serve(HOST, publish)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/events", published, failing
    server.shutdown()
    server.server_close()


def test_bridge_http_edge(bridge_server):
    url, published, failing = bridge_server
    good = json.dumps({"events": [_event("push", mediaType=OCI, digest=D1, tag="beta")]})
    headers = {"Content-Type": ENVELOPE_MEDIA_TYPE}
    assert requests.post(url, data=good, headers={"Content-Type": "text/plain"}).status_code == 415
    assert requests.post(url, data="{not json", headers=headers).status_code == 400
    assert published == []
    resp = requests.post(url, data=good, headers=headers)
    assert resp.status_code == 200 and resp.json() == {"published": 1}
    assert json.loads(published[0])["tag"] == f"{HOST}/models/app:beta"
    failing["on"] = True  # distribution retries a 5xx: at-least-once delivery
    assert requests.post(url, data=good, headers=headers).status_code == 503


# --- end to end: real registry -> bridge -> Pub/Sub emulator --------------------------


def _messages(pubsub, sub: str, want: int) -> list[dict]:  # type: ignore[no-untyped-def]
    got: list[dict] = []

    def enough() -> bool:
        got.extend(json.loads(m.data) for m in pubsub.pull(sub, timeout=2))
        return len(got) >= want

    process.wait_for(enough, timeout=20, what=f"{want} message(s) on {sub}")
    return got


def test_push_and_delete_reach_topic_gcr(registry, pubsub):
    sub = f"gcr-{uuid.uuid4().hex[:8]}"
    pubsub.create_pull_subscription("gcr", sub)
    repo = f"e2e/app-{uuid.uuid4().hex[:6]}"
    name = f"{registry.host}/{repo}"

    digest = registry.push_minimal_image(repo, "beta", salt="one")
    assert _messages(pubsub, sub, 1) == [
        {"action": "INSERT", "digest": f"{name}@{digest}", "tag": f"{name}:beta"}
    ]

    other = registry.push_minimal_image(repo, None, salt="two")
    assert _messages(pubsub, sub, 1) == [{"action": "INSERT", "digest": f"{name}@{other}"}]

    registry.delete_manifest(repo, digest)
    got = _messages(pubsub, sub, 2)
    assert {"action": "DELETE", "digest": f"{name}@{digest}"} in got
    assert {"action": "DELETE", "tag": f"{name}:beta"} in got
    assert all(m["action"] == "DELETE" for m in got)

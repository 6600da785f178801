"""The pure parts of model_done_watcher: marker recognition, version names, event shapes."""

from __future__ import annotations

import base64
import json

import pytest
from cloudevents.http import CloudEvent

from edgefleet.cloud import build, control, model_done
from edgefleet.core.errors import ConfigError, InvalidInput

NOW = 1_764_000_000.0
ARCHES = ("x86_64", "aarch64")


def req(name: str, bucket: str = "models-bucket"):
    return model_done.build_request(model_done.StoredObject(bucket, name), ARCHES, now=NOW)


def test_marker_becomes_build_request() -> None:
    r = req("equipmentparts/equipmentparts_1_1501089026/TRAINER-DONE")
    assert r == build.BuildRequest(
        model="equipmentparts",
        version="equipmentparts_1_1501089026",
        major=1,
        trained_at=1501089026,
        source="gs://models-bucket/equipmentparts/equipmentparts_1_1501089026/",
        arches=ARCHES,
    )
    deep = req("my_model/my_model_12_1700000000/export/saved/TRAINER-DONE")
    assert (deep.model, deep.major, deep.trained_at) == ("my_model", 12, 1700000000)
    assert deep.source == "gs://models-bucket/my_model/my_model_12_1700000000/"


@pytest.mark.parametrize(
    "name",
    [
        "equipmentparts/equipmentparts_1_1501089026/model.tflite",
        "equipmentparts/equipmentparts_1_1501089026/TRAINER-DONE.tmp",
        "equipmentparts/equipmentparts_1_1501089026/XTRAINER-DONE",
    ],
)
def test_other_objects_are_not_markers(name) -> None:
    assert req(name) is None


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("TRAINER-DONE", "MODEL/VERSION"),
        ("equipmentparts/TRAINER-DONE", "MODEL/VERSION"),
        ("equipmentparts//TRAINER-DONE", "MODEL/VERSION"),
        ("equipmentparts/../TRAINER-DONE", "MODEL/VERSION"),
        ("Equipment/Equipment_1_1501089026/TRAINER-DONE", "model name"),
        ("equipmentparts/other_1_1501089026/TRAINER-DONE", "must be named"),
        ("equipmentparts/equipmentparts_x_1501089026/TRAINER-DONE", "must be named"),
        ("equipmentparts/equipmentparts_1/TRAINER-DONE", "must be named"),
        ("equipmentparts/equipmentparts_1_99/TRAINER-DONE", "must be named"),
        ("equipmentparts/equipmentparts_1_999999999/TRAINER-DONE", "plausible"),
        ("equipmentparts/equipmentparts_1_9999999999/TRAINER-DONE", "plausible"),
    ],
)
def test_bad_markers_rejected(name, fragment) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        req(name)


def test_bad_bucket_rejected() -> None:
    with pytest.raises(InvalidInput, match="bucket name"):
        req("m/m_1_1501089026/TRAINER-DONE", bucket="Bad Bucket")


def test_finalized_object_from_eventarc_and_pubsub() -> None:
    eventarc = CloudEvent(
        {"type": control.GCS_FINALIZED, "source": "//storage.googleapis.com/b"},
        {"bucket": "models", "name": "m/m_1_1501089026/TRAINER-DONE"},
    )
    assert control.finalized_object(eventarc) == model_done.StoredObject(
        "models", "m/m_1_1501089026/TRAINER-DONE"
    )
    attrs = {"eventType": "OBJECT_FINALIZE", "bucketId": "models", "objectId": "m/x/TRAINER-DONE"}
    data = {"message": {"data": base64.b64encode(json.dumps({"name": "m"}).encode()).decode(),
                        "attributes": attrs}}  # fmt: skip
    pubsub = CloudEvent({"type": control.PUBSUB_PUBLISHED, "source": "//pubsub"}, data)
    assert control.finalized_object(pubsub) == model_done.StoredObject("models", "m/x/TRAINER-DONE")
    attrs["eventType"] = "OBJECT_DELETE"
    assert control.finalized_object(pubsub) is None
    with pytest.raises(InvalidInput, match="unexpected event type"):
        control.finalized_object(CloudEvent({"type": "x.y", "source": "s"}, {}))
    with pytest.raises(InvalidInput, match="no bucket/object"):
        control.finalized_object(CloudEvent({"type": control.GCS_FINALIZED, "source": "s"}, {}))


def test_builder_from_env_rejects_unknown() -> None:
    with pytest.raises(ConfigError, match="unknown BUILDER"):
        build.builder_from_env({"BUILDER": "docker"})


def test_config_from_env() -> None:
    with pytest.raises(ConfigError, match="DEPLOY_BUCKET"):
        control.TagMonitorConfig.from_env({})
    cfg = control.TagMonitorConfig.from_env(
        {"DEPLOY_BUCKET": "d", "CHANNELS": "beta", "INSECURE_REGISTRIES": "LocalHost:5000"}
    )
    assert cfg.channels == ("beta",) and cfg.insecure_registries == frozenset({"localhost:5000"})
    with pytest.raises(ConfigError, match="ARCHES"):
        control.ModelDoneConfig.from_env({"ARCHES": "sparc"})

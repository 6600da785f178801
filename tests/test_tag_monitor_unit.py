"""The pure parts of tag_monitor: event parsing, which channels an event touches, and the
reconcile decision (which entries a set keeps)."""

from __future__ import annotations

import base64
import json

import pytest

from edgefleet.cloud import control, tag_events
from edgefleet.core.errors import InvalidInput, NameCollision
from edgefleet.core.manifest_set import ManifestEntry

D = "sha256:" + "12" * 32
D2 = "sha256:" + "34" * 32
CHANNELS = ("latest", "alpha", "beta", "stable")


def event(**doc) -> bytes:
    return json.dumps(doc).encode()


def test_parse_insert_with_tag_and_digest() -> None:
    e = tag_events.parse_event(
        event(
            action="INSERT", digest=f"localhost:5000/team/m@{D}", tag="localhost:5000/team/m:beta"
        )
    )
    assert e.action == "INSERT"
    assert e.tag.tag == "beta" and e.digest.digest == D
    assert str(e.repository) == "localhost:5000/team/m"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x00\xff", "not UTF-8 JSON"),
        (b"not json", "not UTF-8 JSON"),
        (b"[]", "not a JSON object"),
        (event(action="UPDATE", tag="localhost:5000/m:beta"), "action"),
        (event(tag="localhost:5000/m:beta"), "action"),
        (event(action="INSERT"), "neither"),
        (event(action="INSERT", tag=""), "neither"),
        (event(action="INSERT", tag=5), "must be a string"),
        (event(action="INSERT", tag="m:beta"), "no registry host"),
        (event(action="INSERT", tag="localhost:5000/m"), "HOST/REPO:TAG"),
        (event(action="INSERT", tag=f"localhost:5000/m:beta@{D}"), "HOST/REPO:TAG"),
        (event(action="DELETE", digest="localhost:5000/m:beta"), "HOST/REPO@DIGEST"),
        (event(action="DELETE", digest="localhost:5000/m@sha256:xyz"), "invalid digest"),
        (
            event(action="INSERT", digest=f"localhost:5000/a@{D}", tag="localhost:5000/b:beta"),
            "two repositories",
        ),
        (b"{" + b" " * tag_events.MAX_EVENT_BYTES + b"}", "over"),
    ],
)
def test_parse_rejects(data, fragment) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        tag_events.parse_event(data)


@pytest.mark.parametrize(
    ("doc", "targets"),
    [
        ({"action": "INSERT", "tag": "localhost:5000/m:beta"}, ["beta"]),
        ({"action": "INSERT", "tag": "localhost:5000/m:m_1_1501089026"}, []),
        ({"action": "INSERT", "digest": f"localhost:5000/m@{D}"}, []),
        ({"action": "DELETE", "tag": "localhost:5000/m:stable"}, ["stable"]),
        ({"action": "DELETE", "tag": "localhost:5000/m:v1"}, []),
        ({"action": "DELETE", "digest": f"localhost:5000/m@{D}"}, list(CHANNELS)),
    ],
)
def test_channel_targets(doc, targets) -> None:
    assert tag_events.channel_targets(tag_events.parse_event(event(**doc)), CHANNELS) == targets


def pod_entry(name: str, image: str, scope: str = "channel") -> ManifestEntry:
    text = (
        f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n"
        f"    - name: c\n      image: {image}\n"
    )
    return ManifestEntry(name, scope, text)


def test_owned_by_matches_repository_exactly() -> None:
    e = pod_entry("m", f"localhost:5000/team/m@{D}")
    assert tag_events.owned_by(e, "localhost:5000/team/m")
    assert not tag_events.owned_by(e, "localhost:5000/team/m2")
    assert not tag_events.owned_by(e, "localhost:5001/team/m")
    assert not tag_events.owned_by(ManifestEntry("x", "channel", "a: ["), "localhost:5000/team/m")
    assert not tag_events.owned_by(ManifestEntry("x", "channel", "- 1"), "localhost:5000/team/m")


def test_plan_entries_replaces_own_keeps_others() -> None:
    mine_old = pod_entry("m", f"localhost:5000/team/m@{D}")
    other = pod_entry("other", f"localhost:5000/team/other@{D}")
    sync = pod_entry("edgefleet-sync", f"localhost:5000/edgefleet/sync@{D}")
    fleet = pod_entry("m", f"localhost:5000/team/m@{D}", scope="all")
    mine_new = pod_entry("m", f"localhost:5000/team/m@{D2}")
    current = (mine_old, other, sync, fleet)
    planned = tag_events.plan_entries(current, "localhost:5000/team/m", mine_new)
    assert set(planned) == {other, sync, fleet, mine_new}
    # The tag is gone: only this repository's channel entries leave.
    removed = tag_events.plan_entries(current, "localhost:5000/team/m", None)
    assert set(removed) == {other, sync, fleet}
    # Another repository with the same pod name never takes the name over.
    clash = pod_entry("other", f"localhost:5000/elsewhere/other@{D2}")
    with pytest.raises(NameCollision, match=r"'other' for localhost:5000/elsewhere/other .*"
                       r"by localhost:5000/team/other; .*rename one repository"):  # fmt: skip
        tag_events.plan_entries(current, "localhost:5000/elsewhere/other", clash)
    # ... but its tag going away is fine, and a fleet-wide pod of that name is no clash.
    assert set(tag_events.plan_entries(current, "localhost:5000/elsewhere/other", None)) == set(
        current
    )
    fleet_named = pod_entry("m", f"localhost:5000/elsewhere/m@{D2}")
    assert fleet_named in tag_events.plan_entries(
        (fleet,), "localhost:5000/elsewhere/m", fleet_named
    )


# -- CloudEvent envelopes -----------------------------------------------------------------


def envelope(data: bytes | str, **attributes: str) -> dict:
    raw = data if isinstance(data, str) else base64.b64encode(data).decode()
    return {"message": {"data": raw, "attributes": attributes, "messageId": "7"}}


def test_pubsub_message_decodes() -> None:
    m = control.pubsub_message(envelope(b'{"a": 1}', k="v"))
    assert (m.data, m.attributes, m.message_id) == (b'{"a": 1}', {"k": "v"}, "7")
    assert control.pubsub_message(json.dumps(envelope(b"x"))).data == b"x"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (None, "no Pub/Sub 'message'"),
        ({"message": "x"}, "no Pub/Sub 'message'"),
        ("{not json", "not JSON"),
        ({"message": {"data": 5}}, "not a base64 string"),
        (envelope("%%%not-base64"), "not base64"),
        ({"message": {"data": "", "attributes": {"a": 1}}}, "attributes"),
        (envelope("A" * (control.MAX_MESSAGE_BYTES * 2)), "over"),
    ],
)
def test_pubsub_message_rejects(data, fragment) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        control.pubsub_message(data)

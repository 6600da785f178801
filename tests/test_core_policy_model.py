"""The allowlist's type walk covers the kubernetes V1Pod model: whatever a device's own
check accepts (``policy.check_manifest(..., model_check=False)``: strict reading, the walk,
the policy), the V1Pod model accepts too.

Why it matters: devices run only that check by default (``V1POD_CHECK=off``,
docs/device.md); the model check runs where sets are made (edgefleet.cloud.render) and on
devices that opt in. So every manifest the model would refuse must be refused by the walk.
The corpus is systematic, not random: every field of the two pods edgefleet renders (the
model server's and the sync pod's) deleted or replaced by values of every JSON type, and
every allowlisted field they lack (nested ones too) added with such values.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from edgefleet.cloud import render
from edgefleet.core import layout, policy, refs
from edgefleet.core.errors import InvalidInput

DIGEST = "sha256:" + "ef" * 32
ALLOW = policy.Policy(allowed_registries=("localhost:5000",))
DELETE = object()
# Values of every JSON type, in and out of the ranges and grammars the fields have.
VALUES: list[Any] = [None, True, False, 0, -1, 1, 70000, 1.5, "", "x", "1Gi", "-1", "http",
                     [], {}, [{}], ["x"], {"a": "b"}, {"a": 1}]  # fmt: skip
SAMPLE = {policy.STR: "x", policy.INT: 1, policy.BOOL: False, policy.PORT: 8080,
          policy.HOST_PORT: 0, policy.QTY: "1"}  # fmt: skip


def rendered_pods() -> list[tuple[str, dict[str, Any], policy.Policy, str]]:
    templates = render.Templates([render.PackagedTemplates()])
    repo = refs.parse("localhost:5000/team/equipmentparts-aarch64")
    workload = render.render_workload(templates, repo, "beta", "aarch64", DIGEST, ALLOW)
    sync = render.SyncPodSpec(
        image=refs.parse(f"localhost:5000/edgefleet/sync@{DIGEST}"),
        bucket="deploy",
        arch="aarch64",
        channel="stable",
        manifest_dir="/opt/device/pods",
        state_dir="/var/lib/edgefleet",
        poll_seconds=60,
        runtime="podman",
        allowed_registries="localhost:5000",
        trusted_keys="/etc/edgefleet/keys/a.pub",
    )
    sync_text = render.render_sync_pod(templates, sync)
    return [
        ("model-server", json.loads(_json(workload.entry.yaml)), ALLOW, workload.entry.name),
        ("sync-pod", json.loads(_json(sync_text)), sync.policy(), layout.SYNC_POD_NAME),
    ]


def _json(text: str) -> str:
    return policy.canonical(policy.load_pod(text, model_check=False)).decode()


def present_paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        yield (*prefix, key)
        yield from present_paths(child, (*prefix, key))


def absent_paths(
    node: Any, schema: Any, prefix: tuple[Any, ...] = ()
) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every allowlisted field ``node`` lacks, nested ones too (through a missing parent)."""
    if isinstance(schema, dict):
        node = node if isinstance(node, dict) else {}
        for key, sub in schema.items():
            if key not in node:
                yield (*prefix, key), sub
            yield from absent_paths(node.get(key), sub, (*prefix, key))
    elif isinstance(schema, tuple) and schema[0] == "list":
        for i, item in enumerate(node if isinstance(node, list) and node else [None]):
            yield from absent_paths(item, schema[1], (*prefix, i))
    elif isinstance(schema, tuple) and schema[0] == "map":
        yield from absent_paths(None, schema[1], (*prefix, "a"))


def sample(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {}
    if isinstance(schema, tuple) and schema[0] == "list":
        return [sample(schema[1])]
    if isinstance(schema, tuple) and schema[0] == "map":
        return {"a": sample(schema[1])}
    return SAMPLE[schema[0] if isinstance(schema, tuple) else schema]


def mutated(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    for key, nxt in itertools.pairwise(path):
        if isinstance(node, list):
            while len(node) <= key:
                node.append({} if isinstance(nxt, str) else [])
        elif key not in node:
            node[key] = [] if isinstance(nxt, int) else {}
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    elif isinstance(node, list) and path[-1] >= len(node):
        node.append(value)
    else:
        node[path[-1]] = value
    return out


def corpus(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in present_paths(doc):
        for value in (DELETE, *VALUES):
            label = "delete" if value is DELETE else json.dumps(value)
            yield f"{'.'.join(map(str, path))} = {label}", mutated(doc, path, value)
    for path, schema in absent_paths(doc, policy.POD_FIELDS):
        for value in (sample(schema), *VALUES):
            yield f"+{'.'.join(map(str, path))} = {json.dumps(value)}", mutated(doc, path, value)


def device_accepts(text: str, pod_policy: policy.Policy, name: str) -> bool:
    try:
        policy.check_manifest(text, pod_policy, expected_name=name, model_check=False)
    except InvalidInput:
        return False
    return True


@pytest.mark.parametrize(
    ("kind", "doc", "pod_policy", "name"),
    rendered_pods(),
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_whatever_the_walk_accepts_the_v1pod_model_accepts_too(kind, doc, pod_policy, name) -> None:
    assert policy.model_errors({kind: json.dumps(doc)})[kind] is None, "the rendered pod is valid"
    assert device_accepts(json.dumps(doc), pod_policy, name)
    gaps, model_refused, accepted, total = [], 0, 0, 0
    for label, case in corpus(doc):
        text = json.dumps(case)
        total += 1
        verdict = policy.model_errors({label: text})[label]
        model_refused += verdict is not None
        if device_accepts(text, pod_policy, name):
            accepted += 1
            if verdict is not None:
                gaps.append(f"{label}: {verdict[:160]}")
    assert gaps == [], f"{len(gaps)} manifests the walk accepts and the V1Pod model refuses"
    # The corpus reaches both sides of the question: it could have found a gap.
    assert total > 1500 and model_refused > total // 2 and accepted > 50, (
        total,
        model_refused,
        accepted,
    )

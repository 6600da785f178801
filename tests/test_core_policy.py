"""edgefleet.core.policy: the fleet-safety check (v1 Pod model, pinning, registries, hosts)."""

from __future__ import annotations

import copy

import pytest
import yaml

from edgefleet.core import layout, policy
from edgefleet.core.errors import InvalidInput, PolicyViolation

DIGEST = "sha256:" + "cd" * 32
IMAGE = f"localhost:5000/team/model@{DIGEST}"


def pod(**spec_extra) -> dict:
    base = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "model"},
        "spec": {
            "containers": [
                {
                    "name": "server",
                    "image": IMAGE,
                    "resources": {"limits": {"cpu": "1", "memory": "256Mi"}},
                }
            ]
        },
    }
    base["spec"].update(spec_extra)
    return base


def text(doc: dict) -> str:
    return yaml.safe_dump(doc)


def violations_of(doc: dict, p: policy.Policy | None = None) -> list[str]:
    with pytest.raises(PolicyViolation) as info:
        policy.check_manifest(text(doc), p or policy.Policy())
    return info.value.violations


def test_good_pod_passes_and_returns_dict() -> None:
    out = policy.check_manifest(text(pod()), policy.Policy(), expected_name="model")
    assert out["metadata"]["name"] == "model"
    assert policy.pod_images(out) == [IMAGE]


def with_container(**changes) -> dict:
    doc = pod()
    doc["spec"]["containers"][0].update(changes)
    return doc


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (with_container(image="localhost:5000/team/model:beta"), "not pinned by sha256"),
        (with_container(image="model"), "no registry host"),
        (with_container(securityContext={"privileged": True}), "privileged is not allowed"),
        (
            with_container(securityContext={"capabilities": {"add": ["sys_admin"]}}),
            "capabilities",
        ),
        (with_container(resources={"limits": {"cpu": "1"}}), "limits.memory missing"),
        (with_container(resources={}), "limits.cpu/memory missing"),
        (pod(hostPID=True), "hostPID"),
        (pod(hostIPC=True), "hostIPC"),
        (pod(volumes=[{"name": "root", "hostPath": {"path": "/"}}]), "hostPath / is not allowed"),
        (
            pod(volumes=[{"name": "x", "hostPath": {"path": "/var/spool/edgefleet/../../etc"}}]),
            "is not allowed",
        ),
        (
            pod(volumes=[{"name": "x", "hostPath": {"path": "/var/spool/edgefleetx"}}]),
            "is not allowed",
        ),
        (pod(volumes=[{"name": "x", "hostPath": {"path": "/opt/device/pods"}}]), "not allowed"),
        (pod(containers=[]), "spec.containers is empty"),
    ],
)
def test_violations(doc, fragment) -> None:
    found = violations_of(doc)
    assert any(fragment in v for v in found), found


def test_all_violations_listed_together() -> None:
    doc = with_container(image="localhost:5000/m:beta", securityContext={"privileged": True})
    doc["spec"]["hostPID"] = True
    assert len(violations_of(doc)) == 3


def test_workload_host_paths_allowed_sync_paths_only_for_sync_pod() -> None:
    spool = {"name": "spool", "hostPath": {"path": "/var/spool/edgefleet/out"}}
    checked = policy.check_manifest(text(pod(volumes=[spool])), policy.Policy())
    assert checked["spec"]["volumes"] == [spool]
    manifests = {"name": "m", "hostPath": {"path": "/opt/device/pods"}}
    workload = pod(volumes=[manifests])
    assert any("/opt/device/pods" in v and "not allowed" in v for v in violations_of(workload))
    sync = copy.deepcopy(workload)
    sync["metadata"]["name"] = layout.SYNC_POD_NAME
    checked = policy.check_manifest(text(sync), policy.Policy())
    assert checked["metadata"]["name"] == layout.SYNC_POD_NAME
    assert checked["spec"]["volumes"] == [manifests]


def test_registry_allowlist() -> None:
    strict = policy.Policy(allowed_registries=("localhost:5000/other",))
    assert any("not allowed" in v for v in violations_of(pod(), strict))
    policy.check_manifest(text(pod()), policy.Policy(allowed_registries=("localhost:5000/team",)))
    none = policy.Policy(allowed_registries=())
    assert any("allowed: none" in v for v in violations_of(pod(), none))


def test_init_containers_checked_but_need_no_limits() -> None:
    doc = pod(initContainers=[{"name": "init", "image": IMAGE}])
    policy.check_manifest(text(doc), policy.Policy())
    doc["spec"]["initContainers"][0]["image"] = "localhost:5000/x:latest"
    assert any("initContainers[init]" in v for v in violations_of(doc))


def test_expected_name() -> None:
    with pytest.raises(PolicyViolation, match="must be 'other'"):
        policy.check_manifest(text(pod()), policy.Policy(), expected_name="other")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("a: [", "not valid YAML"),
        ("", "exactly one YAML document"),
        (text(pod()) + "---\n" + text(pod()), "exactly one YAML document"),
        ("- 1\n", "not a YAML mapping"),
        (text(pod() | {"kind": "Deployment"}), "only v1 Pods"),
        (text(pod() | {"apiVersion": "apps/v1"}), "only v1 Pods"),
        (text(pod() | {"spec": {"containers": "nope"}}), "not a valid v1 Pod"),
        (text(pod() | {"spec": {"containers": [{"image": IMAGE}]}}), "not a valid v1 Pod"),
        ("x: " + "a" * (policy.MAX_MANIFEST_BYTES + 1), "over"),
    ],
)
def test_load_pod_rejects(data, fragment) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        policy.check_manifest(data, policy.Policy())


def test_parse_registries() -> None:
    assert policy.parse_registries(None) is None
    assert policy.parse_registries(" ") is None
    assert policy.parse_registries("a:5000/, b.example/team") == ("a:5000", "b.example/team")


def test_device_policy_paths() -> None:
    p = policy.Policy.for_device(("localhost:5000",), ("/srv/pods",))
    sync = pod(volumes=[{"name": "m", "hostPath": {"path": "/srv/pods/x"}}])
    sync["metadata"]["name"] = layout.SYNC_POD_NAME
    policy.check_manifest(text(sync), p)
    sync["spec"]["volumes"][0]["hostPath"]["path"] = "/opt/device/pods"
    with pytest.raises(PolicyViolation):
        policy.check_manifest(text(sync), p)

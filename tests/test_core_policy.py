"""edgefleet.core.policy: the fleet-safety check (v1 Pod model, pinning, registries, hosts)."""

from __future__ import annotations

import copy

import pytest
import yaml

from edgefleet.core import layout, policy
from edgefleet.core.errors import InvalidInput, PolicyViolation

DIGEST = "sha256:" + "cd" * 32
IMAGE = f"localhost:5000/team/model@{DIGEST}"


SAFE = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
ALLOW = policy.Policy(allowed_registries=("localhost:5000",))


def pod(**spec_extra) -> dict:
    """A pod the allowlist accepts (drop ALL, RuntimeDefault seccomp, limits, pinned)."""
    base = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "model"},
        "spec": {
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "server",
                    "image": IMAGE,
                    "resources": {"limits": {"cpu": "1", "memory": "256Mi"}},
                    "securityContext": copy.deepcopy(SAFE),
                }
            ],
        },
    }
    base["spec"].update(spec_extra)
    return base


def text(doc: dict) -> str:
    return yaml.safe_dump(doc)


def violations_of(doc: dict, p: policy.Policy | None = None) -> list[str]:
    with pytest.raises(PolicyViolation) as info:
        policy.check_manifest(text(doc), p or ALLOW)
    return info.value.violations


def test_good_pod_passes_and_returns_dict() -> None:
    out = policy.check_manifest(text(pod()), ALLOW, expected_name="model")
    assert out["metadata"]["name"] == "model"
    assert policy.pod_images(out) == [IMAGE]


def with_container(**changes) -> dict:
    doc = pod()
    c = doc["spec"]["containers"][0]
    c["securityContext"].update(changes.pop("securityContext", {}))
    c.update(changes)
    return doc


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (with_container(image="localhost:5000/team/model:beta"), "not pinned by sha256"),
        (with_container(image="model"), "no registry host"),
        (with_container(securityContext={"privileged": True}), "privileged is not allowed"),
        (
            with_container(
                securityContext={"capabilities": {"drop": ["ALL"], "add": ["sys_admin"]}}
            ),
            "capabilities",
        ),
        (with_container(resources={"limits": {"cpu": "1"}}), "limits.memory missing"),
        (with_container(resources={}), "limits.cpu/memory missing"),
        (pod(hostPID=True), "hostPID"),
        (pod(hostIPC=True), "hostIPC"),
        (pod(volumes=[{"name": "root", "hostPath": {"path": "/"}}]), "clean absolute path"),
        (
            pod(volumes=[{"name": "x", "hostPath": {"path": "/var/spool/edgefleet/../../etc"}}]),
            "clean absolute path",
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
    assert len(violations_of(doc)) == 3  # unpinned, privileged, hostPID


def test_workload_host_paths_allowed_sync_paths_only_for_sync_pod() -> None:
    spool = {"name": "spool", "hostPath": {"path": "/var/spool/edgefleet/model",
                                           "type": "Directory"}}  # fmt: skip
    checked = policy.check_manifest(text(pod(volumes=[spool])), ALLOW)
    assert checked["spec"]["volumes"] == [spool]
    manifests = {"name": "m", "hostPath": {"path": "/opt/device", "type": "DirectoryOrCreate"}}
    workload = pod(volumes=[manifests])
    assert any("/opt/device" in v and "not allowed" in v for v in violations_of(workload))
    sync = copy.deepcopy(workload)
    sync["metadata"]["name"] = layout.SYNC_POD_NAME
    checked = policy.check_manifest(text(sync), ALLOW)
    assert checked["metadata"]["name"] == layout.SYNC_POD_NAME
    assert checked["spec"]["volumes"] == [manifests]


def test_registry_allowlist() -> None:
    strict = policy.Policy(allowed_registries=("localhost:5000/other",))
    assert any("not allowed" in v for v in violations_of(pod(), strict))
    policy.check_manifest(text(pod()), policy.Policy(allowed_registries=("localhost:5000/team",)))
    none = policy.Policy()  # the default allows no registry
    assert any("allowed: none" in v for v in violations_of(pod(), none))


def test_init_containers_checked_but_need_no_limits() -> None:
    doc = pod(initContainers=[{"name": "init", "image": IMAGE, "securityContext": SAFE}])
    policy.check_manifest(text(doc), ALLOW)
    doc["spec"]["initContainers"][0]["image"] = "localhost:5000/x:latest"
    assert any("initContainers[init]" in v for v in violations_of(doc))


def test_expected_name() -> None:
    with pytest.raises(PolicyViolation, match="must be 'other'"):
        policy.check_manifest(text(pod()), ALLOW, expected_name="other")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("a: [", "not valid YAML"),
        ("", "empty"),
        (text(pod()) + "---\n" + text(pod()), "more than one YAML document"),
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
        policy.check_manifest(data, ALLOW)


def _limits(**values) -> dict:
    return with_container(resources={"limits": {"cpu": "1", "memory": "256Mi", **values}})


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (_limits(cpu="abc"), "limits['cpu'] must be a quantity"),
        (_limits(memory="64MiB"), "limits['memory'] must be a quantity"),
        (_limits(cpu="-1"), "limits['cpu'] must be a quantity"),
        (_limits(memory=-5), "limits['memory'] must be a quantity"),
        (_limits(memory=1000), "limits['memory'] must be a quantity, as text"),
        (with_container(ports=[{"containerPort": 70000}]), "containerPort must be a port number"),
        (with_container(ports=[{"containerPort": 0}]), "containerPort must be a port number"),
        (with_container(ports=[{"containerPort": 80, "hostPort": 65536}]), "hostPort must be"),
        (with_container(readinessProbe={"tcpSocket": {"port": 0}}), "port must be a port number"),
        (with_container(readinessProbe={"httpGet": {"path": "/"}}), "httpGet.port is required"),
        (with_container(readinessProbe={"tcpSocket": {}}), "tcpSocket.port is required"),
        (pod(securityContext={"seccompProfile": {}}), "seccompProfile.type is required"),
        (
            with_container(securityContext={"seccompProfile": {}}),
            "securityContext.seccompProfile.type is required",
        ),
        (
            pod(volumes=[{"name": "v", "hostPath": {"type": "Directory"}}]),
            "hostPath.path is required",
        ),
    ],
)
def test_the_type_walk_refuses_values_kubelet_would_refuse(doc, fragment) -> None:
    """Quantities and port numbers out of their grammar and range, and required fields of
    nested API types, are refused in-process, before any model check or device: kubelet
    or podman would refuse them only when playing the pod."""
    _, types = policy.shape_problems(doc)
    assert any(fragment in t for t in types), types
    with pytest.raises(InvalidInput, match="not a valid v1 Pod"):
        policy.load_pod(text(doc), model_check=False)


@pytest.mark.parametrize(
    "doc",
    [
        _limits(cpu="500m", memory="64Mi"),
        _limits(cpu="0.5", memory="1e9"),
        _limits(cpu="+2", memory="1G"),
        _limits(cpu=".5", memory="128974848"),
        _limits(cpu="1", memory="129e6"),
        _limits(cpu="250u", memory="5.", **{"ephemeral-storage": "1Ei"}),
        with_container(ports=[{"containerPort": 65535, "hostPort": 0}]),
        with_container(readinessProbe={"tcpSocket": {"port": "http"}}),
        with_container(readinessProbe={"httpGet": {"port": 5000}}),
    ],
)
def test_the_type_walk_takes_every_valid_form(doc) -> None:
    assert policy.shape_problems(doc) == ([], [])


def test_parse_registries() -> None:
    assert policy.parse_registries(None) == ()  # unset allows none (fail closed)
    assert policy.parse_registries(" ") == ()
    assert policy.parse_registries("localhost:5000/, b.example/team") == (
        "localhost:5000",
        "b.example/team",
    )


def test_device_policy_paths() -> None:
    p = policy.Policy.for_device(("localhost:5000",), ("/srv/pods",))
    vol = {"name": "m", "hostPath": {"path": "/srv/pods", "type": "Directory"}}
    sync = pod(volumes=[vol])
    sync["metadata"]["name"] = layout.SYNC_POD_NAME
    policy.check_manifest(text(sync), p)
    for path in ("/opt/device", "/srv/pods/x"):  # exactly the device's folders, no more
        sync["spec"]["volumes"][0]["hostPath"]["path"] = path
        with pytest.raises(PolicyViolation):
            policy.check_manifest(text(sync), p)

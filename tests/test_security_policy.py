"""Issue 12, policy bypasses: every manifest below passed the old denylist (checked on
PyYAML's reading); the allowlist on the strict reading refuses each, and what it accepts is
re-encoded as canonical JSON, the bytes the runtime reads."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from support.security import DIGEST, IMAGE, POLICY, REPO, good_pod

from edgefleet.core import layout, policy, refs, strict_yaml
from edgefleet.core.errors import ConfigError, InvalidInput, PolicyViolation


def refused(text: str | bytes, p: policy.Policy = POLICY) -> str:
    with pytest.raises(InvalidInput) as info:
        policy.check_manifest(text, p, model_check=False)
    return str(info.value)


def changed(path: str, value: Any) -> str:
    """``good_pod()`` with ``value`` set at the dotted ``path`` (``[0]`` for list items)."""
    doc = good_pod()
    target: Any = doc
    parts = path.replace("[0]", ".0").split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
    target[parts[-1]] = value
    return yaml.safe_dump(doc)


def test_the_good_pod_passes_and_its_canonical_json_is_what_was_checked() -> None:
    pod = policy.check_manifest(yaml.safe_dump(good_pod()), POLICY, expected_name="model")
    data = policy.canonical(pod)
    assert json.loads(data) == good_pod() == pod
    # The canonical bytes pass the same check (a device may re-read what it wrote).
    assert policy.check_manifest(data, POLICY) == pod
    assert data == policy.canonical(policy.check_manifest(data, POLICY))


C = "spec.containers[0]"


BYPASSES = [
    ("hostNetwork", changed("spec.hostNetwork", True), "hostNetwork is not allowed"),
    (
        "cap-net-admin",
        changed(f"{C}.securityContext.capabilities", {"drop": ["ALL"], "add": ["NET_ADMIN"]}),
        "not allowed",
    ),
    (
        "cap-sys-time",
        changed(f"{C}.securityContext.capabilities", {"drop": ["ALL"], "add": ["SYS_TIME"]}),
        "not allowed",
    ),
    (
        "cap-bpf",
        changed(f"{C}.securityContext.capabilities", {"drop": ["ALL"], "add": ["BPF"]}),
        "not allowed",
    ),
    (
        "cap-prefixed",
        changed(f"{C}.securityContext.capabilities", {"drop": ["ALL"], "add": ["CAP_SYS_ADMIN"]}),
        "must be written like",
    ),
    ("no-drop-all", changed(f"{C}.securityContext.capabilities", {}), "drop must include ALL"),
    ("pod-run-as-root", changed("spec.securityContext.runAsUser", 0), "runAsUser 0"),
    (
        "seccomp-unconfined",
        changed("spec.securityContext.seccompProfile", {"type": "Unconfined"}),
        "only RuntimeDefault",
    ),
    (
        "sysctls",
        changed("spec.securityContext.sysctls", [{"name": "kernel.shm_rmid_forced", "value": "1"}]),
        "not an allowed field",
    ),
    (
        "procmount-unmasked",
        changed(f"{C}.securityContext.procMount", "Unmasked"),
        "procMount",
    ),
    (
        "ephemeral-containers",
        changed("spec.ephemeralContainers", [{"name": "x", "image": IMAGE}]),
        "not an allowed field",
    ),
    (
        "volume-nfs",
        changed("spec.volumes", [{"name": "n", "nfs": {"server": "a", "path": "/"}}]),
        "not an allowed field",
    ),
    (
        "volume-iscsi",
        changed("spec.volumes", [{"name": "i", "iscsi": {"targetPortal": "a"}}]),
        "not an allowed field",
    ),
    (
        "volume-secret",
        changed("spec.volumes", [{"name": "s", "secret": {"secretName": "a"}}]),
        "not an allowed field",
    ),
    (
        "volume-pvc",
        changed("spec.volumes", [{"name": "p", "persistentVolumeClaim": {"claimName": "a"}}]),
        "not an allowed field",
    ),
    (
        "spool-root-symlink-plant",
        changed(
            "spec.volumes",
            [
                {
                    "name": "spool",
                    "hostPath": {"path": "/var/spool/edgefleet", "type": "Directory"},
                }
            ],
        ),
        "is not allowed",
    ),
    (
        "other-pods-spool-dir",
        changed(
            "spec.volumes",
            [
                {
                    "name": "spool",
                    "hostPath": {"path": "/var/spool/edgefleet/other", "type": "Directory"},
                }
            ],
        ),
        "is not allowed",
    ),
    (
        "spool-dir-or-create",
        changed(
            "spec.volumes",
            [
                {
                    "name": "spool",
                    "hostPath": {
                        "path": "/var/spool/edgefleet/model",
                        "type": "DirectoryOrCreate",
                    },
                }
            ],
        ),
        "must have type Directory",
    ),
    ("case-Privileged", changed(f"{C}.securityContext.Privileged", True), "only in case"),
    ("case-HostPID", changed("spec.HostPID", True), "only in case"),
    (
        "case-HostPath",
        changed(
            "spec.volumes", [{"name": "spool", "HostPath": {"path": "/", "type": "Directory"}}]
        ),
        "only in case",
    ),
    (
        "privileged",
        changed(f"{C}.securityContext.privileged", True),
        "privileged is not allowed",
    ),
    (
        "hostPort-on-all-interfaces",
        changed(f"{C}.ports[0].hostIP", "0.0.0.0"),
        "hostIP 127.0.0.1",
    ),
    (
        "probe-host-ssrf",
        changed(f"{C}.readinessProbe", {"httpGet": {"host": "10.0.0.1", "port": 80}}),
        "not an allowed field",
    ),
    ("name-trailing-newline", changed("metadata.name", "model\n"), "invalid name"),
    (
        "env-from-secret",
        changed(f"{C}.env", [{"name": "A", "valueFrom": {"secretKeyRef": {}}}]),
        "not an allowed field",
    ),
    (
        "subpath",
        changed(f"{C}.volumeMounts", [{"name": "spool", "mountPath": "/x", "subPath": "../.."}]),
        "not an allowed field",
    ),
]


@pytest.mark.parametrize(
    ("attack", "text", "needle"), [pytest.param(*case, id=case[0]) for case in BYPASSES]
)
def test_policy_bypass_is_refused(attack: str, text: str, needle: str) -> None:
    assert needle in refused(text), attack


MERGE_KEY = """
apiVersion: v1
kind: Pod
metadata: {name: model}
base: &base
  privileged: true
spec:
  containers:
    - name: server
      image: IMAGE
      securityContext:
        <<: *base
        allowPrivilegeEscalation: false
"""


YAML_TRICKS = [
    ("yaml-merge-key", MERGE_KEY.replace("IMAGE", IMAGE), "anchors"),
    ("yaml-merge-key-inline", "a: 1\n<<: {b: 2}\n", "merge keys"),
    ("yaml-quoted-merge-key", 'a: 1\n"<<": {b: 2}\n', "merge keys"),
    ("yaml-alias", "a: &x [1]\nb: *x\n", "anchors"),
    ("yaml-duplicate-key", "kind: Pod\nkind: Deployment\n", "duplicate key"),
    ("yaml-11-boolean", "apiVersion: v1\nkind: Pod\nx: yes\n", "reads differently"),
    ("yaml-octal", "a: 0o17\n", "reads differently"),
    ("yaml-explicit-tag", "a: !!binary aGk=\n", "explicit tags"),
    ("yaml-python-tag", "a: !!python/object:os.system [id]\n", "explicit tags"),
    ("yaml-two-documents", "a: 1\n---\nb: 2\n", "more than one"),
    ("yaml-deep-nesting", "[" * 200_000, "nested deeper|nesting depth"),
    ("yaml-lone-surrogate", 'a: "\\ud800"\n', "lone surrogate|invalid Unicode"),
    ("yaml-huge", "a: " + "x" * (policy.MAX_MANIFEST_BYTES + 1), "over"),
    ("not-utf8", b"a: \xff\n", "not UTF-8"),
]


@pytest.mark.parametrize(
    ("attack", "text", "needle"), [pytest.param(*case, id=case[0]) for case in YAML_TRICKS]
)
def test_yaml_trick_is_refused(attack: str, text: str | bytes, needle: str) -> None:
    """``a|b``: either wording (libyaml refuses some tricks itself, in its own words)."""
    message = refused(text)
    assert any(n in message for n in needle.split("|")), (attack, message)


def test_merge_key_is_what_go_yaml_would_apply() -> None:
    """The old reading: PyYAML applies the merge too, but a reader that does not (or a
    denylist looking at another key) sees no privileged flag; strict reading refuses it."""
    merged = yaml.safe_load(MERGE_KEY.replace("IMAGE", IMAGE))
    assert merged["spec"]["containers"][0]["securityContext"]["privileged"] is True
    with pytest.raises(strict_yaml.StrictYAMLError):
        strict_yaml.load(MERGE_KEY)


def test_sync_pod_allowance_is_exact() -> None:
    """The sync pod may use the host network and its device's folders, nothing more."""
    p = policy.Policy.for_device((REPO,), ("/srv/pods", "/srv/state"))
    doc = good_pod()
    doc["metadata"]["name"] = layout.SYNC_POD_NAME
    doc["spec"]["hostNetwork"] = True
    doc["spec"]["volumes"] = [
        {"name": "m", "hostPath": {"path": "/srv/pods", "type": "DirectoryOrCreate"}}
    ]
    doc["spec"]["containers"][0]["volumeMounts"] = [{"name": "m", "mountPath": "/srv/pods"}]
    policy.check_manifest(yaml.safe_dump(doc), p, model_check=False)
    for path in ("/srv/pods/sub", "/srv", "/etc"):
        bad = copy.deepcopy(doc)
        bad["spec"]["volumes"][0]["hostPath"]["path"] = path
        assert "not allowed" in refused(yaml.safe_dump(bad), p)
    bad = copy.deepcopy(doc)
    bad["spec"]["containers"][0]["securityContext"]["privileged"] = True
    assert "privileged" in refused(yaml.safe_dump(bad), p)


@pytest.mark.parametrize(
    "entry", ["europe-docker.pkg.dev", "europe-docker.pkg.dev/project", "gcr.io", "ghcr.io"]
)
def test_allowed_registries_must_name_a_repository_path(entry: str) -> None:
    with pytest.raises(ConfigError, match="admits every repository"):
        policy.parse_registries(entry)


def test_allowed_registries_host_prefix_does_not_admit_every_project() -> None:
    allowed = policy.parse_registries("europe-docker.pkg.dev/fleet/models, 127.0.0.1:5000")
    ours = refs.parse("europe-docker.pkg.dev/fleet/models/m@" + DIGEST)
    theirs = refs.parse("europe-docker.pkg.dev/attacker/x/m@" + DIGEST)
    assert refs.registry_allows(ours, allowed) and not refs.registry_allows(theirs, allowed)
    assert policy.parse_registries("") == () == policy.parse_registries(None)


def test_empty_allowed_registries_allows_none() -> None:
    assert "allowed: none" in refused(yaml.safe_dump(good_pod()), policy.Policy())


def test_channel_and_pod_names_with_trailing_newline_are_refused() -> None:
    for check in (layout.check_channel, layout.check_name):
        with pytest.raises(InvalidInput):
            check("beta\n")
    with pytest.raises(InvalidInput):
        refs.check_tag("beta\n")


def test_violations_are_listed_together() -> None:
    doc = good_pod()
    doc["spec"]["hostPID"] = True
    doc["spec"]["containers"][0]["securityContext"]["privileged"] = True
    with pytest.raises(PolicyViolation) as info:
        policy.check_manifest(yaml.safe_dump(doc), POLICY, model_check=False)
    assert len(info.value.violations) == 2

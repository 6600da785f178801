"""edgefleet.cloud.render and .platforms: template choice, rendering, platform resolution."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from edgefleet.cloud import platforms, render
from edgefleet.core import layout, policy, refs
from edgefleet.core.errors import InvalidInput, PolicyViolation

ALLOW = policy.Policy(allowed_registries=("localhost:5000",))
DIGEST = "sha256:" + "ef" * 32


class DictTemplates:
    """Templates held in memory (an operator's bucket, in miniature)."""

    label = "dict"

    def __init__(self, **texts: str) -> None:
        self.texts = {k.replace("_", "-"): v for k, v in texts.items()}

    def load(self, name: str) -> str | None:
        return self.texts.get(name)


def packaged() -> render.Templates:
    return render.Templates([render.PackagedTemplates()])


# -- template choice and names ------------------------------------------------------------


@pytest.mark.parametrize(
    ("repository", "names"),
    [
        ("team/equipmentparts", ("equipmentparts", "model-server")),
        ("team/equipmentparts-aarch64", ("equipmentparts", "model-server")),
        ("equipmentparts-amd64", ("equipmentparts", "model-server")),
        ("team/model-server", ("model-server",)),
        ("team/model-server-armv7l", ("model-server",)),
        ("team/sync-pod", ("model-server",)),  # reserved: needs bootstrap's context
        ("team/my_model", ("model-server",)),  # not a template name
        ("team/x86_64", ("model-server",)),
    ],
)
def test_template_names(repository, names) -> None:
    assert render.template_names(repository) == names


@pytest.mark.parametrize(
    ("repository", "name"),
    [
        ("team/equipmentparts-x86_64", "equipmentparts"),
        ("team/My.Model_v2", "my-model-v2"),
        ("a/" + "b" * 80, "b" * 63),
    ],
)
def test_pod_name(repository, name) -> None:
    assert render.pod_name(repository) == name


def test_pod_name_needs_a_label() -> None:
    with pytest.raises(InvalidInput, match="no valid pod name"):
        render.pod_name("team/__")


# -- rendering ----------------------------------------------------------------------------


def test_packaged_model_server_renders_a_valid_pinned_pod() -> None:
    repo = refs.parse("localhost:5000/team/equipmentparts-aarch64")
    out = render.render_workload(
        packaged(),
        repo,
        "beta",
        "aarch64",
        DIGEST,
        policy.Policy(allowed_registries=("localhost:5000",)),
    )
    assert out.template == "model-server"
    assert out.entry.name == "equipmentparts"
    assert out.entry.scope == "channel"
    pod = yaml.safe_load(out.entry.yaml)
    c = pod["spec"]["containers"][0]
    assert c["image"] == f"localhost:5000/team/equipmentparts-aarch64@{DIGEST}"
    assert "hostNetwork" not in pod["spec"]  # published on loopback via hostPort
    assert c["ports"][0]["containerPort"] == 5000
    assert {e["name"]: e["value"] for e in c["env"]}["CONTAINER_DIGEST"] == DIGEST
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert set(c["resources"]["limits"]) == {"cpu", "memory"}
    assert pod["spec"]["volumes"][0]["hostPath"]["path"] == "/var/spool/edgefleet/" + out.entry.name
    # The policy passes with an allowlist naming the registry, and fails without it.
    policy.check_manifest(out.entry.yaml, policy.Policy(allowed_registries=("localhost:5000",)))


def test_repository_template_wins_and_bucket_before_package() -> None:
    own = DictTemplates(
        equipmentparts=render.PackagedTemplates()
        .load("model-server")
        .replace(  # type: ignore[union-attr]
            'cpu: "1"', 'cpu: "2"'
        )
    )
    templates = render.Templates([own, render.PackagedTemplates()])
    repo = refs.parse("localhost:5000/equipmentparts")
    out = render.render_workload(
        templates,
        repo,
        "stable",
        "x86_64",
        DIGEST,
        policy.Policy(allowed_registries=("localhost:5000",)),
    )
    assert out.template == "equipmentparts"
    assert (
        yaml.safe_load(out.entry.yaml)["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "2"
    )
    other = render.render_workload(
        templates,
        refs.parse("localhost:5000/other"),
        "stable",
        "x86_64",
        DIGEST,
        policy.Policy(allowed_registries=("localhost:5000",)),
    )
    assert other.template == "model-server"


def _render_with(text: str) -> render.Rendered:
    templates = render.Templates([DictTemplates(model_server=text)])
    repo = refs.parse("localhost:5000/team/model")
    return render.render_workload(
        templates,
        repo,
        "beta",
        "x86_64",
        DIGEST,
        policy.Policy(allowed_registries=("localhost:5000",)),
    )


def test_strict_undefined_is_an_error() -> None:
    with pytest.raises(render.TemplateError, match="'nope' is undefined"):
        _render_with("name: {{ nope }}")


def test_syntax_error_names_line() -> None:
    with pytest.raises(render.TemplateError, match="line 2"):
        _render_with("a: 1\nb: {{ name \n")


def test_sandbox_blocks_attribute_escape() -> None:
    with pytest.raises(render.TemplateError):
        _render_with("{{ ''.__class__.__mro__[1].__subclasses__() }}")


def test_missing_template_is_an_error() -> None:
    with pytest.raises(render.TemplateError, match="no template found"):
        render.Templates([DictTemplates()]).find(["x", "model-server"])


def test_rendered_output_is_policy_checked() -> None:
    bad = (
        render.PackagedTemplates()
        .load("model-server")
        .replace(  # type: ignore[union-attr]
            "allowPrivilegeEscalation: false", "privileged: true"
        )
    )
    with pytest.raises(PolicyViolation, match="privileged"):
        _render_with(bad)
    unpinned = (
        render.PackagedTemplates()
        .load("model-server")
        .replace(  # type: ignore[union-attr]
            "image: {{ image | quote }}", "image: {{ (image_name ~ ':' ~ tag) | quote }}"
        )
    )
    with pytest.raises(PolicyViolation, match="not pinned"):
        _render_with(unpinned)
    renamed = (
        render.PackagedTemplates()
        .load("model-server")
        .replace(  # type: ignore[union-attr]
            "name: {{ name }}", "name: other", 1
        )
    )
    with pytest.raises(PolicyViolation, match="must be 'model'"):
        _render_with(renamed)
    with pytest.raises(InvalidInput, match="only v1 Pods"):
        _render_with("apiVersion: v1\nkind: Service\n")


def test_quote_filter_is_yaml_safe() -> None:
    value = 'a: "b"\n- c'
    assert yaml.safe_load("x: " + render.quote(value))["x"] == value


def test_sync_pod_template_renders_valid_pod() -> None:
    spec = render.SyncPodSpec(
        image=refs.parse(f"localhost:5000/edgefleet/sync@{DIGEST}"),
        bucket="deploy",
        arch="armv7l",
        channel="stable",
        manifest_dir="/srv/device/pods",
        state_dir="/srv/edgefleet-state",
        poll_seconds=30,
        runtime="podman",
        allowed_registries="localhost:5000",
        trusted_keys="/etc/edgefleet/keys/a.pub",
        extra_env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443"},
    )
    text = render.render_sync_pod(packaged(), spec)
    pod = render.check(text, spec.policy(), layout.SYNC_POD_NAME)
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    for key in ("BUCKET", "ARCH", "CHANNEL", "MANIFEST_DIR", "STATE_DIR", "POLL_SECONDS"):
        assert key in env
    assert env["RUNTIME"] == "podman" and env["POLL_SECONDS"] == "30"
    assert env["MANIFEST_DIR"] == "/srv/device/pods"
    assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:4443"
    paths = {v["hostPath"]["path"] for v in pod["spec"]["volumes"]}
    # The agent swaps MANIFEST_DIR (a symlink) by a rename in its parent: the pod mounts the
    # parent, never the link itself (a mount would pin the old set inside the container).
    assert "/srv/device" in paths and "/srv/device/pods" not in paths
    assert {"/srv/edgefleet-state", "/run/podman"} <= paths
    # A default-policy device refuses the custom folders; the device's own policy allows them.
    with pytest.raises(PolicyViolation, match="hostPath /srv/device"):
        render.check(
            text, policy.Policy(allowed_registries=("localhost:5000",)), layout.SYNC_POD_NAME
        )
    kubelet = render.render_sync_pod(packaged(), replace(spec, runtime="kubelet"))
    assert "/run/podman" not in kubelet


def test_sync_pod_must_be_pinned() -> None:
    spec = render.SyncPodSpec(
        image=refs.parse("localhost:5000/edgefleet/sync:v1"), bucket="b", arch="x86_64",
        channel="beta", manifest_dir="/opt/device/pods", state_dir="/var/lib/edgefleet",
        poll_seconds=5, runtime="kubelet", allowed_registries="", trusted_keys="",
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="not pinned"):
        render.render_sync_pod(packaged(), spec)


# -- platforms -----------------------------------------------------------------------------


def _index(*platforms_: dict, attestation: bool = False) -> dict:
    manifests = [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{i:064x}",
         "size": 1, "platform": p}
        for i, p in enumerate(platforms_, start=1)
    ]  # fmt: skip
    if attestation:
        unknown = {"os": "unknown", "architecture": "unknown"}
        manifests.append(
            {"digest": "sha256:" + "9" * 64, "platform": unknown,
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}
        )  # fmt: skip
    return {"schemaVersion": 2, "manifests": manifests}


def test_index_arches_maps_known_platforms() -> None:
    index = _index(
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "linux", "architecture": "arm", "variant": "v7"},
        {"os": "linux", "architecture": "arm", "variant": "v6"},
        {"os": "windows", "architecture": "amd64"},
        {"os": "linux", "architecture": "s390x"},
        attestation=True,
    )
    assert platforms.index_arches(index) == {
        "x86_64": f"sha256:{1:064x}",
        "aarch64": f"sha256:{2:064x}",
        "armv7l": f"sha256:{3:064x}",
    }


def test_index_first_entry_per_arch_wins_and_bad_digests_skipped() -> None:
    index = _index(
        {"os": "linux", "architecture": "arm64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
    )
    assert platforms.index_arches(index) == {"aarch64": f"sha256:{1:064x}"}
    index["manifests"][0]["digest"] = "sha256:short"
    assert platforms.index_arches(index) == {"aarch64": f"sha256:{2:064x}"}


@pytest.mark.parametrize(
    ("config", "arch"),
    [
        ({"os": "linux", "architecture": "amd64"}, "x86_64"),
        ({"architecture": "arm64"}, "aarch64"),
        ({"os": "linux", "architecture": "arm", "variant": "v7"}, "armv7l"),
        ({"os": "linux", "architecture": "arm"}, "armv7l"),
        ({"os": "linux", "architecture": "arm", "variant": "v6"}, None),
        ({"os": "windows", "architecture": "amd64"}, None),
        ({"os": "linux", "architecture": "riscv64"}, None),
        ({}, None),
    ],
)
def test_config_arch(config, arch) -> None:
    assert platforms.config_arch(config) == arch


def test_single_arch_falls_back_to_suffix() -> None:
    assert platforms.single_arch({"architecture": "riscv64"}, "team/model-aarch64") == "aarch64"
    assert platforms.single_arch({"architecture": "amd64"}, "team/model-aarch64") == "x86_64"
    assert platforms.single_arch(None, "team/model-armhf") == "armv7l"
    with pytest.raises(InvalidInput, match="unknown arch"):
        platforms.single_arch({"architecture": "riscv64"}, "team/model")


def test_suffix_and_strip() -> None:
    assert platforms.suffix_arch("team/model-server-x86_64") == "x86_64"
    assert platforms.strip_arch_suffix("team/model-server-x86_64") == "model-server"
    assert platforms.suffix_arch("team/model-server") is None
    assert platforms.strip_arch_suffix("team/model-server") == "model-server"


def test_model_server_pod_matches_the_server_and_carries_the_telemetry_project() -> None:
    repo = refs.parse("localhost:5000/edgefleet/mobilenet:beta")
    plain = render.render_workload(
        packaged(),
        repo,
        "beta",
        "x86_64",
        DIGEST,
        policy.Policy(allowed_registries=("localhost:5000",)),
    )
    pod = yaml.safe_load(plain.entry.yaml)
    [c] = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["CONTAINER_DIGEST"] == DIGEST
    # The server's outbox lies on the spool mount, which outlives the pod.
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert any(env["OUTBOX_DIR"].startswith(m + "/") for m in mounts)
    assert "PUBSUB_PROJECT" not in env  # no project configured: telemetry stays off
    assert c["resources"]["limits"]["cpu"] == "2"

    on = render.render_workload(
        packaged(), repo, "beta", "x86_64", DIGEST, ALLOW,
        {"telemetry_project": "fleet-prod"},
    )  # fmt: skip
    env = {
        e["name"]: e["value"] for e in yaml.safe_load(on.entry.yaml)["spec"]["containers"][0]["env"]
    }
    assert env["PUBSUB_PROJECT"] == "fleet-prod"

"""edgefleet bootstrap against the real GCS emulator and registry (through the CLI)."""

from __future__ import annotations

import json

import pytest
import yaml

from edgefleet.cloud.render import PackagedTemplates
from edgefleet.core import layout, manifest_set, signing
from edgefleet.operator import cli

pytestmark = pytest.mark.stack

DIGEST = "sha256:" + "77" * 32


def run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def snapshot(bucket) -> dict[str, int]:
    return {info.name: info.generation for info in bucket.list_objects("")}


def test_bootstrap_writes_templates_sync_pods_and_is_idempotent(
    bucket, registry, capsys, tmp_path
) -> None:
    sync = registry.push_minimal_image("ctl/boot-sync", "v1", arch="amd64", salt="boot")
    fleet = tmp_path / "fleet"
    (fleet / "x86_64").mkdir(parents=True)
    agent = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "node-agent"},
        "spec": {"containers": [{"name": "a", "image": f"{registry.host}/ctl/agent@{DIGEST}",
                                 "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
                                 "securityContext": {"allowPrivilegeEscalation": False,
                                                     "capabilities": {"drop": ["ALL"]}}}],
                 "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}},
    }  # fmt: skip
    (fleet / "node-agent-pod.yaml").write_text(yaml.safe_dump(agent))
    (fleet / "x86_64" / "only-x86-pod.yaml").write_text(
        yaml.safe_dump(agent | {"metadata": {"name": "only-x86"}})
    )
    key = tmp_path / "signing.pem"
    signing.generate(key)
    argv = [
        "bootstrap", "--bucket", bucket.name, "--arch", "x86_64", "--channels", "beta,stable",
        "--sync-image", f"{registry.host}/ctl/boot-sync:v1", "--fleet-wide", str(fleet),
        "--signing-key", str(key), "--insecure-registries", registry.host,
        "--runtime", "podman", "--poll-seconds", "2",
        "--sync-env", "STORAGE_EMULATOR_HOST=http://127.0.0.1:1",
    ]  # fmt: skip
    code, err = run(capsys, *argv)
    assert code == 0, err
    assert "sets/x86_64/beta.json: written" in err and "bootstrap done" in err

    for name in PackagedTemplates().names():
        assert bucket.read(layout.template_object(name)).data.decode() == (
            PackagedTemplates().load(name)
        )
    public = signing.load_private_key(key).public_key()
    for channel in ("beta", "stable"):
        signed = manifest_set.decode(bucket.read(f"sets/x86_64/{channel}.json").data)
        s = manifest_set.verify(
            signed, [public], arch="x86_64", channel=channel, now=signed.manifest_set.issued_at
        )
        names = {(e.scope, e.name) for e in s.entries}
        assert names == {("channel", layout.SYNC_POD_NAME), ("all", "node-agent"),
                         ("all", "only-x86")}  # fmt: skip
        pod = yaml.safe_load(s.entry("channel", layout.SYNC_POD_NAME).yaml)
        c = pod["spec"]["containers"][0]
        assert c["image"] == f"{registry.host}/ctl/boot-sync@{sync}"
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["CHANNEL"] == channel and env["ARCH"] == "x86_64"
        assert env["BUCKET"] == bucket.name and env["RUNTIME"] == "podman"
        assert env["TRUSTED_KEYS"] == f"/etc/edgefleet/trusted/{signing.key_id(public)}.pub"
        assert env["ALLOWED_REGISTRIES"] == registry.host
        assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:1"
        mirror = bucket.read(f"x86_64/{channel}/{layout.SYNC_POD_NAME}-pod.yaml")
        assert mirror.data.decode() == s.entry("channel", layout.SYNC_POD_NAME).yaml
    assert bucket.read("x86_64/all/node-agent-pod.yaml") is not None
    assert not list(bucket.list("aarch64/")) and not list(bucket.list("sets/aarch64/"))

    # Second run: nothing changes, no new sequence.
    before = snapshot(bucket)
    code, err = run(capsys, *argv)
    assert code == 0 and "0 set(s) written, 2 unchanged, 0 template(s)" in err
    assert snapshot(bucket) == before

    # A removed mirror object is repaired without touching the sets.
    bucket.delete("x86_64/beta/edgefleet-sync-pod.yaml")
    code, _ = run(capsys, *argv)
    assert bucket.read("x86_64/beta/edgefleet-sync-pod.yaml") is not None
    assert bucket.generation("sets/x86_64/beta.json") == before["sets/x86_64/beta.json"]


def test_bootstrap_keeps_workloads_and_replaces_the_sync_image(bucket, registry, capsys) -> None:
    first = registry.push_minimal_image("ctl/boot-keep", "v1", arch="arm64", salt="k1")
    base = ["bootstrap", "--bucket", bucket.name, "--arch", "aarch64", "--channels", "beta",
            "--insecure-registries", registry.host]  # fmt: skip
    assert run(capsys, *base, "--sync-image", f"{registry.host}/ctl/boot-keep:v1")[0] == 0
    # tag_monitor adds a workload meanwhile (simulated through the set store's own API).
    from edgefleet.cloud.set_store import SetStore

    store = SetStore(bucket)
    workload = manifest_set.ManifestEntry("model", "channel", "apiVersion: v1\nkind: Pod\n")
    store.update("aarch64", "beta", lambda s: [*s.entries, workload])
    second = registry.push_minimal_image("ctl/boot-keep", "v2", arch="arm64", salt="k2")
    assert run(capsys, *base, "--sync-image", f"{registry.host}/ctl/boot-keep:v2")[0] == 0
    s = manifest_set.decode(bucket.read("sets/aarch64/beta.json").data).manifest_set
    assert s.entry("channel", "model") == workload
    sync_yaml = s.entry("channel", layout.SYNC_POD_NAME).yaml
    assert second in sync_yaml and first not in sync_yaml


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--arch", "sparc"], "unknown arch"),
        (["--channels", "all"], "invalid channel"),
        (["--sync-env", "NOEQUALS"], "KEY=VALUE"),
        (["--poll-seconds", "0"], "positive"),
        (["--signing-key", "/nonexistent/key.pem"], "cannot read signing key"),
    ],
)
def test_bad_arguments_one_line_errors(bucket, registry, capsys, extra, fragment) -> None:
    argv = ["bootstrap", "--bucket", bucket.name, "--arch", "x86_64",
            "--sync-image", f"{registry.host}/ctl/boot-sync:v1",
            "--insecure-registries", registry.host, *extra]  # fmt: skip
    code, err = run(capsys, *argv)
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("edgefleet: ") and fragment in lines[-1]
    assert not list(bucket.list("sets/"))


def test_sync_image_without_the_arch_is_refused(bucket, registry, capsys) -> None:
    registry.push_minimal_image("ctl/boot-amd", "v1", arch="amd64", salt="amd")
    code, err = run(
        capsys, "bootstrap", "--bucket", bucket.name, "--sync-image",
        f"{registry.host}/ctl/boot-amd:v1", "--insecure-registries", registry.host,
    )  # fmt: skip
    assert code == 1 and "has no image for aarch64, armv7l" in err
    assert not list(bucket.list("sets/"))


def test_bad_fleet_wide_manifest_refused(bucket, registry, capsys, tmp_path) -> None:
    registry.push_minimal_image("ctl/boot-sync", "v1", arch="amd64", salt="boot")
    (tmp_path / "evil-pod.yaml").write_text(
        json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "evil"},
                    "spec": {"containers": [{"name": "c", "image": "localhost:5000/x:latest"}]}})
    )  # fmt: skip
    code, err = run(
        capsys, "bootstrap", "--bucket", bucket.name, "--arch", "x86_64",
        "--sync-image", f"{registry.host}/ctl/boot-sync:v1", "--fleet-wide", str(tmp_path),
        "--insecure-registries", registry.host,
    )  # fmt: skip
    assert code == 1 and "evil-pod.yaml" in err and "not pinned" in err
    assert not list(bucket.list(""))  # nothing at all: not even templates


def test_key_rotation_resigns_sets_that_the_old_key_signed(bucket, registry, capsys, tmp_path):
    registry.push_minimal_image("ctl/rot-sync", "v1", arch="amd64", salt="rotate")
    old, new = tmp_path / "old.pem", tmp_path / "new.pem"
    signing.generate(old)
    signing.generate(new)
    base = [
        "bootstrap", "--bucket", bucket.name, "--arch", "x86_64", "--channels", "beta",
        "--sync-image", f"{registry.host}/ctl/rot-sync:v1",
        "--insecure-registries", registry.host,
    ]  # fmt: skip
    assert run(capsys, *base, "--signing-key", str(old))[0] == 0
    first = manifest_set.decode(bucket.read("sets/x86_64/beta.json").data)

    # The new key alone does not trust the old set: nothing is built on it.
    code, err = run(capsys, *base, "--signing-key", str(new))
    assert code != 0 and "not trusted" in err
    assert manifest_set.decode(bucket.read("sets/x86_64/beta.json").data) == first

    # With the old public key trusted, the set is re-signed by the new key, newer sequence.
    code, err = run(capsys, *base, "--signing-key", str(new), "--trusted-keys", f"{old}.pub")
    assert code == 0, err
    second = manifest_set.decode(bucket.read("sets/x86_64/beta.json").data)
    new_public = signing.load_public_key(f"{new}.pub")
    old_public = signing.load_public_key(f"{old}.pub")
    assert [sig.key_id for sig in second.signatures] == [signing.key_id(new_public)]
    assert second.manifest_set.sequence > first.manifest_set.sequence
    # A device trusting both keys during the changeover accepts it as the next set.
    manifest_set.verify(
        second, [old_public, new_public], arch="x86_64", channel="beta",
        now=second.manifest_set.issued_at,
        applied_sequence=first.manifest_set.sequence,
        applied_digest=first.manifest_set.digest(),
    )  # fmt: skip

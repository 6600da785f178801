"""Issue 12, the podman-specific bypasses, on real podman: podman 4.3's ``kube play`` decodes
keys case-insensitively (``Privileged: true`` makes a privileged container) and applies
YAML merge keys, which a check reading the document differently missed. The test first
shows the runtime really does it (so the attack is real), then that the device's check
refuses both manifests, and that the canonical JSON it writes instead is what podman runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.security import IMAGE, POLICY, good_pod

from edgefleet.core import policy
from edgefleet.core.errors import InvalidInput

pytestmark = [pytest.mark.podman]
BUSYBOX = Path("/bin/busybox")


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str]]:
    """A podman env and a local busybox image (imported, no registry)."""
    from edgefleet.localstack.podman import PodmanEnv

    env = {**os.environ, **PodmanEnv(tmp_path_factory.mktemp("podman"), []).env()}
    root = tmp_path_factory.mktemp("bb")
    (root / "bin").mkdir()
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sleep", "httpd", "sh", "mkdir"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "www").mkdir()
    for path in ("readyz", "healthz"):
        (root / "www" / path).write_text("ok")
    tar = root.parent / f"{root.name}.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(root / "bin", arcname="bin")
        tf.add(root / "www", arcname="www")
    image = f"localhost/edgefleet-sec-{uuid.uuid4().hex[:8]}:test"
    # Stands in for the model server: serves /readyz on the pod's port 5000 and writes to
    # its spool mount (fails without a writable spool).
    serve = "mkdir -p /var/spool/edgefleet/outbox && exec httpd -f -p 5000 -h /www"
    cmd = f'CMD ["/bin/sh", "-c", "{serve}"]'
    subprocess.run(["podman", "import", "-q", "--change", cmd, str(tar), image], env=env,
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    yield env, image
    subprocess.run(["podman", "rmi", "-f", image], env=env, capture_output=True, timeout=60)


@contextlib.contextmanager
def kube_play(
    env: dict[str, str], manifest: str, name: str
) -> Iterator[subprocess.CompletedProcess]:
    """``kube play --start=false`` the manifest (pod ``name``); removed afterwards."""
    path = Path(env.get("TMPDIR", "/tmp")) / f"{name}.yaml"
    path.write_text(manifest)
    try:
        play = ["podman", "kube", "play", "--start=false", str(path)]
        yield subprocess.run(play, env=env, capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["podman", "pod", "rm", "-f", "-t", "0", "--ignore", name], env=env,
                       capture_output=True, timeout=60)  # fmt: skip
        path.unlink(missing_ok=True)


def play_privileged(env: dict[str, str], manifest: str, name: str) -> bool:
    """``kube play --start=false`` the manifest; is its container privileged?"""
    with kube_play(env, manifest, name) as played:
        assert played.returncode == 0, played.stderr[-600:]
        out = subprocess.run(["podman", "container", "inspect", f"{name}-main"], env=env,
                             check=True, capture_output=True, text=True, timeout=60)  # fmt: skip
        return bool(json.loads(out.stdout)[0]["HostConfig"]["Privileged"])


def pod_for(image: str, name: str) -> dict:
    doc = good_pod()
    doc["metadata"]["name"] = name
    c = doc["spec"]["containers"][0]
    c.update(name="main", image=image, command=["/bin/sleep", "60"])
    del c["volumeMounts"], c["ports"]
    del doc["spec"]["volumes"]
    return doc


def test_case_variant_privileged_is_what_podman_runs_and_the_check_refuses_it(podman) -> None:
    env, image = podman
    name = f"case-{uuid.uuid4().hex[:6]}"
    doc = pod_for(image, name)
    doc["spec"]["containers"][0]["securityContext"]["Privileged"] = True
    text = yaml.safe_dump(doc)
    assert play_privileged(env, text, name) is True  # the attack is real on podman 4.3
    with pytest.raises(InvalidInput, match="only in case"):
        policy.check_manifest(text, POLICY, model_check=False)


def test_merge_key_privileged_is_what_podman_runs_and_the_check_refuses_it(podman) -> None:
    env, image = podman
    name = f"merge-{uuid.uuid4().hex[:6]}"
    text = yaml.safe_dump(pod_for(image, name)).replace(
        "      allowPrivilegeEscalation: false",
        "      <<: {privileged: true}\n      allowPrivilegeEscalation: false",
    )
    assert play_privileged(env, text, name) is True
    with pytest.raises(InvalidInput, match="merge keys"):
        policy.check_manifest(text, POLICY, model_check=False)


def test_the_canonical_json_a_device_writes_runs_unprivileged(podman) -> None:
    env, image = podman
    name = f"json-{uuid.uuid4().hex[:6]}"
    doc = pod_for(IMAGE, name)  # checked with a pinned image of an allowed repository ...
    checked = policy.check_manifest(yaml.safe_dump(doc), POLICY, model_check=False)
    data = policy.canonical(checked).decode().replace(IMAGE, image)  # ... run with the local one
    assert play_privileged(env, data, name) is False


def test_model_server_template_runs_on_podman_on_its_own_network(podman, tmp_path) -> None:
    """The packaged model-server template, as a device checks and writes it (canonical
    JSON), runs under the device's podman runtime: no host network, all capabilities
    dropped, RuntimeDefault seccomp, its own spool directory, reachable on the device's
    loopback through its hostPort only."""
    from device import spool
    from device.health import check_probe, probes_for
    from device.podman import PodmanRuntime
    from edgefleet.cloud import render
    from edgefleet.core import refs
    from edgefleet.localstack.process import free_port

    env, image = podman
    repo = refs.parse(f"{IMAGE.split('@')[0].rsplit('/', 1)[0]}/sec-{uuid.uuid4().hex[:6]}")
    digest = IMAGE.split("@")[1]
    port = free_port()
    templates = render.Templates([render.PackagedTemplates()])
    out = render.render_workload(templates, repo, "beta", "x86_64", digest, POLICY,
                                 {"port": str(port)})  # fmt: skip
    pod = policy.check_manifest(out.entry.yaml, POLICY, expected_name=out.entry.name)
    assert "hostNetwork" not in pod["spec"]
    data = policy.canonical(pod).decode().replace(str(repo.with_digest(digest)), image)
    folder = tmp_path / "pods"
    folder.mkdir()
    (folder / f"{out.entry.name}-pod.yaml").write_text(data)
    runtime = PodmanRuntime(tmp_path / "state", env=env)
    spool.ensure(spool.spool_dirs({out.entry.name: pod}))
    try:
        assert runtime.reconcile(folder) == [out.entry.name]
        [probe] = probes_for(json.loads(data))
        assert (probe.host, probe.port, probe.path) == ("127.0.0.1", port, "/readyz")
        deadline = time.monotonic() + 60
        while not check_probe(probe) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert check_probe(probe)
        assert (Path(policy.spool_dir(out.entry.name)) / "outbox").is_dir()
    finally:
        subprocess.run(["podman", "pod", "rm", "-f", "-t", "0", "--ignore", out.entry.name],
                       env=env, capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(policy.spool_dir(out.entry.name), ignore_errors=True)


QUANTITIES = ("500m", "1", "0.5", ".5", "5.", "+2", "64Mi", "1.5Gi", "1e9", "1e-3", "250u",
              "1n", "2k", "abc", "64MiB", "10x", "1.2.3", "Mi", "1 Gi", "0x10", "-1")  # fmt: skip


def test_the_allowlists_quantity_grammar_is_what_podman_decodes(podman) -> None:
    """Each quantity the type walk takes, podman's ``kube play`` decodes, and each it
    refuses, podman refuses with "quantities must match" (its copy of apimachinery's
    parser): a set is refused where it is checked, not when a device plays it. The walk
    is stricter in two ways of its own: a negative value (the API server refuses it,
    podman does not) and a suffix with no number ("Mi": apimachinery reads it as 0)."""
    env, image = podman
    disagree = {}
    for quantity in QUANTITIES:
        name = f"qty-{uuid.uuid4().hex[:6]}"
        doc = pod_for(image, name)
        doc["spec"]["containers"][0]["resources"]["limits"]["memory"] = quantity
        walk_takes = not policy.shape_problems(doc)[1]
        with kube_play(env, yaml.safe_dump(doc), name) as played:
            podman_takes = played.returncode == 0
            if not podman_takes:
                assert "quantities must match" in played.stderr, (quantity, played.stderr[-300:])
        if walk_takes != podman_takes:
            disagree[quantity] = {"walk": walk_takes, "podman": podman_takes}
    stricter = {"walk": False, "podman": True}
    assert disagree == {"Mi": stricter, "-1": stricter}

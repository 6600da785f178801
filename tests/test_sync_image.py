"""The sync agent image on the real stack: built once through ``podman system service``,
pushed to the local docker-registry, pulled by digest and run as a container the way the
sync pod runs on a kubelet device (host network, hostPath mounts at identical paths), fed
by sets published like the control plane does through fake-gcs-server.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.kubelet import written
from support.sync import FAKE_DIGEST, SetPublisher, entries, pod_yaml

from edgefleet.cloud.registry import RegistryClient
from edgefleet.core import layout, refs, signing
from edgefleet.packaging.base_image import host_arch, tag_for

pytestmark = [pytest.mark.stack, pytest.mark.podman, pytest.mark.slow]

CHANNEL = "beta"
DEVICE_ID = "sync-image-1"
# What the agent may add, unpacked, on top of the shared Debian + python3 base (measured:
# ~111 MiB, kubernetes the most of it); the model-server image adds ~200 MiB.
AGENT_SIZE_BUDGET = 128 * 2**20


@dataclass
class Built:
    ref: str
    registry_host: str
    podman_env: dict[str, str]


@pytest.fixture(scope="module")
def built(registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:  # type: ignore[no-untyped-def]
    from edgefleet.localstack.podman import PodmanEnv, PodmanService
    from edgefleet.packaging.podman_builder import PodmanConfig
    from edgefleet.packaging.sync_image import IMAGE_NAME, build_sync_image

    work = tmp_path_factory.mktemp("sync-image")
    penv = PodmanEnv(work / "podman", [registry.host])
    service = PodmanService(work / "podman", penv).start()
    repo = f"{registry.host}/edgefleet"
    ref = ""
    try:
        config = PodmanConfig(
            image_repository=repo,
            socket=service.docker_url,
            insecure_registries=frozenset({registry.host}),
            podman_env=penv.env(),
        )
        ref = build_sync_image(config, version="0.1.0-test")
        yield Built(ref, registry.host, penv.env())
    finally:
        service.stop()
        local = [f"{repo}/{IMAGE_NAME}:{tag}" for tag in ("0.1.0-test", "latest")]
        # The registry's port is new every run: leave no tags of it behind.
        _podman(["rmi", "-f", *local, *([ref] if ref else [])], penv.env())


def _podman(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        ["podman", *args], env={**os.environ, **env}, capture_output=True, text=True, **kw
    )


def test_pushed_pinned_with_latest_on_the_same_digest(built: Built) -> None:
    ref = refs.parse(built.ref)
    assert ref.digest and ref.tag == "0.1.0-test"
    assert ref.repository.endswith("/edgefleet-sync")
    client = RegistryClient(insecure=frozenset({built.registry_host}))
    assert client.resolve(ref.with_tag("latest")) == ref.digest
    assert client.resolve(ref.with_tag("0.1.0-test")) == ref.digest


def test_image_holds_the_agent_and_none_of_the_server_stack(built: Built) -> None:
    script = (
        "import importlib.util as u, json\n"
        "names = ['sync_pod.agent', 'device.podcheck', 'device.podman', 'kubernetes',\n"
        "         'cryptography', 'yaml', 'urllib3', 'google.auth', 'flask',\n"
        "         'ai_edge_litert', 'onnxruntime', 'docker', 'numpy', 'google.cloud.storage']\n"
        "def have(n):\n"
        "    try:\n"
        "        return u.find_spec(n) is not None\n"
        "    except ModuleNotFoundError:\n"
        "        return False\n"
        "print(json.dumps({n: have(n) for n in names}))\n"
    )
    python = ["run", "--rm", "-i", "--network", "none", "--entrypoint", "python3", built.ref]
    out = _podman(
        [*python, "-c", script],
        built.podman_env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout)
    needed = ["sync_pod.agent", "device.podcheck", "device.podman", "kubernetes"]
    needed += ["cryptography", "yaml", "urllib3", "google.auth"]
    assert {n: found[n] for n in needed} == dict.fromkeys(needed, True)
    unwanted = ["flask", "ai_edge_litert", "onnxruntime", "docker", "numpy"]
    unwanted += ["google.cloud.storage"]
    assert {n: found[n] for n in unwanted} == dict.fromkeys(unwanted, False)
    # The V1Pod model check runs in the image's own interpreter (the agent's child).
    check = _podman(
        [*python, "-m", "device.podcheck"],
        built.podman_env,
        input=json.dumps({"manifests": {"a": "apiVersion: v1\nkind: Pod\nspec: 3\n"}}),
        timeout=120,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    assert json.loads(check.stdout)["results"]["a"]
    size, base = (_size(image, built.podman_env) for image in (built.ref, tag_for(host_arch())))
    print(f"\nsync image {built.ref}: {size / 2**20:.1f} MiB unpacked, "
          f"{(size - base) / 2**20:.1f} MiB above the base")  # fmt: skip
    assert 0 < size - base < AGENT_SIZE_BUDGET


def _size(image: str, env: dict[str, str]) -> int:
    out = _podman(["image", "inspect", "--format", "{{.Size}}", image], env)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def _wait(what: str, ok: Callable[[], object], logs: Callable[[], str], timeout: float = 90.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ok()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}; agent log tail:\n{logs()}")


def test_container_switches_the_host_manifest_folder_and_reports(  # type: ignore[no-untyped-def]
    built: Built, gcs, bucket, tmp_path: Path
) -> None:
    arch = host_arch()
    manifest_root = tmp_path / "opt-device"
    manifest_dir = manifest_root / "pods"
    state_dir = tmp_path / "var-lib-edgefleet"
    manifest_root.mkdir()
    state_dir.mkdir()
    image = f"{built.registry_host}/edgefleet/web@{FAKE_DIGEST}"
    # Signed, as devices refuse anything else (fail closed): the key as a provisioned file.
    keys = tmp_path / "keys"
    keys.mkdir()
    key = signing.generate(keys / "signing.pem")
    pub = SetPublisher(bucket, arch, CHANNEL, signers=[key])
    first = pub.publish(
        entries({"web": pod_yaml("web", image), "db": pod_yaml("db", image)})
        + entries({"shared": pod_yaml("shared", image)}, "all")
    )
    name = f"edgefleet-sync-test-{uuid.uuid4().hex[:8]}"
    env = {
        "RUNTIME": "kubelet",
        "KUBELET_API": "off",  # no kubelet here: the folder on the host is what is checked
        "BUCKET": bucket.name,
        "ARCH": arch,
        "CHANNEL": CHANNEL,
        "DEVICE_ID": DEVICE_ID,
        "MANIFEST_DIR": str(manifest_dir),
        "STATE_DIR": str(state_dir),
        "POLL_SECONDS": "1",
        "HEALTH_TIMEOUT": "5",
        "ALLOWED_REGISTRIES": built.registry_host,
        "TRUSTED_KEYS": str(keys / "signing.pem.pub"),
        **gcs.env(),
    }
    argv = ["run", "-d", "--name", name, "--network", "host", "-v", f"{keys}:{keys}:ro"]
    # hostPath volumes as manifests/sync-pod.yaml.j2 mounts them: same path in and out.
    argv += ["-v", f"{manifest_root}:{manifest_root}", "-v", f"{state_dir}:{state_dir}"]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    started = _podman([*argv, built.ref], built.podman_env, timeout=300)
    assert started.returncode == 0, started.stderr[-2000:]

    def logs() -> str:
        return _podman(["logs", name], built.podman_env).stderr[-3000:]

    def folder() -> dict[str, str]:
        if manifest_dir.is_symlink() or not manifest_dir.is_dir():
            return {}
        return {p.name: p.read_text() for p in sorted(manifest_dir.iterdir())}

    def status() -> dict:  # type: ignore[type-arg]
        blob = bucket.read(layout.status_object(DEVICE_ID))
        return json.loads(blob.data) if blob is not None else {}

    try:
        # The device writes the canonical JSON of what it checked (docs/security.md).
        expected = {f: written(e.yaml) for f, e in first.effective().items()}
        assert len(expected) == 3
        assert _wait("the first set on the host", lambda: folder() == expected, logs)
        # The set's complete copy is kept under STATE_DIR/sets/SEQ-DIGEST for rollback.
        assert any((state_dir / "sets").iterdir())
        _wait(
            "the first status report",
            lambda: status().get("applied", {}).get("digest") == first.digest(),
            logs,
        )

        web = pod_yaml("web", image, command=["/bin/true"])
        second = pub.publish(entries({"web": web}))
        expected = {layout.manifest_file_name("web"): written(web)}
        assert _wait("the second set on the host", lambda: folder() == expected, logs)
        report = _wait(
            "the second status report",
            lambda: (s := status()).get("applied", {}).get("digest") == second.digest() and s,
            logs,
        )
        assert report["arch"] == arch and report["channel"] == CHANNEL
        running = _podman(["inspect", "--format", "{{.State.Running}}", name], built.podman_env)
        assert running.stdout.strip() == "true", logs()
    finally:
        _podman(["rm", "-f", "-t", "2", name], built.podman_env, timeout=60)

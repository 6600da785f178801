"""PodmanBuilder on the real local stack: GCS emulator -> podman build -> local registry.

The v2 Coral model from ../shared/testdata is uploaded to the GCS emulator as a model
package, built into the real model-server image once per module (a slow step on 2 cores;
the base image and the wheelhouse are cached across runs), pushed to a real
docker-registry, then pulled by digest and run with podman.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from edgefleet.cloud import storage
from edgefleet.cloud.build import BuildRequest, BuildResult
from edgefleet.cloud.registry import RegistryClient
from edgefleet.core import refs
from edgefleet.localstack.process import free_port

pytestmark = [pytest.mark.stack, pytest.mark.podman, pytest.mark.slow]

TESTDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "coral"
MODEL = "mobilenet"
VERSION = "mobilenet_2_1764000000"
MODEL_FILE = TESTDATA / "mobilenet_v2_1.0_224_quant.tflite"


def _testdata() -> Path:
    if not MODEL_FILE.is_file():
        pytest.fail(f"{MODEL_FILE} is missing: the shared test data must be in {TESTDATA}")
    return TESTDATA


def upload_package(
    bucket: storage.Bucket,
    prefix: str,
    *,
    version: str = VERSION,
    model_file: Path = MODEL_FILE,
    top1: int = 653,
) -> None:
    """A model package as training writes it, plus objects that must stay out of images."""
    td = _testdata()
    metadata = {
        "name": MODEL,
        "version": version,
        "task": "image",
        "golden": [{"input": "golden/grace_hopper.bmp", "top1": top1}],
    }
    bucket.write(prefix + "model.tflite", model_file.read_bytes())
    bucket.write(prefix + "labels.txt", (td / "imagenet_labels.txt").read_bytes())
    bucket.write(prefix + "golden/grace_hopper.bmp", (td / "grace_hopper.bmp").read_bytes())
    bucket.write(prefix + "metadata.json", json.dumps(metadata).encode())
    bucket.write(prefix + "logs/train.log", b"epoch 1 ...\n")
    bucket.write(prefix + "TRAINER-DONE", b"")


@dataclass
class Built:
    result: BuildResult
    registry_host: str
    podman_env: dict[str, str]
    repo: str
    builder: Any
    bucket: storage.Bucket


@pytest.fixture(scope="module")
def built(gcs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:  # type: ignore[no-untyped-def]
    from edgefleet.localstack.podman import PodmanEnv, PodmanService
    from edgefleet.localstack.registry import Registry
    from edgefleet.packaging.podman_builder import PodmanBuilder, PodmanConfig

    work = tmp_path_factory.mktemp("packaging")
    registry = Registry(work / "registry").start()
    penv = PodmanEnv(work / "podman", [registry.host])
    service = PodmanService(work / "podman", penv).start()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in gcs.env().items():
            mp.setenv(key, value)
        gcs.create_bucket("edgefleet-models-pkg")
        bucket = storage.Bucket(storage.make_client(), "edgefleet-models-pkg")
        prefix = f"{MODEL}/{VERSION}/"
        upload_package(bucket, prefix)
        config = PodmanConfig(
            image_repository=f"{registry.host}/edgefleet",
            socket=service.docker_url,
            insecure_registries=frozenset({registry.host}),
            podman_env=penv.env(),
        )
        request = BuildRequest(
            model=MODEL,
            version=VERSION,
            major=2,
            trained_at=1764000000,
            source=f"gs://edgefleet-models-pkg/{prefix}",
            arches=("x86_64", "aarch64", "armv7l"),
        )
        try:
            result = PodmanBuilder(config).build(request)
            repo = f"{registry.host}/edgefleet/{MODEL}"
            yield Built(result, registry.host, penv.env(), repo, PodmanBuilder(config), bucket)
        finally:
            service.stop()
            registry.stop()


def _podman(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        ["podman", *args], env={**os.environ, **env}, capture_output=True, text=True, **kw
    )


def test_both_tags_are_pushed_and_pinned_to_one_digest(built: Built) -> None:
    images = [refs.parse(i) for i in built.result.images]
    assert [i.tag for i in images] == [VERSION, "latest"]
    assert all(i.name == built.repo and refs.is_pinned(str(i)) for i in images)
    assert images[0].digest == images[1].digest
    client = RegistryClient(insecure=[built.registry_host], token_source=lambda: None)
    for image in images:
        assert client.resolve(image.with_tag(image.tag or "")) == image.digest


def test_host_arch_only_without_emulation_is_said(built: Built) -> None:
    from edgefleet.packaging.podman_builder import runnable_arches

    if runnable_arches() >= {"aarch64", "armv7l"}:
        assert "only" not in built.result.detail
    else:
        assert "x86_64 only" in built.result.detail
        assert "qemu-user-static" in built.result.detail


def test_image_carries_oci_and_model_labels(built: Built) -> None:
    client = RegistryClient(insecure=[built.registry_host], token_source=lambda: None)
    ref = refs.parse(built.result.images[0])
    manifest = client.get_manifest(ref.with_digest(ref.digest or ""))
    assert not manifest.is_index  # one platform here: a plain image manifest
    config = client.get_config(ref, manifest)
    labels = config["config"]["Labels"]
    sha = hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest()
    assert labels["org.opencontainers.image.title"] == MODEL
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.created"].startswith("20")
    assert labels["edgefleet.model.sha256"] == sha
    assert labels["edgefleet.model.version"] == VERSION
    assert labels["edgefleet.model.major"] == "2"
    assert labels["edgefleet.model.trained_at"] == "1764000000"
    assert labels["edgefleet.model.runtime"] == "tflite"
    assert config["architecture"] == "amd64"
    assert config["config"]["User"] == "10001:10001"
    assert "5000/tcp" in config["config"]["ExposedPorts"]
    assert config["config"]["Entrypoint"][-4:] == ["--model-dir", "/model", "--port", "5000"]


def test_model_versions_share_every_layer_but_the_model(built: Built) -> None:
    """A device that runs one version downloads only the next one's model layer."""
    v1_file = TESTDATA / "mobilenet_v1_0.25_128_quant.tflite"
    prefix = f"{MODEL}/mobilenet_1_1764000100/"
    upload_package(
        built.bucket, prefix, version="mobilenet_1_1764000100", model_file=v1_file, top1=400
    )
    other = built.builder.build(
        BuildRequest(
            model=MODEL,
            version="mobilenet_1_1764000100",
            major=1,
            trained_at=1764000100,
            source=f"gs://edgefleet-models-pkg/{prefix}",
            arches=("x86_64",),
        )
    )
    client = RegistryClient(insecure=[built.registry_host], token_source=lambda: None)

    def layers(image: str) -> list[tuple[str, int]]:
        ref = refs.parse(image)
        manifest = client.get_manifest(ref.with_digest(ref.digest or ""))
        return [(layer["digest"], layer["size"]) for layer in manifest.doc["layers"]]

    first, second = layers(built.result.images[0]), layers(other.images[0])
    assert len(first) == len(second) >= 3
    assert first[:-1] == second[:-1]  # base, user, runtime: byte-identical, shared
    assert first[-1] != second[-1]
    new_bytes = second[-1][1]
    assert new_bytes < v1_file.stat().st_size + 2 * 1024 * 1024  # model + package, no runtime
    assert sum(size for _, size in first[:-1]) > 50 * new_bytes


def test_image_holds_the_package_only_and_no_build_tools(built: Built) -> None:
    ref = built.result.images[0]
    script = (
        "ls -R /model; for t in gcc cc make pip pip3 apt-get; do "
        "command -v $t >/dev/null && echo HAS:$t; done; "
        "/opt/edgefleet/bin/python -c 'import onnxruntime' 2>/dev/null && echo HAS:onnxruntime; "
        "id -u"
    )
    out = _podman(["run", "--rm", "--entrypoint", "/bin/sh", ref, "-c", script], built.podman_env)
    assert out.returncode == 0, out.stderr
    listing = out.stdout
    for name in ("model.tflite", "labels.txt", "metadata.json", "grace_hopper.bmp"):
        assert name in listing
    assert "TRAINER-DONE" not in listing and "train.log" not in listing
    assert "HAS:" not in listing.replace("HAS:apt-get", "")  # apt is part of the base
    assert listing.strip().splitlines()[-1] == "10001"


def test_pulled_by_digest_it_serves_version_and_predictions(built: Built) -> None:
    pinned = refs.parse(built.result.images[0])
    by_digest = f"{pinned.name}@{pinned.digest}"
    _podman(["rmi", "-f", by_digest], built.podman_env)
    pulled = _podman(["pull", "-q", by_digest], built.podman_env, timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    port = free_port()
    name = f"ef-pkg-{port}"
    run = _podman(
        [
            "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:5000",
            "-e", f"CONTAINER_DIGEST={pinned.digest}", by_digest,
        ],
        built.podman_env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                logs = _podman(["logs", name], built.podman_env).stderr[-2000:]
                pytest.fail(f"model server in {by_digest} never became ready: {logs}")
            time.sleep(0.5)
        version = requests.get(f"{base}/version/", timeout=5).json()
        assert version["version"] == pinned.digest
        assert version["sha256"] == hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest()
        assert version["model_version"] == VERSION
        with (TESTDATA / "grace_hopper.bmp").open("rb") as image:
            answer = requests.post(f"{base}/predict/", files={"image": image}, timeout=30)
        assert answer.status_code == 200
        assert answer.json()["index"] == 653
        assert answer.json()["label"] == "military uniform"
    finally:
        _podman(["rm", "-f", name], built.podman_env)

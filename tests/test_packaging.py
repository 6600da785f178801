"""PodmanBuilder on the real local stack: GCS emulator -> podman build -> local registry.

The v2 Coral model from ../shared/testdata is uploaded to the GCS emulator as a model
package, built into the real model-server image for linux/amd64 and linux/arm64 once per
module (the base images, the wheelhouses and the installed dependency trees are cached
across runs; no build step runs inside an image, so arm64 builds without emulation),
pushed to a real docker-registry as one OCI index, then pulled by digest and run with
podman: the amd64 image natively, the arm64 image under qemu (binfmt_misc, `make install`).
A tiny image is built for both arches the same way and run under emulation too.
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
    config: Any  # PodmanConfig

    def client(self) -> RegistryClient:
        return RegistryClient(insecure=[self.registry_host], token_source=lambda: None)

    def platform(self, arch: str, image: str | None = None) -> Any:
        from edgefleet.packaging.transfer import platform_images

        return platform_images(self.client(), image or self.result.images[0])[arch]


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
            yield Built(
                result, registry.host, penv.env(), repo, PodmanBuilder(config), bucket, config
            )
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


def test_one_index_holds_amd64_and_arm64_and_armv7l_is_left_out_with_the_reason(
    built: Built,
) -> None:
    ref = refs.parse(built.result.images[0])
    index = built.client().get_manifest(ref)
    assert index.is_index
    platforms = sorted(
        f"{m['platform']['os']}/{m['platform']['architecture']}" for m in index.doc["manifests"]
    )
    assert platforms == ["linux/amd64", "linux/arm64"]
    assert built.result.detail.startswith("built x86_64, aarch64; left out armv7l: ")
    assert "no LiteRT" in built.result.detail


@pytest.mark.parametrize(("arch", "goarch"), [("x86_64", "amd64"), ("aarch64", "arm64")])
def test_each_platform_carries_oci_and_model_labels(built: Built, arch: str, goarch: str) -> None:
    client = built.client()
    ref = refs.parse(built.result.images[0])
    manifest = client.get_manifest(ref.with_digest(built.platform(arch).digest))
    assert not manifest.is_index
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
    assert config["architecture"] == goarch
    assert config["config"]["User"] == "10001:10001"
    assert "5000/tcp" in config["config"]["ExposedPorts"]
    assert config["config"]["Entrypoint"][-4:] == ["--model-dir", "/model", "--port", "5000"]


@pytest.fixture(scope="module")
def other_version(built: Built) -> BuildResult:
    v1_file = TESTDATA / "mobilenet_v1_0.25_128_quant.tflite"
    prefix = f"{MODEL}/mobilenet_1_1764000100/"
    upload_package(
        built.bucket, prefix, version="mobilenet_1_1764000100", model_file=v1_file, top1=400
    )
    return built.builder.build(
        BuildRequest(
            model=MODEL,
            version="mobilenet_1_1764000100",
            major=1,
            trained_at=1764000100,
            source=f"gs://edgefleet-models-pkg/{prefix}",
            arches=("x86_64", "aarch64"),
        )
    )


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_model_versions_share_every_layer_but_the_model(
    built: Built, other_version: BuildResult, arch: str
) -> None:
    """A device that runs one version downloads only the next one's model layer."""
    first = built.platform(arch).layers
    second = built.platform(arch, other_version.images[0]).layers
    assert len(first) == len(second) >= 4
    assert first[:-1] == second[:-1]  # base, state dirs, dependencies, edgefleet: shared
    assert first[-1] != second[-1]
    new_bytes = second[-1][1]
    v1_file = TESTDATA / "mobilenet_v1_0.25_128_quant.tflite"
    assert new_bytes < v1_file.stat().st_size + 2 * 1024 * 1024  # model + package, no runtime
    assert sum(size for _, size in first[:-1]) > 20 * new_bytes


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_first_install_is_within_150_mb_and_an_update_is_the_model(
    built: Built, other_version: BuildResult, arch: str
) -> None:
    """Compressed bytes a device pulls (MB = 10^6 bytes), from the registry's manifests."""
    new, old = built.platform(arch), built.platform(arch, other_version.images[0])
    print(f"\n{arch}: first install {new.first_install() / 1e6:.1f} MB, "
          f"update {new.update_from(old) / 1e6:.2f} MB")  # fmt: skip
    assert new.first_install() <= 150 * 10**6
    model = MODEL_FILE.stat().st_size
    assert model < new.update_from(old) < model + 2 * 10**6


def test_image_holds_the_package_and_no_shell_package_manager_or_build_tools(
    built: Built,
) -> None:
    ref = built.result.images[0]
    script = (
        "import os, shutil, importlib.util as u, json\n"
        "tools = ['sh', 'bash', 'gcc', 'cc', 'make', 'pip', 'pip3', 'apt-get', 'dpkg', 'perl']\n"
        "app = sorted(os.listdir('/opt/edgefleet/app'))\n"
        "print(json.dumps({'model': sorted(os.listdir('/model')),\n"
        "  'golden': sorted(os.listdir('/model/golden')),\n"
        "  'tools': [t for t in tools if shutil.which(t)],\n"
        "  'onnxruntime': u.find_spec('onnxruntime') is not None,\n"
        "  'app': [a for a in app if not a.endswith('.dist-info')],\n"
        "  'core': u.find_spec('edgefleet.core') is not None,\n"
        "  'telemetry': [m for m in ('urllib3', 'google.auth') if u.find_spec(m)],\n"
        "  'grpc': u.find_spec('grpc') is not None,\n"
        "  'uid': os.getuid()}))\n"
    )
    out = _podman(
        ["run", "--rm", "--network", "none", "--entrypoint", "python3", ref, "-c", script],
        built.podman_env,
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["model"] == ["golden", "labels.txt", "metadata.json", "model.tflite"]
    assert found["golden"] == ["grace_hopper.bmp"]  # no TRAINER-DONE, no training logs
    assert found["tools"] == [] and found["onnxruntime"] is False
    assert found["app"] == ["edgefleet", "model_server"] and found["core"]
    # Telemetry speaks Pub/Sub's REST API (model_server.publisher): no gRPC stack.
    assert found["telemetry"] == ["urllib3", "google.auth"] and found["grpc"] is False
    assert found["uid"] == 10001


def test_image_publishes_telemetry_to_the_pubsub_emulator(built: Built, pubsub: Any) -> None:
    """The image's own telemetry sender (its Python, its urllib3) against the real
    emulator on the host's loopback (host network): one batch arrives with its ids."""
    import uuid

    topic, sub = f"image-telemetry-{uuid.uuid4().hex[:8]}", f"sub-{uuid.uuid4().hex[:8]}"
    pubsub.create_pull_subscription(topic, sub)
    script = (
        "from model_server.outbox import Message\n"
        "from model_server.publisher import PubsubSender\n"
        f"send = PubsubSender({pubsub.project!r}, {topic!r}, emulator_host={pubsub.host!r},\n"
        "                    attributes={'device_id': 'image-test'})\n"
        "send([Message(1, 'in-image-1', b'{\"n\": 1}'), Message(2, 'in-image-2', b'{}')])\n"
    )
    ref = built.result.images[0]
    out = _podman(
        ["run", "--rm", "--network", "host", "--entrypoint", "python3", ref, "-c", script],
        built.podman_env,
    )
    assert out.returncode == 0, out.stderr
    got = {}
    deadline = time.monotonic() + 30
    while len(got) < 2 and time.monotonic() < deadline:
        for message in pubsub.pull(sub, timeout=5.0):
            got[message.attributes["id"]] = (message.data, dict(message.attributes))
    assert got == {
        "in-image-1": (b'{"n": 1}', {"device_id": "image-test", "id": "in-image-1"}),
        "in-image-2": (b"{}", {"device_id": "image-test", "id": "in-image-2"}),
    }


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_pulled_by_digest_it_serves_version_and_predictions(built: Built, arch: str) -> None:
    """amd64 natively; arm64 under qemu (binfmt_misc): the same golden answer from both."""
    pinned = refs.parse(built.result.images[0])
    digest = built.platform(arch).digest
    by_digest = f"{pinned.name}@{digest}"
    _podman(["rmi", "-f", by_digest], built.podman_env)
    pulled = _podman(["pull", "-q", by_digest], built.podman_env, timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    port = free_port()
    name = f"ef-pkg-{port}"
    started = time.monotonic()
    run = _podman(
        [
            "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:5000",
            "-e", f"CONTAINER_DIGEST={digest}", "-e", "EDGEFLEET_HOST=0.0.0.0", by_digest,
        ],
        built.podman_env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + (90 if arch == "x86_64" else 300)
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
        ready = time.monotonic() - started
        version = requests.get(f"{base}/version/", timeout=5).json()
        assert version["version"] == digest
        assert version["sha256"] == hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest()
        assert version["model_version"] == VERSION
        t0 = time.monotonic()
        with (TESTDATA / "grace_hopper.bmp").open("rb") as image:
            answer = requests.post(f"{base}/predict/", files={"image": image}, timeout=60)
        took = time.monotonic() - t0
        assert answer.status_code == 200
        assert answer.json()["index"] == 653
        assert answer.json()["label"] == "military uniform"
        print(f"\n{arch}: ready {ready:.1f} s after `podman run`, /predict/ {took:.2f} s")
    finally:
        _podman(["rm", "-f", name], built.podman_env)


def test_tiny_image_for_both_arches_is_one_index_and_runs_arm64_under_emulation(
    built: Built, tmp_path: Path
) -> None:
    """The multi-arch path on its own: a two-line Containerfile on each arch's base image,
    one index under one tag, and the arm64 image run under qemu reports aarch64. Each
    base's standard library is byte-compiled (its byte code is what the import uses)."""
    from edgefleet.packaging.base_image import ensure_base_image, tag_for
    from edgefleet.packaging.podman_builder import build_platforms

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY hello.py /hello.py\n"
        'ENTRYPOINT ["python3", "/hello.py"]\n'
    )
    (ctx / "hello.py").write_text(
        "import json, os, platform\n"
        "print(platform.machine(), os.path.isfile(json.__spec__.cached or ''))\n"
    )
    repo = refs.parse(f"{built.registry_host}/edgefleet/tiny:{int(time.time())}")
    env = {**os.environ, **built.podman_env}

    def base_for(arch: str) -> str:
        return ensure_base_image(tag_for(arch), arch=arch, env=env, progress=lambda _m: None)

    build_platforms(
        built.config, repo, ("x86_64", "aarch64"), ctx, {}, base_for, progress=lambda _m: None
    )
    images = {arch: built.platform(arch, str(repo)) for arch in ("x86_64", "aarch64")}
    assert set(images) == {"x86_64", "aarch64"}
    assert images["x86_64"].digest != images["aarch64"].digest
    for arch, image in images.items():
        ref = f"{repo.name}@{image.digest}"
        started = time.monotonic()
        out = _podman(["run", "--rm", "--network", "none", ref], built.podman_env, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"{arch} True"
        print(f"\ntiny {arch}: `podman run` {time.monotonic() - started:.1f} s")

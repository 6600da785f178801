"""The Cloud Build request: generated body checked, and its prepare step run for real.

Cloud Build itself cannot run here; the prepare step's command line is taken from the
generated request and executed against the GCS emulator, so the cloud build runs the
same, tested code path as the local builder.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.cloud import storage
from edgefleet.cloud.build import BuildRequest, builder_from_env
from edgefleet.core.errors import ConfigError, InvalidInput
from edgefleet.packaging import cloudbuild
from edgefleet.packaging.cloudbuild import CloudBuildBuilder, CloudBuildConfig

REPO = Path(__file__).resolve().parent.parent
VERSION = "mobilenet_2_1764000000"
ENV = {
    "BUILDER": "cloudbuild",
    "CLOUDBUILD_PROJECT": "acme-fleet",
    "CLOUDBUILD_REGION": "europe-west1",
    "IMAGE_REPOSITORY": "registry.example.internal/acme-fleet/edgefleet",
    "CLOUDBUILD_SOURCE": "gs://acme-fleet-edgefleet-build/source/edgefleet-src.tar.gz",
    "CLOUDBUILD_SERVICE_ACCOUNT": "edgefleet-builder@acme-fleet.iam.gserviceaccount.com",
    "CLOUDBUILD_PYTHON_IMAGE": "mirror.example.internal/library/python:3.11-slim@sha256:"
    + "1" * 64,
    "CLOUDBUILD_DOCKER_IMAGE": "mirror.example.internal/library/docker:27-cli@sha256:" + "2" * 64,
    "CLOUDBUILD_BINFMT_IMAGE": "mirror.example.internal/tonistiigi/binfmt@sha256:" + "3" * 64,
}


def request(bucket: str = "acme-models", arches: tuple[str, ...] = ("x86_64",)) -> BuildRequest:
    return BuildRequest(
        "mobilenet", VERSION, 2, 1764000000, f"gs://{bucket}/mobilenet/{VERSION}/", arches
    )


def steps(body: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {s["id"]: s for s in body["steps"]}


def test_single_arch_request() -> None:
    config = CloudBuildConfig.from_env(ENV)
    body = cloudbuild.build_request_body(config, request())
    assert list(steps(body)) == ["prepare", "buildx", "build"]  # no emulation needed
    assert body["source"]["storageSource"] == {
        "bucket": "acme-fleet-edgefleet-build",
        "object": "source/edgefleet-src.tar.gz",
    }
    assert body["serviceAccount"] == (
        "projects/acme-fleet/serviceAccounts/edgefleet-builder@acme-fleet.iam.gserviceaccount.com"
    )
    assert body["options"]["logging"] == "CLOUD_LOGGING_ONLY"  # required with a custom SA
    build = steps(body)["build"]
    command = shlex.split(build["args"][1].split(" $(cat")[0])
    assert command[:3] == ["docker", "buildx", "build"]
    assert command[command.index("--platform") + 1] == "linux/amd64"
    tags = [command[i + 1] for i, a in enumerate(command) if a == "--tag"]
    assert tags == [
        f"registry.example.internal/acme-fleet/edgefleet/mobilenet:{VERSION}",
        "registry.example.internal/acme-fleet/edgefleet/mobilenet:latest",
    ]
    assert "--push" in command
    cache = "registry.example.internal/acme-fleet/edgefleet/mobilenet:buildcache"
    assert command[command.index("--cache-from") + 1] == f"type=registry,ref={cache}"
    assert command[command.index("--cache-to") + 1].startswith(f"type=registry,ref={cache},")
    assert command[command.index("--file") + 1].endswith("/Containerfile")
    assert set(build["waitFor"]) == {"prepare", "buildx"}


def test_multi_arch_request_builds_every_platform_with_an_image() -> None:
    """armv7l has no image (no LiteRT/ONNX Runtime wheel): left out of the build."""
    base = "localhost/base:1@sha256:" + "4" * 64
    config = CloudBuildConfig.from_env({**ENV, "BASE_IMAGE": base})
    body = cloudbuild.build_request_body(config, request(arches=("x86_64", "aarch64", "armv7l")))
    by_id = steps(body)
    assert by_id["binfmt"]["args"][-2:] == ["--install", "arm64"]
    command = by_id["build"]["args"][1]
    assert "--platform linux/amd64,linux/arm64 " in command
    assert "arm/v7" not in command
    assert f"--build-arg=BASE_IMAGE={base}" in command
    assert "binfmt" in by_id["build"]["waitFor"]


def test_request_is_validated_before_anything_is_submitted() -> None:
    config = CloudBuildConfig.from_env(ENV)
    bad = BuildRequest("mobilenet", "mobilenet_2_x; rm -rf /", 2, 1, "gs://a/b/", ("x86_64",))
    with pytest.raises(InvalidInput):
        cloudbuild.build_request_body(config, bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"CLOUDBUILD_PROJECT": ""}, "CLOUDBUILD_PROJECT"),
        ({"CLOUDBUILD_PROJECT": "Bad_Project"}, "invalid project"),
        ({"CLOUDBUILD_REGION": "mars"}, "invalid Cloud Build region"),
        ({"IMAGE_REPOSITORY": ""}, "IMAGE_REPOSITORY"),
        ({"CLOUDBUILD_SOURCE": "/tmp/src.tgz"}, "CLOUDBUILD_SOURCE"),
        ({"CLOUDBUILD_SERVICE_ACCOUNT": "someone@example.com"}, "invalid service account"),
        ({"CLOUDBUILD_PYTHON_IMAGE": ""}, "CLOUDBUILD_PYTHON_IMAGE is not set"),
        ({"CLOUDBUILD_DOCKER_IMAGE": "docker:27-cli"}, "CLOUDBUILD_DOCKER_IMAGE=.* not pinned"),
        ({"CLOUDBUILD_BINFMT_IMAGE": "binfmt@sha256:abc"}, "CLOUDBUILD_BINFMT_IMAGE=.* not pinned"),
        ({"BASE_IMAGE": "localhost/base:1"}, "BASE_IMAGE=.* not pinned"),
        ({"CLOUDBUILD_EMULATOR_HOST": "http://x"}, "invalid CLOUDBUILD_EMULATOR_HOST"),
    ],
)
def test_config_errors_name_the_setting(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CloudBuildConfig.from_env({**ENV, **change})


def test_every_step_image_is_pinned_by_digest() -> None:
    config = CloudBuildConfig.from_env(ENV)
    body = cloudbuild.build_request_body(config, request(arches=("x86_64", "aarch64")))
    images = {s["name"] for s in body["steps"]}
    images |= {a for s in body["steps"] for a in s["args"] if "binfmt" in a and "@" in a}
    assert images == {ENV[k] for k in ENV if k.endswith("_IMAGE") and k.startswith("CLOUDBUILD")}


def test_builder_from_env_picks_cloud_build() -> None:
    builder = builder_from_env(ENV)
    assert isinstance(builder, CloudBuildBuilder)
    assert cloudbuild.build_url(builder.config).endswith(
        "/v1/projects/acme-fleet/locations/europe-west1/builds"
    )


def test_the_prepare_step_runs_against_the_emulator(bucket: storage.Bucket, tmp_path: Path) -> None:
    """Run the generated prepare command (minus its pip install) on the real emulator."""
    testdata = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "coral"
    model = testdata / "mobilenet_v1_0.25_128_quant.tflite"
    if not model.is_file():
        pytest.fail(f"{model} is missing: the shared test data must be in {testdata}")
    prefix = f"mobilenet/{VERSION}/"
    bucket.write(prefix + "model.tflite", model.read_bytes())
    bucket.write(prefix + "labels.txt", (testdata / "imagenet_labels.txt").read_bytes())
    bucket.write(prefix + "metadata.json", json.dumps({"version": VERSION}).encode())
    bucket.write(prefix + "TRAINER-DONE", b"")
    body = cloudbuild.build_request_body(CloudBuildConfig.from_env(ENV), request(bucket.name))
    script = steps(body)["prepare"]["args"][1]
    pip_install, prepare = script.split(" && ")
    assert pip_install.startswith("pip install") and pip_install.endswith(cloudbuild.WORKSPACE)
    argv = shlex.split(prepare)
    assert argv[:4] == ["python", "-m", "edgefleet.packaging", "prepare"]
    argv[0] = sys.executable
    ctx = tmp_path / "ctx"
    argv[argv.index("--context") + 1] = str(ctx)
    argv[argv.index("--source-root") + 1] = str(REPO)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (ctx / "model").iterdir()) == [
        "labels.txt",
        "metadata.json",
        "model.tflite",
    ]
    assert (ctx / "Containerfile").read_text() == (REPO / "model_server/Containerfile").read_text()
    # The server role's edgefleet, unpacked; each platform's installed dependencies.
    assert (ctx / "app" / "model_server" / "__main__.py").is_file()
    assert not (ctx / "app" / "edgefleet" / "cloud").exists()
    assert (ctx / "site" / "amd64" / "flask").is_dir()
    args = (ctx / "build-args").read_text().split()
    assert f"--build-arg=MODEL_VERSION={VERSION}" in args
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert f"--build-arg=MODEL_SHA256={sha}" in args


def test_the_prepare_step_fails_in_one_line_on_a_bad_package(bucket: storage.Bucket) -> None:
    prefix = f"mobilenet/{VERSION}/"
    bucket.write(prefix + "labels.txt", b"cat\n")
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.packaging", "prepare", "--model", "mobilenet",
         "--version", VERSION, "--major", "2", "--trained-at", "1764000000",
         "--source", f"gs://{bucket.name}/{prefix}", "--arches", "x86_64",
         "--context", "/nonexistent/ctx", "--source-root", str(REPO)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("edgefleet: ") and "has no model" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

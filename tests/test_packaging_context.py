"""Model package validation, build requests, arch planning and wheel selection.

Pure logic plus the GCS emulator for fetching; no image is built here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgefleet.cloud import storage
from edgefleet.cloud.build import BuildRequest, builder_from_env
from edgefleet.core.errors import ConfigError, InvalidInput
from edgefleet.packaging import context, wheelhouse
from edgefleet.packaging.podman_builder import PodmanBuilder, PodmanConfig, runnable_arches
from edgefleet.packaging.support import plan_arches, skipped_message

REPO = Path(__file__).resolve().parent.parent
TFLITE = b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64
VERSION = "mobilenet_2_1764000000"


def package(**overrides: bytes | None) -> dict[str, bytes]:
    files: dict[str, bytes | None] = {
        "model.tflite": TFLITE,
        "labels.txt": b"background\ncat\n",
        "golden/cat.bmp": b"BM...",
        "metadata.json": json.dumps(
            {"name": "mobilenet", "version": VERSION, "golden": [{"input": "golden/cat.bmp"}]}
        ).encode(),
    }
    files.update(overrides)
    return {k: v for k, v in files.items() if v is not None}


def request(**overrides: object) -> BuildRequest:
    fields: dict[str, object] = {
        "model": "mobilenet",
        "version": VERSION,
        "major": 2,
        "trained_at": 1764000000,
        "source": f"gs://models/mobilenet/{VERSION}/",
        "arches": ("x86_64",),
    }
    fields.update(overrides)
    return BuildRequest(**fields)  # type: ignore[arg-type]


def test_a_complete_package_is_accepted() -> None:
    pkg = context.validate_package(package(), version=VERSION)
    assert pkg.model_file == "model.tflite" and pkg.runtime == "tflite"
    assert len(pkg.model_sha256) == 64
    onnx = context.validate_package(package(**{"model.tflite": None, "model.onnx": b"\x08\x07"}))
    assert onnx.runtime == "onnx"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.tflite": None}, "has no model"),
        ({"labels.txt": None}, "has no labels.txt"),
        ({"labels.txt": b"\n \n"}, "has no labels"),
        ({"labels.txt": b"\xff\xfe"}, "not UTF-8"),
        ({"model.onnx": b"\x08"}, "both model.tflite and model.onnx"),
        ({"model.tflite": b"not a flatbuffer"}, "not a TFLite flatbuffer"),
        ({"model_edgetpu.tflite": b"garbage!"}, "not a TFLite flatbuffer"),
        ({"metadata.json": b"{"}, "not valid JSON"),
        ({"metadata.json": b"[]"}, "must be a JSON object"),
        ({"metadata.json": b'{"version": "mobilenet_3_1764000001"}'}, "says version"),
        ({"metadata.json": b'{"task": "audio"}'}, "task must be one of"),
        ({"metadata.json": b'{"golden": [{"input": "../etc/passwd"}]}'}, "must be golden/FILE"),
        ({"metadata.json": b'{"golden": [{"input": "golden/a/b.bmp"}]}'}, "must be golden/FILE"),
        ({"metadata.json": b'{"golden": [{"input": "golden/missing.bmp"}]}'}, "lacks"),
        ({"metadata.json": b'{"golden": {"input": "golden/cat.bmp"}}'}, "must be a list"),
    ],
)
def test_a_broken_package_is_refused(overrides: dict[str, bytes | None], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        context.validate_package(package(**overrides), version=VERSION)


def test_only_contract_members_have_limits() -> None:
    assert context.limit_for("model.tflite") == 512 * context.MiB
    assert context.limit_for("golden/x.bmp") == context.GOLDEN_LIMIT
    for name in ("TRAINER-DONE", "golden/../x", "golden/.hidden", "x/model.tflite", "golden/a/b"):
        assert context.limit_for(name) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "Mobile Net"}, "invalid model name"),
        ({"version": "mobilenet_2"}, "invalid version"),
        ({"version": "other_2_1764000000"}, "invalid version"),
        ({"major": 3}, "disagrees"),
        ({"trained_at": 1}, "disagrees"),
        ({"source": "s3://models/x/"}, "invalid model source"),
        ({"source": "gs://models/../x/"}, "invalid model source"),
        ({"source": "gs://models/mobilenet"}, "invalid model source"),
        ({"arches": ()}, "no architectures"),
        ({"arches": ("sparc",)}, "unknown arch"),
    ],
)
def test_a_bad_build_request_is_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        context.check_request(request(**overrides))


def test_fetch_takes_package_members_and_leaves_the_rest(bucket: storage.Bucket) -> None:
    prefix = f"mobilenet/{VERSION}/"
    for name, data in package().items():
        bucket.write(prefix + name, data)
    bucket.write(prefix + "TRAINER-DONE", b"")
    bucket.write(prefix + "checkpoints/ckpt-1", b"x" * 1000)
    bucket.write(f"mobilenet/{VERSION}x/model.onnx", b"neighbour")  # another prefix
    pkg = context.fetch_package(bucket, prefix, version=VERSION)
    assert sorted(pkg.files) == sorted(package())
    assert pkg.files["model.tflite"] == TFLITE


def test_fetch_refuses_an_oversized_member(bucket: storage.Bucket) -> None:
    prefix = f"mobilenet/{VERSION}/"
    for name, data in package().items():
        bucket.write(prefix + name, data)
    bucket.write(prefix + "labels.txt", b"x\n" * (context.LIMITS["labels.txt"] // 2 + 1))
    with pytest.raises(InvalidInput, match="over"):
        context.fetch_package(bucket, prefix)


def test_builder_refuses_a_package_without_model_before_building(bucket: storage.Bucket) -> None:
    prefix = f"mobilenet/{VERSION}/"
    bucket.write(prefix + "labels.txt", b"cat\n")
    bucket.write(prefix + "TRAINER-DONE", b"")
    config = PodmanConfig(
        image_repository="127.0.0.1:1/edgefleet",
        socket="unix:///nonexistent/podman.sock",  # never reached
    )
    builder = PodmanBuilder(config, progress=lambda _m: None)
    with pytest.raises(InvalidInput, match="has no model"):
        builder.build(request(source=f"gs://{bucket.name}/{prefix}"))


def test_runnable_arches_are_the_host_and_enabled_qemu_handlers(tmp_path: Path) -> None:
    assert runnable_arches(tmp_path, host="x86_64") == {"x86_64"}
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /usr/bin/qemu-aarch64-static\n")
    (tmp_path / "qemu-arm").write_text("disabled\ninterpreter /usr/bin/qemu-arm-static\n")
    assert runnable_arches(tmp_path, host="x86_64") == {"x86_64", "aarch64"}


def test_arch_plan_builds_x86_64_and_aarch64_and_says_why_not_armv7l() -> None:
    built, skipped = plan_arches(("x86_64", "aarch64", "armv7l"))
    assert (built, skipped) == (("x86_64", "aarch64"), ("armv7l",))
    message = skipped_message(built, skipped)
    assert message.startswith("built x86_64, aarch64; left out armv7l: ")
    assert "no LiteRT" in message and "64-bit" in message


def test_image_requirements_follow_the_model_runtime() -> None:
    pyproject = REPO / "pyproject.toml"
    names = {
        rt: {wheelhouse.requirement_name(r) for r in wheelhouse.image_requirements(pyproject, rt)}
        for rt in ("tflite", "onnx")
    }
    assert "ai-edge-litert" in names["tflite"] and "onnxruntime" not in names["tflite"]
    assert "onnxruntime" in names["onnx"] and "ai-edge-litert" not in names["onnx"]
    for rt in names:
        assert {"flask", "waitress", "pillow", "numpy", "urllib3", "google-auth"} <= names[rt]
        # Telemetry speaks Pub/Sub's REST API: no gRPC stack (~50 MiB resident).
        unwanted = {"scipy", "kubernetes", "jinja2", "google-cloud-storage", "google-cloud-pubsub"}
        assert not names[rt] & unwanted
    # Version bounds are pyproject's own.
    server = wheelhouse.requirements(pyproject)
    assert set(wheelhouse.image_requirements(pyproject, "tflite")) <= set(server)


def test_wheelhouse_key_follows_pyproject_content(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text((REPO / "pyproject.toml").read_text())
    key = wheelhouse.cache_key(pyproject, "x86_64")
    assert key == wheelhouse.cache_key(pyproject, "x86_64")
    assert key != wheelhouse.cache_key(pyproject, "aarch64")
    pyproject.write_text(pyproject.read_text().replace("flask>=3.0", "flask>=3.1"))
    assert key != wheelhouse.cache_key(pyproject, "x86_64")


def test_cached_wheelhouse_is_reused_without_pip(tmp_path: Path) -> None:
    """A completed cache entry is returned as is (a pip run would take seconds)."""
    root = tmp_path / "src"
    root.mkdir()
    (root / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    key = wheelhouse.cache_key(root / "pyproject.toml", "x86_64")
    entry = tmp_path / "cache" / "wheelhouse" / f"x86_64-{key}"
    entry.mkdir(parents=True)
    (entry / ".complete").write_text("")
    started = time.monotonic()
    got = wheelhouse.ensure_dependency_wheels(root, "x86_64", cache_dir=tmp_path / "cache")
    assert got == entry and time.monotonic() - started < 1.0


def test_podman_config_from_env() -> None:
    env = {
        "IMAGE_REPOSITORY": "127.0.0.1:5000/edgefleet/",
        "PODMAN_SOCKET": "/run/ef/podman.sock",
        "INSECURE_REGISTRIES": "127.0.0.1:5000",
        "CONTAINERS_CONF": "/x/containers.conf",
        "HOME": "/root",
    }
    config = PodmanConfig.from_env(env)
    assert config.image_repository == "127.0.0.1:5000/edgefleet"
    assert config.socket == "unix:///run/ef/podman.sock"
    assert config.insecure_registries == {"127.0.0.1:5000"}
    assert config.podman_env == {"CONTAINERS_CONF": "/x/containers.conf"}
    assert config.base_image is None
    assert isinstance(builder_from_env({**env, "BUILDER": "podman"}), PodmanBuilder)
    with pytest.raises(ConfigError, match="IMAGE_REPOSITORY"):
        PodmanConfig.from_env({"PODMAN_SOCKET": "/s"})
    with pytest.raises(ConfigError, match="PODMAN_SOCKET"):
        PodmanConfig.from_env({"IMAGE_REPOSITORY": "127.0.0.1:5000/edgefleet"})
    with pytest.raises(InvalidInput):
        PodmanConfig.from_env({"IMAGE_REPOSITORY": "Not A Repo", "PODMAN_SOCKET": "/s"})


def test_project_wheel_is_reproducible_and_leaves_stale_build_output_out(tmp_path: Path) -> None:
    """Same source, same wheel bytes (the image's runtime layer is then shared between
    model versions); a module left in an old in-tree build/lib is not shipped."""
    import hashlib
    import shutil
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", ".edgefleet"))
    stale = src / "build" / "lib" / "edgefleet" / "removed_long_ago.py"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("raise RuntimeError('shipped a deleted module')\n")
    first = wheelhouse.build_project_wheel(src, tmp_path / "one")
    time.sleep(1.1)  # a wheel stamped with the build time would now differ
    second = wheelhouse.build_project_wheel(src, tmp_path / "two")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(first) == digest(second)
    names = zipfile.ZipFile(first).namelist()
    assert "device/podcheck.py" in names and "model_server/__main__.py" in names
    assert not any("removed_long_ago" in n for n in names)

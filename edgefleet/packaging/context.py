"""Fetch a model package from GCS, validate it, and assemble an image build context.

The model package contract (what training writes to ``gs://MODELS/MODEL/VERSION/`` and
what the image holds at ``/model``)::

    model.tflite | model.onnx      the CPU model (required)
    model_edgetpu.tflite           optional Edge TPU variant
    labels.txt                     one label per line, or "N label" (required)
    metadata.json                  optional {"name", "version", "golden": [...], "task", ...}
    golden/FILE                    the golden self-test samples metadata names

Everything in the bucket is external input: names are matched against that list (other
objects such as TRAINER-DONE or training logs are left out of the image), every object has
a size limit, and the metadata's golden files must be part of the package. A package that
breaks a rule is refused with :class:`InvalidInput` and nothing is built.

The build context holds ``Containerfile``, ``model/`` (the package), ``site/GOARCH/``
(the dependencies installed for each target platform, see :mod:`.site`), ``app/`` (the
edgefleet wheel of the ``server`` role, unpacked: core + model_server) and ``state/``
(the empty directories the server may write, owned by its user).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.cloud.build import BuildRequest
from edgefleet.core import layout, refs
from edgefleet.core.errors import InvalidInput
from edgefleet.packaging import site, wheelhouse
from edgefleet.packaging.base_image import Progress, stderr_progress

MiB = 1024 * 1024
MODEL_FILES = ("model.tflite", "model.onnx")
EDGETPU_FILE = "model_edgetpu.tflite"
LABELS_FILE = "labels.txt"
METADATA_FILE = "metadata.json"
GOLDEN_DIR = "golden"
MARKER = "TRAINER-DONE"
# Per-object limits: a model bucket is trusted to hold models, not arbitrary amounts.
LIMITS: dict[str, int] = {
    "model.tflite": 512 * MiB,
    "model.onnx": 512 * MiB,
    EDGETPU_FILE: 512 * MiB,
    LABELS_FILE: 4 * MiB,
    METADATA_FILE: 1 * MiB,
}
GOLDEN_LIMIT = 16 * MiB
MAX_GOLDEN_FILES = 64
MAX_TOTAL = 1024 * MiB
TASKS = ("image", "tabular")

_GOLDEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MODEL_NAME = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")
_VERSION = re.compile(r"^(?P<model>[a-z0-9][a-z0-9.-]*)_(?P<major>[0-9]{1,9})_(?P<ts>[0-9]{9,11})$")
_SOURCE = re.compile(r"^gs://(?P<bucket>[a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/(?P<prefix>.+/)$")

CONTAINERFILE = Path("model_server") / "Containerfile"
# Device arch -> (TARGETARCH, TARGETVARIANT) as buildah/buildx set them.
TARGET = {"x86_64": ("amd64", ""), "aarch64": ("arm64", ""), "armv7l": ("arm", "v7")}
PLATFORM = {"x86_64": "linux/amd64", "aarch64": "linux/arm64", "armv7l": "linux/arm/v7"}


@dataclass(frozen=True)
class ModelPackage:
    """A validated model package, held in memory (name in package -> bytes)."""

    files: Mapping[str, bytes]
    model_file: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model_sha256(self) -> str:
        return hashlib.sha256(self.files[self.model_file]).hexdigest()

    @property
    def runtime(self) -> str:
        return "onnx" if self.model_file.endswith(".onnx") else "tflite"

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())


def check_request(request: BuildRequest) -> BuildRequest:
    """Validate a build request (it comes from an event: external input)."""
    if not _MODEL_NAME.match(request.model or "") or len(request.model) > 64:
        raise InvalidInput(
            f"invalid model name {request.model!r}: lowercase letters, digits, '-' or '.'"
        )
    match = _VERSION.match(request.version or "")
    if not match or match["model"] != request.model:
        raise InvalidInput(
            f"invalid version {request.version!r}: expected {request.model}_MAJOR_UNIXTIME"
        )
    if int(match["major"]) != request.major or int(match["ts"]) != request.trained_at:
        raise InvalidInput(f"version {request.version!r} disagrees with major/trained_at")
    refs.check_tag(request.version)
    parse_source(request.source)
    if not request.arches:
        raise InvalidInput("build request names no architectures")
    for arch in request.arches:
        layout.check_arch(arch)
    return request


def parse_source(source: str) -> tuple[str, str]:
    """``gs://BUCKET/PREFIX/`` -> (bucket, prefix); refuse anything else."""
    match = _SOURCE.match(source or "")
    if not match or ".." in match["prefix"].split("/") or "//" in match["prefix"]:
        raise InvalidInput(f"invalid model source {source!r}: expected gs://BUCKET/MODEL/VERSION/")
    return match["bucket"], match["prefix"]


def limit_for(name: str) -> int | None:
    """The size limit of a package member, or None when ``name`` is not part of a package."""
    if name in LIMITS:
        return LIMITS[name]
    parts = name.split("/")
    if len(parts) == 2 and parts[0] == GOLDEN_DIR and _GOLDEN_NAME.match(parts[1]):
        return GOLDEN_LIMIT
    return None


def fetch_package(bucket: Any, prefix: str, *, version: str | None = None) -> ModelPackage:
    """Read and validate the package under ``prefix`` of an edgefleet.cloud.storage.Bucket."""
    wanted: dict[str, int] = {}
    for info in bucket.list_objects(prefix):
        rel = info.name[len(prefix) :]
        limit = limit_for(rel)
        if limit is None:
            continue  # TRAINER-DONE, training logs, checkpoints: not part of the image
        if info.size > limit:
            raise InvalidInput(f"gs://{bucket.name}/{info.name} is {info.size} bytes, over {limit}")
        wanted[rel] = info.size
    if sum(1 for n in wanted if n.startswith(GOLDEN_DIR + "/")) > MAX_GOLDEN_FILES:
        raise InvalidInput(
            f"gs://{bucket.name}/{prefix}: more than {MAX_GOLDEN_FILES} golden files"
        )
    if sum(wanted.values()) > MAX_TOTAL:
        raise InvalidInput(f"gs://{bucket.name}/{prefix}: package is over {MAX_TOTAL} bytes")
    files: dict[str, bytes] = {}
    for rel in sorted(wanted):
        blob = bucket.read(prefix + rel, max_bytes=limit_for(rel))
        if blob is None:
            raise InvalidInput(f"gs://{bucket.name}/{prefix}{rel} disappeared while reading")
        files[rel] = blob.data
    return validate_package(files, where=f"gs://{bucket.name}/{prefix}", version=version)


def validate_package(
    files: Mapping[str, bytes], *, where: str = "package/", version: str | None = None
) -> ModelPackage:
    """Apply the package contract to ``files``; return the package or raise InvalidInput."""
    models = [name for name in MODEL_FILES if name in files]
    if not models:
        raise InvalidInput(f"{where} has no model: it needs model.tflite or model.onnx")
    if len(models) > 1:
        raise InvalidInput(f"{where} has both model.tflite and model.onnx: keep one")
    model_file = models[0]
    for name in (model_file, EDGETPU_FILE):
        if name.endswith(".tflite") and name in files and files[name][4:8] != b"TFL3":
            raise InvalidInput(f"{where}{name} is not a TFLite flatbuffer (no TFL3 identifier)")
    if not files[model_file]:
        raise InvalidInput(f"{where}{model_file} is empty")
    if LABELS_FILE not in files:
        raise InvalidInput(f"{where} has no labels.txt: add one label per line")
    try:
        labels = files[LABELS_FILE].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{where}labels.txt is not UTF-8") from exc
    if not any(line.strip() for line in labels.splitlines()):
        raise InvalidInput(f"{where}labels.txt has no labels")
    metadata = _check_metadata(files, where, version)
    return ModelPackage(dict(files), model_file, metadata)


def _check_metadata(files: Mapping[str, bytes], where: str, version: str | None) -> dict[str, Any]:
    if METADATA_FILE not in files:
        return {}
    try:
        metadata = json.loads(files[METADATA_FILE])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{where}metadata.json is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise InvalidInput(f"{where}metadata.json must be a JSON object")
    for key in ("name", "version"):
        if key in metadata and not isinstance(metadata[key], str):
            raise InvalidInput(f"{where}metadata.json: {key!r} must be a string")
    if version and metadata.get("version") not in (None, version):
        raise InvalidInput(
            f"{where}metadata.json says version {metadata['version']!r}, "
            f"but the package is {version!r}"
        )
    if metadata.get("task", "image") not in TASKS:
        raise InvalidInput(f"{where}metadata.json: task must be one of {', '.join(TASKS)}")
    golden = metadata.get("golden", [])
    if not isinstance(golden, list):
        raise InvalidInput(f"{where}metadata.json: golden must be a list")
    for entry in golden:
        path = entry.get("input") if isinstance(entry, dict) else None
        if not isinstance(path, str) or limit_for(path) != GOLDEN_LIMIT:
            raise InvalidInput(f"{where}metadata.json: golden input {path!r} must be golden/FILE")
        if path not in files:
            raise InvalidInput(f"{where}metadata.json names {path}, which the package lacks")
    return metadata


@dataclass(frozen=True)
class BuildContext:
    path: Path
    package: ModelPackage
    arches: tuple[str, ...]

    def build_args(
        self, request: BuildRequest, *, created: str, revision: str = ""
    ) -> dict[str, str]:
        """The Containerfile's label arguments (BASE_IMAGE and TARGET* are per platform)."""
        pkg = self.package
        return {
            "MODEL_NAME": request.model,
            "MODEL_VERSION": request.version,
            "MODEL_MAJOR": str(request.major),
            "MODEL_TRAINED_AT": str(request.trained_at),
            "MODEL_SHA256": pkg.model_sha256,
            "MODEL_FILE": pkg.model_file,
            "MODEL_RUNTIME": pkg.runtime,
            "MODEL_EDGETPU": "true" if EDGETPU_FILE in pkg.files else "false",
            "MODEL_SOURCE": request.source,
            "CREATED": created,
            "REVISION": revision,
        }


def write_package(package: ModelPackage, dest: Path) -> None:
    for rel, data in package.files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def assemble(
    package: ModelPackage,
    dest: Path,
    arches: Sequence[str],
    *,
    project_root: Path,
    cache_dir: Path | None = None,
    progress: Progress = stderr_progress,
    wheels: Callable[..., Path] = wheelhouse.ensure_dependency_wheels,
) -> BuildContext:
    """Lay out the build context in ``dest`` (which must be empty or absent)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(project_root / CONTAINERFILE, dest / "Containerfile")
    write_package(package, dest / "model")
    image_reqs = wheelhouse.image_requirements(project_root / "pyproject.toml", package.runtime)
    for arch in arches:
        goarch, variant = TARGET[arch]
        reqs = wheelhouse.pinned(image_reqs, arch)
        deps = wheels(project_root, arch, cache_dir=cache_dir, progress=progress)
        tree = site.ensure_site(deps, reqs, arch, cache_dir=cache_dir, progress=progress)
        site.stage_tree(tree, dest / "site" / f"{goarch}{variant}")
    stage_app(project_root, dest, "server")
    return BuildContext(dest, package, tuple(arches))


def stage_app(project_root: Path, dest: Path, role: str) -> None:
    """``app/`` (the role's edgefleet wheel, unpacked) and ``state/`` (empty directories the
    image's program may write) of a build context: the layout both Containerfiles read."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-wheel-") as tmp:
        wheel = wheelhouse.build_project_wheel(project_root, Path(tmp), role=role)
        site.unpack_wheel(wheel, dest / "app")
    for rel in STATE_DIRS:
        (dest / "state" / rel).mkdir(parents=True, exist_ok=True)
    for directory, dirs, _files in os.walk(dest / "state"):
        for name in dirs:
            os.utime(os.path.join(directory, name), (site.EPOCH, site.EPOCH))


# Below the context's state/: the spool (outbox) and the state directory of the image's user.
STATE_DIRS = ("spool/outbox", "lib")


BUILD_ARGS_FILE = "build-args"


def prepare(
    request: BuildRequest,
    dest: Path,
    arches: Sequence[str],
    *,
    bucket: Any,
    project_root: Path,
    created: str,
    revision: str = "",
    cache_dir: Path | None = None,
    progress: Progress = stderr_progress,
) -> tuple[BuildContext, dict[str, str]]:
    """Fetch + validate the package and lay out the context: the steps every builder shares.

    Also writes ``dest/build-args`` (``--build-arg=K=V`` per line) for builders that run
    ``docker buildx`` from a shell (Cloud Build); values never contain white space.
    """
    check_request(request)
    _, prefix = parse_source(request.source)
    package = fetch_package(bucket, prefix, version=request.version)
    progress(
        f"fetched {request.source} ({len(package.files)} files, {package.size} bytes, "
        f"model sha256 {package.model_sha256[:12]}…)"
    )
    ctx = assemble(
        package, dest, arches, project_root=project_root, cache_dir=cache_dir, progress=progress
    )
    args = ctx.build_args(request, created=created, revision=revision)
    for key, value in args.items():
        if any(c.isspace() for c in value):
            raise InvalidInput(f"build argument {key}={value!r} contains white space")
    (dest / BUILD_ARGS_FILE).write_text("".join(f"--build-arg={k}={v}\n" for k, v in args.items()))
    return ctx, args

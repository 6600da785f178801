"""The model package: which files make up a model, its labels and its metadata.

Contract (baked into images at /model, written by training under MODELS/MODEL/VERSION/):
``model.tflite`` | ``model.onnx`` (CPU), optional ``model_edgetpu.tflite``, ``labels.txt``,
optional ``metadata.json`` and the ``golden/`` files it names. Everything read here comes
from the operator's package, never from a client; it is still validated, so a broken
package fails at start-up with one line instead of misbehaving later.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgefleet.core.errors import ConfigError

EDGETPU_CUSTOM_OP = b"edgetpu-custom-op"
MAX_METADATA_BYTES = 4 * 1024 * 1024
MAX_LABELS_BYTES = 8 * 1024 * 1024
TASKS = ("image", "tabular")

_NUMBERED = re.compile(r"^\s*(\d+)[\s:]+(\S.*?)\s*$")


class PackageError(ConfigError):
    """The model package is incomplete or malformed."""


@dataclass(frozen=True)
class Labels:
    """Class index -> label. Missing indices read as the index itself."""

    by_index: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.by_index)

    def get(self, index: int) -> str:
        return self.by_index.get(index, str(index))


def parse_labels(text: str) -> Labels:
    """Both common formats: one label per line (line N = class N), or ``N label`` lines.

    The ``N label`` reading is used only when every non-empty line has that shape and the
    numbers are unique; otherwise a label such as ``3 toed sloth`` would be misread.
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    non_empty = [line for line in lines if line.strip()]
    matches = [_NUMBERED.match(line) for line in non_empty]
    if non_empty and all(matches):
        numbered = {int(m.group(1)): m.group(2) for m in matches if m}
        if len(numbered) == len(non_empty):
            return Labels(numbered)
    return Labels({i: line.strip() for i, line in enumerate(lines)})


def load_labels(path: Path) -> Labels:
    try:
        data = _read_bounded(path, MAX_LABELS_BYTES)
        return parse_labels(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise PackageError(f"labels file {path} is not UTF-8 text ({exc.reason})") from None


@dataclass(frozen=True)
class Golden:
    input: str
    top1: int


@dataclass(frozen=True)
class Metadata:
    name: str = ""
    version: str = ""
    golden: tuple[Golden, ...] = ()
    reference: dict[str, Any] | None = None
    task: str = ""
    input_mean: float | None = None
    input_std: float | None = None


def _relative_path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 512:
        raise PackageError(f"{where}: must be a relative path inside the package")
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or "\\" in value or "\x00" in value:
        raise PackageError(f"{where}: {value!r} must be a relative path inside the package")
    return value


def parse_metadata(data: bytes, source: str = "metadata.json") -> Metadata:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PackageError(f"{source} must hold a JSON object")
    for key in ("name", "version", "task"):
        if key in doc and not isinstance(doc[key], str):
            raise PackageError(f"{source}: {key!r} must be a string")
    task = doc.get("task", "")
    if task and task not in TASKS:
        raise PackageError(f"{source}: task {task!r} must be one of {', '.join(TASKS)}")
    golden_raw = doc.get("golden", [])
    if not isinstance(golden_raw, list):
        raise PackageError(f"{source}: 'golden' must be a list of {{input, top1}}")
    golden = []
    for i, g in enumerate(golden_raw):
        where = f"{source}: golden[{i}]"
        if not isinstance(g, dict):
            raise PackageError(f"{where} must be an object with 'input' and 'top1'")
        top1 = g.get("top1")
        if isinstance(top1, bool) or not isinstance(top1, int) or top1 < 0:
            raise PackageError(f"{where}.top1 must be a class index (integer >= 0)")
        golden.append(Golden(_relative_path(g.get("input"), f"{where}.input"), top1))
    reference = doc.get("reference")
    if reference is not None and not isinstance(reference, dict):
        raise PackageError(f"{source}: 'reference' must be an object")
    norm: dict[str, float | None] = {}
    for key in ("input_mean", "input_std"):
        value = doc.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or (key == "input_std" and value <= 0)
        ):
            raise PackageError(f"{source}: {key!r} must be a finite number")
        norm[key] = float(value) if value is not None else None
    return Metadata(
        name=doc.get("name", ""),
        version=doc.get("version", ""),
        golden=tuple(golden),
        reference=reference,
        task=task,
        input_mean=norm["input_mean"],
        input_std=norm["input_std"],
    )


def _read_bounded(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise PackageError(f"{path} is larger than {limit} bytes")
    return data


def is_edgetpu_model(path: Path) -> bool:
    """Edge TPU compiled models carry the ``edgetpu-custom-op`` operator name."""
    if path.name.endswith("_edgetpu.tflite"):
        return True
    if path.suffix != ".tflite":
        return False
    try:
        return EDGETPU_CUSTOM_OP in path.read_bytes()
    except OSError:
        return False


@dataclass(frozen=True)
class ModelPackage:
    """What a package offers; the runtime picks between ``edgetpu_model`` and ``cpu_model``."""

    root: Path
    cpu_model: Path | None
    edgetpu_model: Path | None
    labels: Labels
    labels_path: Path | None
    metadata: Metadata

    @property
    def name(self) -> str:
        if self.metadata.name:
            return self.metadata.name
        model = self.cpu_model or self.edgetpu_model
        stem = model.stem if model else "model"
        return stem.removesuffix("_edgetpu")

    def golden_path(self, golden: Golden) -> Path:
        """Golden paths are relative and free of '..' (checked when parsed): inside the
        package. The package itself is the operator's, so symlinks in it are followed."""
        return self.root / _relative_path(golden.input, "golden input")

    def read_golden(self, golden: Golden, limit: int) -> bytes:
        return _read_bounded(self.golden_path(golden), limit)


def _check_model_file(path: Path) -> Path:
    if path.suffix not in (".tflite", ".onnx"):
        raise PackageError(f"model {path} must be a .tflite or .onnx file")
    if not path.is_file():
        raise PackageError(f"model file {path} does not exist")
    return path


def _load_metadata(path: Path | None) -> Metadata:
    if path is None:
        return Metadata()
    return parse_metadata(_read_bounded(path, MAX_METADATA_BYTES), str(path))


def _load_labels_opt(path: Path | None) -> Labels:
    return load_labels(path) if path is not None else Labels()


def from_files(model: Path, labels: Path | None, metadata: Path | None) -> ModelPackage:
    """``--model M --labels L [--metadata J]``: one model file; golden paths relative to J."""
    _check_model_file(model)
    if labels is not None and not labels.is_file():
        raise PackageError(f"labels file {labels} does not exist")
    edgetpu = is_edgetpu_model(model)
    return ModelPackage(
        root=(metadata or model).parent,
        cpu_model=None if edgetpu else model,
        edgetpu_model=model if edgetpu else None,
        labels=_load_labels_opt(labels),
        labels_path=labels,
        metadata=_load_metadata(metadata),
    )


def from_dir(root: Path, metadata: Path | None = None) -> ModelPackage:
    """``--model-dir DIR``: the package layout above."""
    if not root.is_dir():
        raise PackageError(f"model directory {root} does not exist")
    cpu = [root / n for n in ("model.tflite", "model.onnx") if (root / n).is_file()]
    if len(cpu) > 1:
        raise PackageError(f"{root} holds both model.tflite and model.onnx; keep one")
    edgetpu = root / "model_edgetpu.tflite"
    if not cpu and not edgetpu.is_file():
        raise PackageError(
            f"{root} holds no model: expected model.tflite, model.onnx or model_edgetpu.tflite"
        )
    labels = root / "labels.txt"
    meta = metadata or (root / "metadata.json")
    return ModelPackage(
        root=root,
        cpu_model=cpu[0] if cpu else None,
        edgetpu_model=edgetpu if edgetpu.is_file() else None,
        labels=_load_labels_opt(labels if labels.is_file() else None),
        labels_path=labels if labels.is_file() else None,
        metadata=_load_metadata(meta if meta.is_file() or metadata else None),
    )

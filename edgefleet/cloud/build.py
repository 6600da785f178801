"""The builder interface: how ``model_done_watcher`` asks for model images.

A finished training run becomes a :class:`BuildRequest`; a :class:`Builder` packages the
model files with the model server into one image per architecture and pushes them
(podman locally, Cloud Build in the cloud). The implementations live in
:mod:`edgefleet.packaging` and are imported lazily, so the functions stay light.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from edgefleet.core.errors import ConfigError

BUILDERS: dict[str, str] = {
    "podman": "edgefleet.packaging.podman_builder:PodmanBuilder",
    "cloudbuild": "edgefleet.packaging.cloudbuild:CloudBuildBuilder",
}
DEFAULT_BUILDER = "podman"


@dataclass(frozen=True)
class BuildRequest:
    model: str  # "equipmentparts"
    version: str  # "equipmentparts_1_1501089026"
    major: int
    trained_at: int  # unix seconds
    source: str  # "gs://BUCKET/MODEL/VERSION/" prefix holding the model files
    arches: tuple[str, ...]


@dataclass(frozen=True)
class BuildResult:
    images: tuple[str, ...]  # pushed refs (or planned refs for async builders)
    detail: str = ""  # e.g. a Cloud Build operation name


class Builder(Protocol):
    def build(self, request: BuildRequest) -> BuildResult: ...


def builder_from_env(env: Mapping[str, str]) -> Builder:
    """The builder named by ``BUILDER`` (``podman`` | ``cloudbuild``), built ``from_env(env)``."""
    kind = (env.get("BUILDER") or DEFAULT_BUILDER).strip().lower()
    target = BUILDERS.get(kind)
    if target is None:
        raise ConfigError(f"unknown BUILDER {kind!r}: use one of {', '.join(BUILDERS)}")
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"builder {kind!r} is not available ({module_name}: {exc}); "
            "install edgefleet with its packaging extras"
        ) from exc
    return getattr(module, class_name).from_env(env)

"""The sync agent image (``sync_pod/Containerfile``): built locally for every device arch,
pushed as one OCI index, pinned by digest.

The image holds ``python -m sync_pod`` and the child ``python -m device.podcheck`` with
exactly the packages they import at run time: edgefleet's core (cryptography, pyyaml,
urllib3 for the lean GCS adapter, google-auth off the emulator) and kubernetes for the
V1Pod model check (its asyncio copy, ``kubernetes/aio``, is left out). No Flask, LiteRT,
ONNX, docker SDK or google-cloud-storage; and of edgefleet only the ``device`` role's
packages (core, device, sync_pod). The dependencies are installed on the host for each
target platform from the model server's cached wheelhouse (:mod:`.site`).

The build context has the model-server image's layout (``Containerfile``,
``site/GOARCH/``, ``app/``) and goes through the same steps of
:mod:`edgefleet.packaging.podman_builder`: an image per arch of :data:`.support.IMAGE_ARCHES`,
one index under the version tag, ``latest`` moved to it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from edgefleet import __version__
from edgefleet.cloud.registry import RegistryClient
from edgefleet.core import refs
from edgefleet.core.errors import ConfigError
from edgefleet.core.logs import fields
from edgefleet.packaging import context, site, support, wheelhouse
from edgefleet.packaging.base_image import Progress, ensure_base_image, stderr_progress, tag_for
from edgefleet.packaging.podman_builder import (
    PodmanConfig,
    build_platforms,
    git_revision,
    point_latest,
)

log = logging.getLogger(__name__)

IMAGE_NAME = "edgefleet-sync"
CONTAINERFILE = Path("sync_pod") / "Containerfile"
# What `python -m sync_pod` and `python -m device.podcheck` import (bounds: pyproject).
SYNC_REQUIREMENTS: tuple[str, ...] = (
    "cryptography",
    "google-auth",
    "kubernetes",
    "paho-mqtt",  # the MQTT wake-up (sync_pod/wake.py), imported only with MQTT_URL
    "pyyaml",
    "urllib3",
)
# Installed with kubernetes but never imported by the agent (~70 MB with byte code).
SYNC_PRUNE: tuple[str, ...] = ("kubernetes/aio",)


def assemble(
    dest: Path,
    arches: Sequence[str],
    *,
    project_root: Path,
    cache_dir: Path | None = None,
    progress: Progress = stderr_progress,
) -> list[str]:
    """Lay out the sync image's build context in ``dest``; return the requirements."""
    if not (project_root / CONTAINERFILE).is_file():
        raise ConfigError(f"{project_root / CONTAINERFILE} is missing: is this a checkout?")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(project_root / CONTAINERFILE, dest / "Containerfile")
    reqs = wheelhouse.pick_requirements(project_root / "pyproject.toml", SYNC_REQUIREMENTS)
    for arch in arches:
        deps = wheelhouse.ensure_dependency_wheels(
            project_root, arch, cache_dir=cache_dir, progress=progress
        )
        tree = site.ensure_site(
            deps, reqs, arch, cache_dir=cache_dir, prune=SYNC_PRUNE, progress=progress
        )
        goarch, variant = context.TARGET[arch]
        site.stage_tree(tree, dest / "site" / f"{goarch}{variant}")
    context.stage_app(project_root, dest, "device")
    return reqs


def build_sync_image(
    config: PodmanConfig,
    *,
    version: str = __version__,
    arches: Sequence[str] = support.IMAGE_ARCHES,
    registry: RegistryClient | None = None,
    progress: Progress = stderr_progress,
) -> str:
    """Build ``IMAGE_REPOSITORY/edgefleet-sync:VERSION`` for ``arches`` (one index when
    several), push it, point ``latest`` at it; return the digest-pinned reference (for
    ``--sync-image``: a device resolves its own platform from the index)."""
    refs.check_tag(version)
    repo = refs.parse(f"{config.image_repository}/{IMAGE_NAME}:{version}")
    arches, skipped = support.plan_arches(arches)
    if skipped or not arches:
        raise ConfigError(support.skipped_message(arches, skipped))
    root = config.project_root or wheelhouse.find_project_root()
    started = time.monotonic()
    env = {**os.environ, **config.podman_env}

    def base_for(arch: str) -> str:
        return config.base_image or ensure_base_image(
            tag_for(arch), arch=arch, env=env, progress=progress
        )

    build_args = {
        "CREATED": datetime.now(UTC).isoformat(timespec="seconds"),
        "REVISION": git_revision(root),
    }
    with tempfile.TemporaryDirectory(prefix="edgefleet-sync-build-") as tmp:
        ctx = Path(tmp) / "context"
        assemble(ctx, arches, project_root=root, cache_dir=config.cache_dir, progress=progress)
        build_platforms(config, repo, arches, ctx, build_args, base_for, progress=progress)
    registry = registry or RegistryClient(insecure=config.insecure_registries)
    pinned, _ = point_latest(registry, repo)
    message = (
        f"pushed {pinned} ({', '.join(arches)}) and :latest in {time.monotonic() - started:.0f} s"
    )
    log.info(message, extra=fields(image=pinned))
    progress(message)
    return pinned

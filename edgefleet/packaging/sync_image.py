"""The sync agent image (``sync_pod/Containerfile``): built locally, pushed, pinned by digest.

The image holds ``python -m sync_pod`` and the child ``python -m device.podcheck`` with
exactly the packages they import at run time: edgefleet's core (cryptography, pyyaml,
urllib3 for the lean GCS adapter, google-auth off the emulator) and kubernetes for the
V1Pod model check. No Flask, LiteRT, ONNX, docker SDK or google-cloud-storage: the wheels
are the dependency closure of :data:`SYNC_REQUIREMENTS` taken from the model server's
cached wheelhouse (one cache, built once per pyproject).

The build context has the model-server image's layout (``Containerfile``,
``wheels/GOARCH/``, ``app/``) and goes through the same steps of
:mod:`edgefleet.packaging.podman_builder`. Only the host architecture is built: the agent
is pure Python over binary wheels, so another arch is built on a host of that arch.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from edgefleet import __version__
from edgefleet.cloud.registry import RegistryClient
from edgefleet.core import refs
from edgefleet.core.errors import ConfigError
from edgefleet.core.logs import fields
from edgefleet.packaging import context, wheelhouse
from edgefleet.packaging.base_image import (
    Progress,
    ensure_base_image,
    host_arch,
    stderr_progress,
    tag_for,
)
from edgefleet.packaging.podman_builder import (
    PodmanConfig,
    build_image,
    docker_client,
    git_revision,
    point_latest,
    push_image,
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


def assemble(
    dest: Path,
    arch: str,
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
    deps = wheelhouse.ensure_dependency_wheels(
        project_root, arch, cache_dir=cache_dir, progress=progress
    )
    wheels = wheelhouse.resolve_wheels(deps, reqs)
    goarch, variant = context.TARGET[arch]
    wheelhouse.stage_wheels(dest / "wheels" / f"{goarch}{variant}", wheels, reqs)
    wheelhouse.build_project_wheel(project_root, dest / "app")
    progress(f"sync image context: {len(wheels)} dependency wheels + the edgefleet wheel")
    return reqs


def build_sync_image(
    config: PodmanConfig,
    *,
    version: str = __version__,
    registry: RegistryClient | None = None,
    progress: Progress = stderr_progress,
) -> str:
    """Build ``IMAGE_REPOSITORY/edgefleet-sync:VERSION`` for the host arch, push it, point
    ``latest`` at it; return the digest-pinned reference (for ``--sync-image``)."""
    refs.check_tag(version)
    repo = refs.parse(f"{config.image_repository}/{IMAGE_NAME}:{version}")
    arch = host_arch()
    if arch not in context.TARGET:
        raise ConfigError(f"cannot build the sync image on a {arch} host: no image platform")
    root = config.project_root or wheelhouse.find_project_root()
    started = time.monotonic()
    client = docker_client(config.socket)  # a missing socket fails before any work
    try:
        base = config.base_image or ensure_base_image(
            tag_for(arch), arch=arch, env={**os.environ, **config.podman_env}, progress=progress
        )
        goarch, variant = context.TARGET[arch]
        build_args = {
            "BASE_IMAGE": base,
            "TARGETARCH": goarch,
            "TARGETVARIANT": variant,
            "CREATED": datetime.now(UTC).isoformat(timespec="seconds"),
            "REVISION": git_revision(root),
        }
        with tempfile.TemporaryDirectory(prefix="edgefleet-sync-build-") as tmp:
            ctx = Path(tmp) / "context"
            assemble(ctx, arch, project_root=root, cache_dir=config.cache_dir, progress=progress)
            progress(f"building {repo} for {context.PLATFORM[arch]} on {base}")
            build_image(
                client, ctx, str(repo), build_args, context.PLATFORM[arch], progress=progress
            )
        size = int(client.api.inspect_image(str(repo)).get("Size") or 0)
        progress(f"pushing {repo} ({size / 2**20:.0f} MiB unpacked)")
        push_image(client, repo)
    finally:
        client.close()
    registry = registry or RegistryClient(insecure=config.insecure_registries)
    pinned, _ = point_latest(registry, repo)
    message = f"pushed {pinned} and :latest in {time.monotonic() - started:.0f} s"
    log.info(message, extra=fields(image=pinned))
    progress(message)
    return pinned

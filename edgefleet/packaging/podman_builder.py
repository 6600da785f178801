"""The local builder: model package from GCS -> model-server image -> local registry.

Builds go through the Docker Engine API served by ``podman system service`` (the ``docker``
SDK), exactly as they would against a Docker daemon. The image is tagged
``IMAGE_REPOSITORY/MODEL:VERSION``, pushed, and ``latest`` is then pointed at the same
manifest through the registry API, so both tags carry one digest and the registry's tag
events (VERSION, then ``latest``) reach tag_monitor in a useful order.

Every arch edgefleet has images for (:mod:`.support`: x86_64 and aarch64) is built and the
images are pushed as one OCI index under the one tag (``podman manifest``); an arch without
an image (armv7l) is left out and the result says why. No build step runs inside the image
(see model_server/Containerfile), so building arm64 on an x86_64 host needs no emulation;
*running* it does (:func:`runnable_arches`: qemu-user-static in binfmt_misc).

Configuration (``from_env``): ``IMAGE_REPOSITORY`` (e.g. ``127.0.0.1:5000/edgefleet``),
``PODMAN_SOCKET`` (``unix:///…/podman.sock``; ``DOCKER_HOST`` is accepted),
``BASE_IMAGE`` (default: the local mmdebstrap base, built when missing),
``INSECURE_REGISTRIES``, ``EDGEFLEET_CACHE_DIR``, ``EDGEFLEET_SOURCE``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgefleet.cloud import storage
from edgefleet.cloud.build import BuildRequest, BuildResult
from edgefleet.cloud.registry import RegistryClient, parse_insecure
from edgefleet.core import refs
from edgefleet.core.errors import ConfigError, EdgefleetError, TransientError
from edgefleet.core.logs import fields
from edgefleet.packaging import context, support, wheelhouse
from edgefleet.packaging.base_image import (
    Progress,
    ensure_base_image,
    host_arch,
    stderr_progress,
    tag_for,
)

log = logging.getLogger(__name__)

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
# Device arch -> the binfmt_misc entry qemu-user-static registers for it.
QEMU_BINFMT = {"x86_64": "qemu-x86_64", "aarch64": "qemu-aarch64", "armv7l": "qemu-arm"}
BUILD_TIMEOUT = 3600.0


class BuildFailed(EdgefleetError):
    """The image build or push failed; the message carries the tail of its output."""


def runnable_arches(binfmt_dir: Path = BINFMT_DIR, host: str | None = None) -> frozenset[str]:
    """The arches whose images run here: the host's, plus every arch whose qemu binfmt
    handler is registered and enabled (``make install`` enables qemu-aarch64)."""
    found = {host or host_arch()}
    for arch, entry in QEMU_BINFMT.items():
        try:
            if (binfmt_dir / entry).read_text().startswith("enabled"):
                found.add(arch)
        except OSError:
            continue
    return frozenset(found)


@dataclass(frozen=True)
class PodmanConfig:
    image_repository: str
    socket: str
    base_image: str | None = None
    insecure_registries: frozenset[str] = frozenset()
    cache_dir: Path | None = None
    project_root: Path | None = None
    podman_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PodmanConfig:
        repo = (env.get("IMAGE_REPOSITORY") or "").strip().rstrip("/")
        if not repo:
            raise ConfigError("IMAGE_REPOSITORY is not set: e.g. 127.0.0.1:5000/edgefleet")
        refs.parse(f"{repo}/model:tag")  # a bad repository fails here, not after a build
        socket = (env.get("PODMAN_SOCKET") or env.get("DOCKER_HOST") or "").strip()
        if not socket:
            raise ConfigError(
                "PODMAN_SOCKET is not set: the unix socket of `podman system service` "
                "(edgefleet up provides one)"
            )
        if not socket.startswith("unix://"):
            socket = "unix://" + socket
        podman_env = {k: v for k, v in env.items() if k.startswith("CONTAINERS_")}
        return cls(
            image_repository=repo,
            socket=socket,
            base_image=(env.get("BASE_IMAGE") or "").strip() or None,
            insecure_registries=parse_insecure(env.get("INSECURE_REGISTRIES")),
            cache_dir=Path(env["EDGEFLEET_CACHE_DIR"]) if env.get("EDGEFLEET_CACHE_DIR") else None,
            project_root=Path(env["EDGEFLEET_SOURCE"]) if env.get("EDGEFLEET_SOURCE") else None,
            podman_env=podman_env,
        )


class PodmanBuilder:
    """Builder (edgefleet.cloud.build) for the local stack."""

    def __init__(
        self,
        config: PodmanConfig,
        *,
        bucket_factory: Any = None,
        registry: RegistryClient | None = None,
        progress: Progress = stderr_progress,
    ) -> None:
        self.config = config
        self._bucket_factory = bucket_factory or (
            lambda name: storage.Bucket(storage.make_client(), name, timeout=60.0)
        )
        self._registry = registry or RegistryClient(insecure=config.insecure_registries)
        self._progress = progress

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PodmanBuilder:
        return cls(PodmanConfig.from_env(env))

    def build(self, request: BuildRequest) -> BuildResult:
        context.check_request(request)
        started = time.monotonic()
        arches, skipped = support.plan_arches(request.arches)
        if not arches:
            raise BuildFailed(
                f"no image for {', '.join(request.arches)}: "
                + support.skipped_message(arches, skipped)
            )
        detail = (
            support.skipped_message(arches, skipped) if skipped else f"built {', '.join(arches)}"
        )
        if skipped:
            self._say(detail, level=logging.WARNING)
        bucket_name, _ = context.parse_source(request.source)
        repo = refs.parse(f"{self.config.image_repository}/{request.model}:{request.version}")
        root = self.config.project_root or wheelhouse.find_project_root()
        with tempfile.TemporaryDirectory(prefix="edgefleet-build-") as tmp:
            ctx, args = context.prepare(
                request,
                Path(tmp) / "context",
                arches,
                bucket=self._bucket_factory(bucket_name),
                project_root=root,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                revision=git_revision(root),
                cache_dir=self.config.cache_dir,
                progress=self._progress,
            )
            base_for = self._base_for
            build_platforms(
                self.config, repo, arches, ctx.path, args, base_for, progress=self._progress
            )
        images = point_latest(self._registry, repo)
        self._say(
            f"pushed {images[0]} and :latest in {time.monotonic() - started:.0f} s",
            image=images[0],
        )
        return BuildResult(images=images, detail=detail)

    def _base_for(self, arch: str) -> str:
        return self.config.base_image or ensure_base_image(
            tag_for(arch), arch=arch, env=self._podman_env(), progress=self._progress
        )

    def _podman_env(self) -> dict[str, str]:
        return {**os.environ, **self.config.podman_env}

    def _say(self, message: str, *, level: int = logging.INFO, **extra: Any) -> None:
        log.log(level, message, extra=fields(**extra))
        self._progress(message)


# -- steps shared by every local image build (model server, sync agent) ----------------


def build_platforms(
    config: PodmanConfig,
    repo: refs.ImageRef,
    arches: Sequence[str],
    path: Path,
    build_args: Mapping[str, str],
    base_for: Callable[[str], str],
    *,
    progress: Progress = stderr_progress,
) -> None:
    """Build ``path``/Containerfile for every arch and push ``repo``: a plain image for one
    arch, else one OCI index under the one tag (per-arch images go in as ``repo-GOARCH``
    locally and are pushed by digest with the index)."""
    client = docker_client(config.socket)  # a missing socket fails before any work
    try:
        local_tags = []
        for arch in arches:
            goarch, variant = context.TARGET[arch]
            tag = str(repo) if len(arches) == 1 else f"{repo}-{goarch}{variant}"
            args = {
                **build_args,
                "BASE_IMAGE": base_for(arch),
                "TARGETARCH": goarch,
                "TARGETVARIANT": variant,
            }
            progress(f"building {tag} for {context.PLATFORM[arch]} on {args['BASE_IMAGE']}")
            build_image(client, path, tag, args, context.PLATFORM[arch], progress=progress)
            local_tags.append(tag)
        if len(arches) == 1:
            progress(f"pushing {repo}")
            push_image(client, repo)
        else:
            push_index(config, repo, local_tags, progress=progress)
    finally:
        client.close()


def push_index(
    config: PodmanConfig,
    repo: refs.ImageRef,
    local_tags: Sequence[str],
    *,
    progress: Progress = stderr_progress,
) -> None:
    """Assemble the per-arch images into one index and push it (``podman manifest``)."""
    podman = shutil.which("podman")
    if podman is None:
        raise ConfigError("podman is missing: run `make install`")
    index = f"localhost/edgefleet-index/{repo.last_component}:{repo.tag}"
    env = {**os.environ, **config.podman_env}
    subprocess.run([podman, "manifest", "rm", index], env=env, capture_output=True)
    _run([podman, "manifest", "create", index], env)
    for tag in local_tags:
        _run([podman, "manifest", "add", index, f"containers-storage:{tag}"], env)
    tls = ["--tls-verify=false"] if repo.registry in config.insecure_registries else []
    progress(f"pushing index {repo} ({len(local_tags)} platforms)")
    _run([podman, "manifest", "push", *tls, "--all", index, f"docker://{repo}"], env)
    subprocess.run([podman, "manifest", "rm", index], env=env, capture_output=True)


def docker_client(socket: str) -> Any:
    """A docker SDK client on the ``podman system service`` socket (``unix://PATH``)."""
    try:
        import docker
    except ImportError as exc:
        raise ConfigError(
            "the docker SDK is missing: pip install 'edgefleet[local]' (make install)"
        ) from exc
    sock = socket.removeprefix("unix://")
    if not os.path.exists(sock):
        raise ConfigError(
            f"no podman API socket at {sock}: start `podman system service` "
            "(edgefleet up does) or fix PODMAN_SOCKET"
        )
    return docker.DockerClient(base_url=socket, timeout=int(BUILD_TIMEOUT))


def build_image(
    client: Any,
    path: Path,
    tag: str,
    build_args: Mapping[str, str],
    platform: str,
    *,
    progress: Progress = stderr_progress,
) -> None:
    """Build ``path``/Containerfile as ``tag``; steps go to ``progress``, failures carry the
    tail of the build output."""
    tail: list[str] = []
    try:
        stream = client.api.build(
            path=str(path),
            dockerfile="Containerfile",
            tag=tag,
            buildargs=dict(build_args),
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            platform=platform,
        )
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                message = chunk.get("error") or chunk["errorDetail"].get("message", "")
                raise BuildFailed(f"building {tag}: {message.strip()} | {' | '.join(tail)}")
            line = str(chunk.get("stream", "")).strip()
            if line:
                tail = [*tail[-5:], line]
                if "STEP " in line or "COMMIT " in line:
                    progress(line)
    except BuildFailed:
        raise
    except Exception as exc:  # docker.errors.* and transport errors
        raise BuildFailed(f"building {tag}: {exc} | {' | '.join(tail)}") from exc


def push_image(client: Any, repo: refs.ImageRef) -> None:
    """Push the local image ``repo`` (NAME:TAG) to its registry."""
    try:
        for chunk in client.api.push(repo.name, tag=repo.tag, stream=True, decode=True):
            if "error" in chunk or "errorDetail" in chunk:
                message = chunk.get("error") or chunk["errorDetail"].get("message", "")
                raise TransientError(f"pushing {repo}: {message.strip()}")
    except TransientError:
        raise
    except Exception as exc:
        raise TransientError(f"pushing {repo}: {exc}") from exc


def point_latest(registry: RegistryClient, repo: refs.ImageRef) -> tuple[str, str]:
    """Point ``latest`` at the manifest ``repo`` names, through the registry API, so both
    tags carry one digest; return both digest-pinned references (``repo`` first)."""
    manifest = registry.get_manifest(repo)
    latest = repo.with_tag("latest")
    registry.put_manifest(latest, manifest)
    return f"{repo}@{manifest.digest}", f"{latest}@{manifest.digest}"


def _run(argv: list[str], env: Mapping[str, str]) -> None:
    result = subprocess.run(argv, env=dict(env), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise BuildFailed(f"{' '.join(argv[:3])} failed (exit {result.returncode}): {tail}")


def git_revision(root: Path) -> str:
    if not (root / ".git").exists():
        return ""
    result = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else ""

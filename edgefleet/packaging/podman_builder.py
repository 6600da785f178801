"""The local builder: model package from GCS -> model-server image -> local registry.

Builds go through the Docker Engine API served by ``podman system service`` (the ``docker``
SDK), exactly as they would against a Docker daemon. The image is tagged
``IMAGE_REPOSITORY/MODEL:VERSION``, pushed, and ``latest`` is then pointed at the same
manifest through the registry API, so both tags carry one digest and the registry's tag
events (VERSION, then ``latest``) reach tag_monitor in a useful order.

Several architectures are built only when the host can run them (qemu-user-static
registered with binfmt_misc); they are pushed as one OCI index with ``podman manifest``.
Without emulation only the host architecture is built, and the result says so.

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
from collections.abc import Iterable, Mapping, Sequence
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
from edgefleet.packaging import context, wheelhouse
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
    """The host arch plus every arch whose qemu binfmt handler is registered and enabled."""
    found = {host or host_arch()}
    for arch, entry in QEMU_BINFMT.items():
        try:
            if (binfmt_dir / entry).read_text().startswith("enabled"):
                found.add(arch)
        except OSError:
            continue
    return frozenset(found)


def plan_arches(
    requested: Sequence[str], runnable: Iterable[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split the requested arches into (buildable here, skipped for lack of emulation)."""
    can = set(runnable)
    build = tuple(a for a in requested if a in can)
    skipped = tuple(a for a in requested if a not in can)
    return build, skipped


def skipped_message(built: Sequence[str], skipped: Sequence[str]) -> str:
    return (
        f"building {', '.join(built)} only: no emulation for {', '.join(skipped)} on this host "
        "(install qemu-user-static and binfmt-support to build them too)"
    )


@dataclass(frozen=True)
class PodmanConfig:
    image_repository: str
    socket: str
    base_image: str | None = None
    insecure_registries: frozenset[str] = frozenset()
    cache_dir: Path | None = None
    project_root: Path | None = None
    podman_env: Mapping[str, str] = field(default_factory=dict)
    runnable: frozenset[str] | None = None  # None: detect from binfmt_misc

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
        runnable = self.config.runnable or runnable_arches()
        arches, skipped = plan_arches(request.arches, runnable)
        if not arches:
            raise BuildFailed(
                f"cannot build any of {', '.join(request.arches)} on this {host_arch()} host: "
                "install qemu-user-static and binfmt-support"
            )
        detail = skipped_message(arches, skipped) if skipped else f"built {', '.join(arches)}"
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
            client = self._client()
            try:
                local_tags = []
                for arch in arches:
                    goarch, variant = context.TARGET[arch]
                    tag = str(repo) if len(arches) == 1 else f"{repo}-{goarch}{variant}"
                    base = self.config.base_image or ensure_base_image(
                        tag_for(arch), arch=arch, env=self._podman_env(), progress=self._progress
                    )
                    build_args = {
                        **args,
                        "BASE_IMAGE": base,
                        "TARGETARCH": goarch,
                        "TARGETVARIANT": variant,
                    }
                    self._build_one(client, ctx.path, tag, build_args, context.PLATFORM[arch])
                    local_tags.append(tag)
                if len(arches) == 1:
                    self._push(client, repo)
                else:
                    self._push_index(repo, local_tags)
            finally:
                client.close()
        images = point_latest(self._registry, repo)
        self._say(
            f"pushed {images[0]} and :latest in {time.monotonic() - started:.0f} s",
            image=images[0],
        )
        return BuildResult(images=images, detail=detail)

    # -- steps ---------------------------------------------------------------------

    def _client(self) -> Any:
        return docker_client(self.config.socket)

    def _build_one(
        self, client: Any, path: Path, tag: str, build_args: dict[str, str], platform: str
    ) -> None:
        self._say(f"building {tag} for {platform}")
        build_image(client, path, tag, build_args, platform, progress=self._progress)

    def _push(self, client: Any, repo: refs.ImageRef) -> None:
        self._say(f"pushing {repo}")
        push_image(client, repo)

    def _push_index(self, repo: refs.ImageRef, local_tags: Sequence[str]) -> None:
        """Assemble the per-arch images into one index and push it (podman manifest)."""
        podman = shutil.which("podman")
        if podman is None:
            raise ConfigError("podman is missing: run `make install`")
        index = f"localhost/edgefleet-index/{repo.last_component}:{repo.tag}"
        env = self._podman_env()
        subprocess.run([podman, "manifest", "rm", index], env=env, capture_output=True)
        _run([podman, "manifest", "create", index], env)
        for tag in local_tags:
            _run([podman, "manifest", "add", index, f"containers-storage:{tag}"], env)
        tls = ["--tls-verify=false"] if repo.registry in self.config.insecure_registries else []
        self._say(f"pushing index {repo} ({len(local_tags)} platforms)")
        _run([podman, "manifest", "push", *tls, "--all", index, f"docker://{repo}"], env)
        subprocess.run([podman, "manifest", "rm", index], env=env, capture_output=True)

    def _podman_env(self) -> dict[str, str]:
        return {**os.environ, **self.config.podman_env}

    def _say(self, message: str, *, level: int = logging.INFO, **extra: Any) -> None:
        log.log(level, message, extra=fields(**extra))
        self._progress(message)


# -- steps shared by every local image build (model server, sync agent) ----------------


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

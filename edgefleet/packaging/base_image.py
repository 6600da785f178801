"""The local Python base image: Debian bookworm + python3, built without any image registry.

No public image registry is reachable from the machines edgefleet is developed on, so the
model-server Containerfile takes its base as a build argument. Locally that base is built
once from the host's apt sources with ``mmdebstrap`` and ``podman import`` (~25 s) and then
reused: :func:`ensure_base_image` returns at once when the tag is present.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from edgefleet.core.errors import ConfigError, EdgefleetError

DEFAULT_TAG = "localhost/edgefleet/python-base:bookworm"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")

# uname -m -> Debian architecture and OCI (GOARCH, variant).
_DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}
_OCI_ARCH = {"x86_64": ("amd64", ""), "aarch64": ("arm64", ""), "armv7l": ("arm", "v7")}

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    print(f"edgefleet: {message}", file=sys.stderr, flush=True)


def host_arch() -> str:
    """The host's device arch name (uname -m)."""
    return platform.machine()


def tag_for(arch: str, base_tag: str = DEFAULT_TAG) -> str:
    """The host arch uses ``base_tag``; another arch gets ``base_tag-GOARCH``."""
    if arch == host_arch():
        return base_tag
    goarch, variant = _OCI_ARCH[arch]
    return f"{base_tag}-{goarch}{variant}"


def image_exists(tag: str, env: Mapping[str, str] | None = None) -> bool:
    podman = _podman()
    result = subprocess.run(
        [podman, "image", "exists", tag], env=_env(env), capture_output=True, check=False
    )
    return result.returncode == 0


def ensure_base_image(
    tag: str = DEFAULT_TAG,
    *,
    arch: str | None = None,
    env: Mapping[str, str] | None = None,
    progress: Progress = stderr_progress,
    rebuild: bool = False,
) -> str:
    """Build the base image when ``tag`` is missing (or ``rebuild``); return the tag."""
    arch = arch or host_arch()
    if arch not in _DEBIAN_ARCH:
        raise ConfigError(f"no base image recipe for arch {arch!r}: use one of x86_64, aarch64")
    if not rebuild and image_exists(tag, env):
        return tag
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise ConfigError("mmdebstrap is missing: run `make install` (apt-get install mmdebstrap)")
    podman = _podman()
    started = time.monotonic()
    progress(f"building base image {tag} ({SUITE}, {arch}) with mmdebstrap, ~30 s")
    with tempfile.TemporaryDirectory(prefix="edgefleet-base-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        argv = [
            mmdebstrap,
            "--variant=apt",
            f"--architectures={_DEBIAN_ARCH[arch]}",
            "--include=" + ",".join(PACKAGES),
            # Keep the image small: no apt lists, docs or man pages.
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
            SUITE,
            str(rootfs),
        ]
        _run(argv, env, "mmdebstrap")
        progress(f"importing {rootfs.stat().st_size // 2**20} MiB root file system as {tag}")
        goarch, variant = _OCI_ARCH[arch]
        import_argv = [
            podman,
            "import",
            "--change",
            'CMD ["/usr/bin/python3"]',
            "--change",
            "ENV LANG=C.UTF-8",
            "--message",
            f"edgefleet python base ({SUITE}, mmdebstrap)",
            "--arch",
            goarch,
        ]
        if variant:
            import_argv += ["--variant", variant]
        _run([*import_argv, str(rootfs), tag], env, "podman import")
    progress(f"base image {tag} ready in {time.monotonic() - started:.0f} s")
    return tag


def _podman() -> str:
    podman = shutil.which("podman")
    if podman is None:
        raise ConfigError("podman is missing: run `make install` (apt-get install podman runc)")
    return podman


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    return dict(os.environ if env is None else env)


def _run(argv: list[str], env: Mapping[str, str] | None, what: str) -> None:
    result = subprocess.run(argv, env=_env(env), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise EdgefleetError(f"{what} failed (exit {result.returncode}): {tail}")


def main(argv: list[str] | None = None) -> int:
    """``python -m edgefleet.packaging.base_image [TAG] [--rebuild]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tag", nargs="?", default=DEFAULT_TAG)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args(argv)
    try:
        print(ensure_base_image(args.tag, rebuild=args.rebuild))
    except EdgefleetError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

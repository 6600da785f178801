"""The images' Python trees, installed on the host for the target platform.

An image's dependencies are installed here with ``pip install --target`` (``--platform``
for another arch: binary wheels only, nothing is compiled or run for that platform) and
byte-compiled by the host's Python 3.11, which writes the same byte code an arm64 device
would. The Containerfiles then only COPY these trees onto the base: no step of an image
build runs inside the image, so an arm64 image builds on an x86_64 host without
emulation, and in seconds.

The trees are reproducible: byte code is hash-based (``unchecked-hash``: the image never
changes, so the interpreter never re-stats sources), every mtime is the wheel epoch, and
pip's per-install records (``direct_url.json`` naming a temporary path, ``INSTALLER``) are
dropped. The same wheels give the same bytes, so the dependency layer of every model
version is one layer, shared on devices and in the registry.

A dependency tree is cached per (wheelhouse, requirements, pruning, arch) under
``CACHE/site/``; the edgefleet tree (the role wheel, unpacked) is rebuilt per build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from edgefleet.core.errors import EdgefleetError
from edgefleet.packaging import wheelhouse
from edgefleet.packaging.base_image import (
    Progress,
    compile_tree,
    host_arch,
    stderr_progress,
)

SITE_VERSION = "2"  # bump when the tree's recipe changes
EPOCH = int(wheelhouse.REPRODUCIBLE_EPOCH)
# pip's records of one install: they name temporary paths or the installer, not content.
_INSTALL_RECORDS = ("direct_url.json", "INSTALLER", "REQUESTED")
_COMPLETE = wheelhouse.COMPLETE
# Where the Containerfiles put the trees (PYTHONPATH=APP_DIR:LIB_DIR).
LIB_DIR = "/opt/edgefleet/lib"
APP_DIR = "/opt/edgefleet/app"
# Never imported at run time.
DEFAULT_PRUNE: tuple[str, ...] = ("bin", "**/tests", "**/__pycache__")


def ensure_site(
    wheel_dir: Path,
    reqs: Sequence[str],
    arch: str,
    *,
    cache_dir: Path | None = None,
    prune: Sequence[str] = (),
    progress: Progress = stderr_progress,
) -> Path:
    """The cached dependency tree of ``reqs`` for ``arch``, installed from ``wheel_dir``."""
    prune = (*DEFAULT_PRUNE, *prune)
    key = hashlib.sha256(
        "|".join((SITE_VERSION, arch, wheel_dir.name, *sorted(reqs), "#", *prune)).encode()
    ).hexdigest()[:16]
    target = (cache_dir or wheelhouse.default_cache_dir()) / "site" / f"{arch}-{key}"
    if (target / _COMPLETE).is_file():
        return target
    progress(f"installing {len(reqs)} requirements for {arch} into {target}")
    return wheelhouse.fill_cache_entry(
        target,
        reqs,
        lambda req_file, out: install_argv(wheel_dir, req_file, out, arch),
        f"installing for {arch}",
        finish=lambda out: finish_tree(out, prune, LIB_DIR),
    )


def install_argv(wheel_dir: Path, req_file: Path, out: Path, arch: str) -> list[str]:
    """pip's arguments: from the wheelhouse only, binary only, for ``arch``'s platform."""
    argv = ["install", "--no-index", "--find-links", str(wheel_dir), "--only-binary=:all:"]
    argv += ["--target", str(out), "--no-compile", "--no-warn-script-location"]
    if arch != host_arch():
        argv += [f"--platform={p}" for p in wheelhouse.PIP_PLATFORMS[arch]]
        argv += [f"--python-version={wheelhouse.PYTHON_VERSION}", "--implementation=cp"]
    return [*argv, "-r", str(req_file)]


def unpack_wheel(wheel: Path, dest: Path) -> Path:
    """Install a pure-Python wheel into ``dest`` (what pip does for purelib: unzip), then
    make the tree reproducible. Returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith("/") or ".." in Path(name).parts:
                raise EdgefleetError(f"{wheel.name}: unsafe member {name!r}")
        zf.extractall(dest)
    if any(dest.glob("*.data")):
        raise EdgefleetError(f"{wheel.name} has a .data directory: not a purelib-only wheel")
    finish_tree(dest, DEFAULT_PRUNE, APP_DIR)
    return dest


def finish_tree(root: Path, prune: Iterable[str], image_dir: str) -> None:
    """Prune, drop install records, byte-compile (hash-based, file names as the image has
    them below ``image_dir``: the byte code names no host path), set mtimes to EPOCH."""
    for pattern in prune:
        for path in sorted(root.glob(pattern), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    for record in _INSTALL_RECORDS:
        for path in root.glob(f"*.dist-info/{record}"):
            path.unlink()
    compile_tree(root, image_dir)
    for directory, dirs, files in os.walk(root):
        for name in (*files, *dirs):
            os.utime(os.path.join(directory, name), (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(root, (EPOCH, EPOCH))


def stage_tree(src: Path, dest: Path) -> Path:
    """Put a tree into a build context (hard links: no copy, same mtimes)."""
    shutil.copytree(
        src, dest, copy_function=wheelhouse.link_or_copy, ignore=shutil.ignore_patterns(_COMPLETE)
    )
    return dest

"""The local Python base image: Debian bookworm's python3.11 and the libraries it loads,
nothing else. Built without any image registry, once per arch, then cached.

No public image registry is reachable from the machines edgefleet is developed on, so the
Containerfiles take their base as a build argument. Locally that base is made with
``mmdebstrap --variant=extract`` from the host's apt sources and ``podman import``.

Why this base (docs/operations.md, "Image size"): a device pulls its first image over a
cellular link or writes it to an SD card, and it runs one Python program. ``extract``
unpacks the listed packages and their dependencies without installing them: no dpkg,
apt, perl, shell or maintainer scripts end up in the image (a distroless-style root), and
since nothing runs, the arm64 root is built on an x86_64 host without emulation in the
same ~20 s. The hooks then do what the skipped maintainer scripts would have done and the
image needs: the CA bundle (update-ca-certificates' concatenation), ``/usr/bin/python3``,
``/etc/passwd`` with the unprivileged ``edgefleet`` user (uid 10001), ``/tmp``, the
standard library's byte code (py3compile's job); and drop what a Python program never
loads (dpkg, debconf, perl, gconv modules, docs).

The tag carries a hash of the recipe: a changed recipe is a new tag, never a stale cache.
"""

from __future__ import annotations

import compileall
import hashlib
import os
import platform
import py_compile
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from edgefleet.core.errors import ConfigError, EdgefleetError

SUITE = "bookworm"
# python3.11's interpreter + standard library (their dependencies come along), the C++
# runtime that manylinux wheels (numpy, LiteRT) link against, and the CA certificates.
PACKAGES = ("python3.11", "libstdc++6", "ca-certificates")
# Extracted but never used by a Python program: removed from the root (relative paths).
PRUNE = (
    "usr/share/doc",
    "usr/share/ca-certificates",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/bash-completion",
    "usr/share/perl5",
    "usr/share/debconf",
    "usr/share/dpkg",
    "usr/share/polkit-1",
    "usr/share/applications",
    "usr/share/pixmaps",
    "usr/share/binfmts",
    "usr/lib/binfmt.d",
    "usr/lib/mime",
    "usr/lib/*-linux-gnu*/gconv",
    "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/turtledemo",
    "usr/bin/dpkg*",
    "usr/bin/debconf*",
    "usr/bin/update-alternatives",
    "usr/bin/openssl",
    "usr/bin/c_rehash",
    "usr/bin/pdb3.11",
    "usr/bin/pydoc3.11",
    "usr/bin/pygettext3.11",
    "usr/libexec/dpkg",
    "usr/sbin/dpkg*",
    "sbin/start-stop-daemon",
    "bin/tar",
    "etc/cron.daily",
    "etc/logrotate.d",
    "lib/systemd",
    "var/lib/dpkg",
    "var/lib/apt",
    "var/cache",
    "var/log",
)
PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    "edgefleet:x:10001:10001:edgefleet:/var/lib/edgefleet:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\nedgefleet:x:10001:\n"
STDLIB = "usr/lib/python3.11"
RECIPE_VERSION = "3"  # bump when finish_root changes
RECIPE = hashlib.sha256(
    "|".join((RECIPE_VERSION, SUITE, *PACKAGES, *PRUNE, PASSWD, GROUP)).encode()
).hexdigest()[:8]
DEFAULT_TAG = f"localhost/edgefleet/python-base:{SUITE}-{RECIPE}"

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


def mmdebstrap_argv(mmdebstrap: str, arch: str, root: Path) -> list[str]:
    """The mmdebstrap command line that extracts the base root for ``arch`` into ``root``."""
    return [
        mmdebstrap,
        "--variant=extract",
        "--format=directory",
        f"--architectures={_DEBIAN_ARCH[arch]}",
        "--include=" + ",".join(PACKAGES),
        SUITE,
        str(root),
    ]


def finish_root(root: Path) -> None:
    """What the skipped maintainer scripts would have done, and the pruning (the variant
    runs no hooks): CA bundle, ``python3``, users, ``/tmp``; drop :data:`PRUNE`; then the
    standard library's byte code (:func:`compile_stdlib`)."""
    mozilla = sorted((root / "usr/share/ca-certificates/mozilla").glob("*.crt"))
    if not mozilla:
        raise EdgefleetError(f"no CA certificates extracted into {root}: ca-certificates?")
    certs = root / "etc/ssl/certs"
    certs.mkdir(parents=True, exist_ok=True)
    (certs / "ca-certificates.crt").write_bytes(b"".join(c.read_bytes() for c in mozilla))
    python3 = root / "usr/bin/python3"
    if not python3.is_symlink():
        python3.symlink_to("python3.11")
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    for name, mode in (("tmp", 0o1777), ("root", 0o700)):
        (root / name).mkdir(exist_ok=True)
        (root / name).chmod(mode)
    for pattern in PRUNE:
        for path in sorted(root.glob(pattern), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    compile_stdlib(root)


def compile_stdlib(root: Path) -> None:
    """Byte-compile the standard library, as python3.11's maintainer script (py3compile)
    would have. Without it every process compiles each stdlib module it imports, every
    time (the images set PYTHONDONTWRITEBYTECODE and their root is read-only to the
    server's user): measured, 0.85 s of CPU more per model-server start, which is on the
    path of every version switch, and 0.9 s more per sync-agent check child (one per set).

    Written by the host's Python 3.11 (byte code is the same on every arch, see
    :mod:`edgefleet.packaging.site`), hash-based and unchecked like the images' other
    trees: the image never changes, so the interpreter never re-reads the sources."""
    if sys.version_info[:2] != (3, 11):
        raise ConfigError(
            f"the base image's byte code is written by this Python, which is "
            f"{sys.version_info[0]}.{sys.version_info[1]}: run with Python 3.11 (make install)"
        )
    stdlib = root / STDLIB
    if not stdlib.is_dir():
        raise EdgefleetError(f"no {STDLIB} extracted into {root}: python3.11?")
    compile_tree(stdlib, f"/{STDLIB}")


def compile_tree(tree: Path, image_dir: str) -> None:
    """Byte-compile every module under ``tree`` with this Python: hash-based and
    unchecked (an image never changes, so the interpreter never re-reads the sources),
    file names as the image has them below ``image_dir`` (the byte code names no host
    path). The images' one recipe for byte code (the base's stdlib, the site trees)."""
    # A file that does not compile (Python 2 leftovers, test data some packages ship)
    # cannot be imported either: leaving it without byte code changes nothing.
    compileall.compile_dir(
        str(tree),
        stripdir=str(tree),
        prependdir=image_dir,
        quiet=2,
        workers=1,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )


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
    progress(f"building base image {tag} ({SUITE}, {arch}) with mmdebstrap, ~20 s")
    with tempfile.TemporaryDirectory(prefix="edgefleet-base-") as tmp:
        root, rootfs = Path(tmp) / "root", Path(tmp) / "rootfs.tar"
        _run(mmdebstrap_argv(mmdebstrap, arch, root), env, "mmdebstrap")
        finish_root(root)
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(rootfs), "."], env, "tar")
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
            f"edgefleet python base ({SUITE}, mmdebstrap extract, recipe {RECIPE})",
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

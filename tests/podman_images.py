"""Test helper: tiny real images and multi-arch indexes made with podman, pushed to the
local registry (``podman import`` of a small tarball per platform + ``podman manifest``).

Each call makes images with distinct content (``salt``), so each push has new digests.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = REPO_ROOT / "deploy" / "podman" / "containers.conf"
PLATFORMS: tuple[tuple[str, str], ...] = (("amd64", ""), ("arm64", ""), ("arm", "v7"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def podman(*args: str, input: bytes | None = None) -> str:
    if shutil.which("podman") is None:
        raise RuntimeError("podman is missing: run 'make install' (apt podman runc)")
    proc = subprocess.run(
        ["podman", *args], input=input, capture_output=True, env=_env(), timeout=120, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed: {proc.stderr.decode()[-800:]}")
    return proc.stdout.decode().strip()


def _tarball(salt: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = f"edgefleet test image {salt}\n".encode()
        info = tarfile.TarInfo("salt.txt")
        info.size = len(data)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def import_image(workdir: Path, name: str) -> str:
    """A one-file image of distinct content, named ``name``, in podman's storage; its id."""
    tar = workdir / f"{uuid.uuid4().hex}.tar"
    tar.write_bytes(_tarball(uuid.uuid4().hex))
    try:
        return podman("import", "-q", str(tar), name)
    finally:
        tar.unlink(missing_ok=True)


def image_exists(image: str) -> bool:
    done = subprocess.run(
        ["podman", "image", "exists", image], env=_env(), capture_output=True, timeout=60
    )
    return done.returncode == 0


def push_multiarch(
    registry_host: str,
    repository: str,
    tag: str,
    *,
    platforms: Sequence[tuple[str, str]] = PLATFORMS,
    salt: str | None = None,
    workdir: Path,
) -> str:
    """Push an index of ``platforms`` to ``registry_host/repository:tag``; its digest."""
    salt = salt or uuid.uuid4().hex
    local = f"localhost/edgefleet-test-{uuid.uuid4().hex[:12]}"
    tar = workdir / f"{salt}.tar"
    tar.write_bytes(_tarball(salt))
    images = []
    try:
        podman("manifest", "create", f"{local}:list")
        for arch, variant in platforms:
            image = f"{local}:{arch}{variant}"
            args = ["import", "--os", "linux", "--arch", arch]
            if variant:
                args += ["--variant", variant]
            podman(*args, str(tar), image)
            images.append(image)
            add = ["manifest", "add", "--os", "linux", "--arch", arch]
            if variant:
                add += ["--variant", variant]
            podman(*add, f"{local}:list", f"containers-storage:{image}")
        digest_file = workdir / f"{salt}.digest"
        podman(
            "manifest", "push", "--all", "--tls-verify=false", "--format", "oci",
            "--digestfile", str(digest_file),
            f"{local}:list", f"docker://{registry_host}/{repository}:{tag}",
        )  # fmt: skip
        return digest_file.read_text().strip()
    finally:
        subprocess.run(
            ["podman", "manifest", "rm", f"{local}:list"], capture_output=True, env=_env()
        )
        for image in images:
            subprocess.run(["podman", "rmi", "-f", image], capture_output=True, env=_env())
        tar.unlink(missing_ok=True)


BUSYBOX = Path("/bin/busybox")


def push_busybox(
    registry_host: str,
    repository: str,
    *,
    workdir: Path,
    env: dict[str, str],
    pages: Sequence[str] = ("v1", "v2"),
) -> str:
    """Push an image of Debian's static busybox (applets sh, httpd, sleep, true) with
    ``/www/PAGE/index.html`` saying PAGE for each of ``pages``; returns the image pinned by
    digest. The local copy is removed, so a device has to pull it by digest."""
    if not BUSYBOX.is_file():
        raise RuntimeError("/bin/busybox is missing: apt install busybox-static (make install)")
    root = workdir / "bbroot"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "httpd", "sleep", "true"):
        (root / "bin" / applet).symlink_to("busybox")
    for page in pages:
        (root / "www" / page).mkdir(parents=True)
        (root / "www" / page / "index.html").write_text(page)
    tar = workdir / "bbroot.tar"
    with tarfile.open(tar, "w") as tf:
        for entry in sorted(root.iterdir()):
            tf.add(entry, arcname=entry.name)
    repo = f"{registry_host}/{repository}"
    run = lambda *a: subprocess.run(  # noqa: E731
        ["podman", *a], env=env, check=True, capture_output=True, text=True, timeout=120
    )
    run("import", "-q", str(tar), f"{repo}:test")
    digest_file = workdir / "bbroot.digest"
    run("push", "-q", "--tls-verify=false", "--digestfile", str(digest_file), f"{repo}:test")
    run("rmi", f"{repo}:test")
    return f"{repo}@{digest_file.read_text().strip()}"

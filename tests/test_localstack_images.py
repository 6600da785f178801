"""A stopped local registry's images leave podman's image storage
(:func:`edgefleet.localstack.podman.forget_registry_images`, run by ``Registry.stop``),
on real podman and a real docker-registry: the names lead nowhere once the registry's
port is gone, and before this every test run and demo left ~0.2 GB behind."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from podman_images import _env, _tarball, podman

from edgefleet.localstack.registry import Registry


def _import(tmp_path: Path, name: str) -> str:
    """A one-file image of distinct content, named ``name``; its id."""
    tar = tmp_path / f"{uuid.uuid4().hex}.tar"
    tar.write_bytes(_tarball(uuid.uuid4().hex))
    return podman("import", "-q", str(tar), name)


def _exists(image: str) -> bool:
    done = subprocess.run(
        ["podman", "image", "exists", image], env=_env(), capture_output=True, timeout=60
    )
    return done.returncode == 0


def test_a_stopped_registrys_images_leave_podman_storage_and_others_stay(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry").start()
    host = registry.host
    keep = f"localhost/edgefleet-test-keep-{uuid.uuid4().hex[:12]}:1"
    container = f"edgefleet-test-busy-{uuid.uuid4().hex[:12]}"
    # Two names in the registry, one of them three components deep: both go, with the image.
    gone = _import(tmp_path, f"{host}/edgefleet/gone:1")
    podman("tag", gone, f"{host}/bench/deep/gone:2")
    # Also named outside the registry: stays, under both names.
    kept = _import(tmp_path, f"{host}/edgefleet/kept:1")
    podman("tag", kept, keep)
    # In use by a container: stays (the failure is logged), and the stop goes on.
    busy = _import(tmp_path, f"{host}/edgefleet/busy:1")
    podman("create", "-q", "--name", container, busy, "true")
    try:
        assert _exists(gone) and _exists(kept) and _exists(busy)
        registry.stop()
        assert not _exists(gone)
        assert not _exists(f"{host}/bench/deep/gone:2")
        assert _exists(keep) and _exists(f"{host}/edgefleet/kept:1")
        assert _exists(busy)
    finally:
        registry.process.stop()  # idempotent: the test's own failure must not leak it
        subprocess.run(["podman", "rm", "-f", container], env=_env(), capture_output=True)
        for image in (gone, kept, busy):
            subprocess.run(["podman", "rmi", "-f", image], env=_env(), capture_output=True)

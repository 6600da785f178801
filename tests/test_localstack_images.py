"""A stopped local registry's images leave podman's image storage
(:func:`edgefleet.localstack.podman.forget_registry_images`, run by ``Registry.stop``),
on real podman and a real docker-registry: the names lead nowhere once the registry's
port is gone, and before this every test run and demo left them behind."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from podman_images import _env, image_exists, import_image, podman

from edgefleet.localstack.registry import Registry


def test_a_stopped_registrys_images_leave_podman_storage_and_others_stay(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry").start()
    host = registry.host
    keep = f"localhost/edgefleet-test-keep-{uuid.uuid4().hex[:12]}:1"
    container = f"edgefleet-test-busy-{uuid.uuid4().hex[:12]}"
    # Two names in the registry, one of them three components deep: both go, with the image.
    gone = import_image(tmp_path, f"{host}/edgefleet/gone:1")
    podman("tag", gone, f"{host}/bench/deep/gone:2")
    # Also named outside the registry: stays, under both names.
    kept = import_image(tmp_path, f"{host}/edgefleet/kept:1")
    podman("tag", kept, keep)
    # In use by a container: stays (the failure is logged), and the stop goes on.
    busy = import_image(tmp_path, f"{host}/edgefleet/busy:1")
    podman("create", "-q", "--name", container, busy, "true")
    try:
        assert image_exists(gone) and image_exists(kept) and image_exists(busy)
        registry.stop()
        assert not image_exists(gone)
        assert not image_exists(f"{host}/bench/deep/gone:2")
        assert image_exists(keep) and image_exists(f"{host}/edgefleet/kept:1")
        assert image_exists(busy)
    finally:
        registry.process.stop()  # idempotent: the test's own failure must not leak it
        subprocess.run(["podman", "rm", "-f", container], env=_env(), capture_output=True)
        for image in (gone, kept, busy):
            subprocess.run(["podman", "rmi", "-f", image], env=_env(), capture_output=True)

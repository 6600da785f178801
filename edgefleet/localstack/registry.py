"""A local container registry: Debian's ``docker-registry`` (CNCF distribution 2.8).

Generated config: listens on 127.0.0.1:P, stores under the workdir, allows deletes, and
sends notifications to the registry bridge (:mod:`edgefleet.localstack.registry_bridge`)
with a short timeout and backoff so tag events flow within milliseconds. Pull events are
not sent at all (``ignore.actions``), which keeps the bridge quiet during device pulls.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

import requests

from edgefleet.localstack.podman import forget_registry_images
from edgefleet.localstack.process import (
    ManagedProcess,
    MissingTool,
    StackError,
    free_port,
    http_ready,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def render_config(
    *, addr: str, root: str, notify_url: str | None, secret: str
) -> dict[str, object]:
    """The registry's config document (YAML is a superset of JSON; we write JSON)."""
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": root},
            "delete": {"enabled": True},
            # No blob descriptor cache: a deleted manifest must be gone at once.
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": addr,
            "secret": secret,
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }
    if notify_url:
        config["notifications"] = {
            "events": {"includereferences": True},
            "endpoints": [
                {
                    "name": "edgefleet-bridge",
                    "url": notify_url,
                    "timeout": "2s",
                    "threshold": 5,
                    "backoff": "200ms",
                    "ignore": {"actions": ["pull"]},
                }
            ],
        }
    return config


def host_for(port: int) -> str:
    """The ``host:port`` a local registry listening on ``port`` is known by."""
    return f"127.0.0.1:{port}"


class Registry:
    """One registry on 127.0.0.1; ``.host`` is "127.0.0.1:P" (plain HTTP: insecure)."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        port: int | None = None,
        notify_url: str | None = None,
        storage_dir: str | os.PathLike[str] | None = None,
        name: str = "registry",
    ) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise MissingTool(
                "docker-registry is missing (apt docker-registry); run 'make install'"
            )
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.storage_dir = Path(storage_dir or self.workdir / "registry-data")
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / f"{name}.yml"
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        config = render_config(
            addr=self.host,
            root=str(self.storage_dir),
            notify_url=notify_url,
            secret=secrets.token_hex(16),
        )
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.process = ManagedProcess(
            name, [binary, "serve", str(self.config_path)], workdir=self.workdir, env=env
        )

    @property
    def host(self) -> str:
        return host_for(self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 15.0) -> Registry:
        self.process.start()
        self.process.wait_ready(
            lambda: http_ready(f"{self.url}/v2/"), timeout=timeout, what="docker-registry"
        )
        return self

    def stop(self) -> None:
        """Stop the registry and forget the images named for it in podman's storage (its
        port is its own: nothing will reach those names again)."""
        self.process.stop()
        forget_registry_images(self.host)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- small HTTP API helpers for tests (real registry calls, no podman needed) ------

    def upload_blob(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        resp = requests.post(f"{self.url}/v2/{repository}/blobs/uploads/", timeout=10)
        if resp.status_code != 202:
            raise StackError(f"starting blob upload: HTTP {resp.status_code} {resp.text[:200]}")
        location = resp.headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        sep = "&" if "?" in location else "?"
        resp = requests.put(f"{location}{sep}digest={digest}", data=data, timeout=30)
        if resp.status_code != 201:
            raise StackError(f"uploading blob: HTTP {resp.status_code} {resp.text[:200]}")
        return digest

    def put_manifest(
        self, repository: str, reference: str, manifest: bytes, media_type: str = OCI_MANIFEST
    ) -> str:
        """PUT a manifest under a tag or digest; returns the registry's digest."""
        resp = requests.put(
            f"{self.url}/v2/{repository}/manifests/{reference}",
            data=manifest,
            headers={"Content-Type": media_type},
            timeout=10,
        )
        if resp.status_code != 201:
            raise StackError(f"putting manifest: HTTP {resp.status_code} {resp.text[:200]}")
        return resp.headers["Docker-Content-Digest"]

    def push_minimal_image(
        self, repository: str, tag: str | None = None, *, arch: str = "amd64", salt: str = ""
    ) -> str:
        """Push a tiny single-platform OCI image (config only, no layers); its digest.

        ``salt`` makes distinct images (different digests) for the same repository.
        Without ``tag`` the manifest is pushed by digest (untagged).
        """
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
                "config": {"Labels": {"edgefleet.test.salt": salt}},
            },
            sort_keys=True,
        ).encode()
        config_digest = self.upload_blob(repository, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [],
            },
            sort_keys=True,
        ).encode()
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        return self.put_manifest(repository, tag or digest, manifest)

    def delete_manifest(self, repository: str, digest: str) -> None:
        resp = requests.delete(f"{self.url}/v2/{repository}/manifests/{digest}", timeout=10)
        if resp.status_code != 202:
            raise StackError(f"deleting manifest: HTTP {resp.status_code} {resp.text[:200]}")

"""``python -m edgefleet.packaging prepare …``: the context step of a Cloud Build build.
``python -m edgefleet.packaging sync-image …``: build + push the sync agent image.

``prepare`` runs inside the build's Python step with the edgefleet source at hand: fetches and
validates the model package with the build's credentials and lays out the build context
(model, dependency trees per platform, the server's edgefleet, Containerfile,
build-args), exactly as the local builder does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.cloud import storage
from edgefleet.cloud.build import BuildRequest
from edgefleet.core.errors import EdgefleetError
from edgefleet.packaging import context


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgefleet.packaging")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="fetch + validate a model package, lay out a context")
    prep.add_argument("--model", required=True)
    prep.add_argument("--version", required=True)
    prep.add_argument("--major", type=int, required=True)
    prep.add_argument("--trained-at", type=int, required=True)
    prep.add_argument("--source", required=True, help="gs://BUCKET/MODEL/VERSION/")
    prep.add_argument("--arches", required=True, help="comma-separated, e.g. x86_64,aarch64")
    prep.add_argument("--context", type=Path, required=True, help="output directory")
    prep.add_argument("--source-root", type=Path, required=True, help="edgefleet source tree")
    prep.add_argument("--revision", default="")
    sync = sub.add_parser(
        "sync-image",
        help="build the sync agent image for x86_64 and aarch64 (one index), push it, print its "
        "pinned ref",
        description="Flags override the environment (IMAGE_REPOSITORY, PODMAN_SOCKET, "
        "BASE_IMAGE, INSECURE_REGISTRIES, EDGEFLEET_CACHE_DIR, EDGEFLEET_SOURCE, CONTAINERS_*).",
    )
    sync.add_argument("--image-repository", help="e.g. 127.0.0.1:5000/edgefleet")
    sync.add_argument("--podman-socket", help="unix:///…/podman.sock of podman system service")
    sync.add_argument("--base-image", help="default: the local mmdebstrap base, built if missing")
    sync.add_argument("--insecure-registries", help="comma-separated HOST:PORT (plain HTTP)")
    sync.add_argument("--version", dest="image_version", default=None, help="the image tag")
    args = parser.parse_args(argv)
    if args.command == "sync-image":
        return _sync_image(args)
    request = BuildRequest(
        model=args.model,
        version=args.version,
        major=args.major,
        trained_at=args.trained_at,
        source=args.source,
        arches=tuple(a.strip() for a in args.arches.split(",") if a.strip()),
    )
    try:
        bucket_name, _ = context.parse_source(request.source)
        ctx, _ = context.prepare(
            request,
            args.context,
            request.arches,
            bucket=storage.Bucket(storage.make_client(), bucket_name, timeout=60.0),
            project_root=args.source_root,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            revision=args.revision,
        )
    except EdgefleetError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return 1
    print(f"edgefleet: build context ready in {ctx.path}", file=sys.stderr)
    return 0


def _sync_image(args: argparse.Namespace) -> int:
    from edgefleet import __version__
    from edgefleet.packaging.podman_builder import PodmanConfig
    from edgefleet.packaging.sync_image import build_sync_image

    env = dict(os.environ)
    for key, value in (
        ("IMAGE_REPOSITORY", args.image_repository),
        ("PODMAN_SOCKET", args.podman_socket),
        ("BASE_IMAGE", args.base_image),
        ("INSECURE_REGISTRIES", args.insecure_registries),
    ):
        if value is not None:
            env[key] = value
    try:
        ref = build_sync_image(
            PodmanConfig.from_env(env), version=args.image_version or __version__
        )
    except EdgefleetError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return 1
    print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())

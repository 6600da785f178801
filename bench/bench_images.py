"""Benchmark of image transfer: compressed bytes a device pulls, before and after the lean
images, per image and arch.

For the model-server image: a first install (a new device holds nothing) and a model-only
update (the device runs v1, the channel moves to v2: same code, another model). For the
sync agent image: a first install. Bytes are read from the registry's manifests (index +
manifest + config + every layer the device lacks, as the registry serves them:
:mod:`edgefleet.packaging.transfer`); MB = 10^6 bytes.

"after" builds the images as the builder does now (lean mmdebstrap-extract base, trees
installed on the host, COPY-only Containerfiles) for x86_64 and aarch64, pushed as OCI
indexes. "before" builds, in the same run, the recipe of commit bbc767f: its base
(mmdebstrap ``--variant=apt`` with python3-venv) and its Containerfiles, kept verbatim in
``bench/baseline/``, which pip-install the wheels inside the image. The baseline is built
for the host arch only: at bbc767f no aarch64 image could be built at all (pip found no
aarch64 LiteRT wheel), which the table says.

    .venv/bin/python bench/bench_images.py [--keep]

Needs podman, docker-registry and mmdebstrap (``make install``). Targets: model server
first install <= 150 MB, sync agent <= 80 MB, model update within 2 MB of the model file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.stats import MB  # noqa: E402
from edgefleet.cloud.build import BuildRequest  # noqa: E402
from edgefleet.cloud.registry import RegistryClient  # noqa: E402
from edgefleet.core import refs  # noqa: E402
from edgefleet.packaging import (  # noqa: E402
    base_image,
    context,
    podman_builder,
    support,
    sync_image,
    transfer,
    wheelhouse,
)

DATA = REPO / "demo" / "coral"
MODEL = "mobilenet"
VERSIONS = {
    1: ("mobilenet_v1_0.25_128_quant.tflite", 1764000001),
    2: ("mobilenet_v2_1.0_224_quant.tflite", 1764000002),
}
BASELINE = REPO / "bench" / "baseline"
# The base of commit bbc767f: Debian's apt variant, python3 with venv (its image pip
# installs into a venv), CA certificates; docs, man pages and locales left out.
BASELINE_BASE_TAG = "localhost/edgefleet/python-base:bookworm"
BASELINE_BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
TARGET_SERVER_MB = 150.0
TARGET_SYNC_MB = 80.0
Say = Callable[[str], None]


@dataclass(frozen=True)
class Row:
    image: str
    arch: str
    when: str  # before | after
    first_install: int | None  # bytes; None: not built
    update: int | None = None
    note: str = ""


def say(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def version_name(major: int) -> str:
    return f"{MODEL}_{major}_{VERSIONS[major][1]}"


def package(major: int) -> context.ModelPackage:
    model_file, _ = VERSIONS[major]
    files = {
        "model.tflite": (DATA / model_file).read_bytes(),
        "labels.txt": (DATA / "imagenet_labels.txt").read_bytes(),
    }
    return context.validate_package(files, where=f"{DATA}/")


def request(major: int, arches: Sequence[str]) -> BuildRequest:
    return BuildRequest(
        model=MODEL,
        version=version_name(major),
        major=major,
        trained_at=VERSIONS[major][1],
        source=f"gs://bench-models/{MODEL}/{version_name(major)}/",
        arches=tuple(arches),
    )


# -- after: the builder's own steps ------------------------------------------------------


def build_after(config: podman_builder.PodmanConfig, work: Path) -> dict[str, str]:
    """Both model versions and the sync agent, every image arch; returns image refs."""
    arches = support.IMAGE_ARCHES
    env = {**os.environ, **config.podman_env}

    def base_for(arch: str) -> str:
        return base_image.ensure_base_image(
            base_image.tag_for(arch), arch=arch, env=env, progress=say
        )

    out = {}
    for major in VERSIONS:
        dest = work / f"after-v{major}"
        ctx = context.assemble(package(major), dest, arches, project_root=REPO, progress=say)
        args = ctx.build_args(request(major, arches), created="2026-01-01T00:00:00+00:00")
        repo = refs.parse(f"{config.image_repository}/{MODEL}:{version_name(major)}")
        podman_builder.build_platforms(config, repo, arches, dest, args, base_for, progress=say)
        out[f"v{major}"] = str(repo)
    out["sync"] = sync_image.build_sync_image(config, version="bench-after", progress=say)
    return out


# -- before: the recipe of bbc767f -------------------------------------------------------


def ensure_baseline_base(env: dict[str, str]) -> str:
    if base_image.image_exists(BASELINE_BASE_TAG, env):
        return BASELINE_BASE_TAG
    say(f"building the baseline base {BASELINE_BASE_TAG} (mmdebstrap --variant=apt, ~30 s)")
    with tempfile.TemporaryDirectory(prefix="bench-base-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        argv = ["mmdebstrap", "--variant=apt", "--include=" + ",".join(BASELINE_BASE_PACKAGES)]
        argv += [
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
            "bookworm",
            str(rootfs),
        ]
        subprocess.run(argv, env=env, check=True, capture_output=True)
        subprocess.run(
            [
                "podman",
                "import",
                "--change",
                'CMD ["/usr/bin/python3"]',
                str(rootfs),
                BASELINE_BASE_TAG,
            ],
            env=env,
            check=True,
            capture_output=True,
        )
    return BASELINE_BASE_TAG


def baseline_context(dest: Path, containerfile: str, reqs: Sequence[str], role_files: bool) -> Path:
    """The build context of bbc767f: wheels/amd64/ (wheels + requirements.txt) and app/
    (the whole edgefleet wheel, every role)."""
    arch = base_image.host_arch()
    goarch, variant = context.TARGET[arch]
    wheels = wheelhouse.ensure_dependency_wheels(REPO, arch, progress=say)
    target = dest / "wheels" / f"{goarch}{variant}"
    target.mkdir(parents=True)
    for wheel in wheels.glob("*.whl"):
        wheelhouse.link_or_copy(wheel, target / wheel.name)
    (target / "requirements.txt").write_text("\n".join(reqs) + "\n")
    wheelhouse.build_project_wheel(REPO, dest / "app")
    shutil.copyfile(BASELINE / containerfile, dest / "Containerfile")
    return dest


def build_before(config: podman_builder.PodmanConfig, work: Path) -> dict[str, str]:
    """Both model versions and the sync agent with the bbc767f recipe, host arch only."""
    env = {**os.environ, **config.podman_env}
    base = ensure_baseline_base(env)
    arch = base_image.host_arch()
    goarch, variant = context.TARGET[arch]
    platform_args = {"BASE_IMAGE": base, "TARGETARCH": goarch, "TARGETVARIANT": variant}
    client = podman_builder.docker_client(config.socket)
    out = {}
    try:
        reqs = wheelhouse.image_requirements(REPO / "pyproject.toml", "tflite")
        for major in VERSIONS:
            dest = baseline_context(
                work / f"before-v{major}", "model_server.Containerfile", reqs, False
            )
            context.write_package(package(major), dest / "model")
            ctx = context.BuildContext(dest, package(major), (arch,))
            args = {
                **ctx.build_args(request(major, (arch,)), created="2026-01-01"),
                **platform_args,
            }
            repo = refs.parse(f"{config.image_repository}/{MODEL}-before:{version_name(major)}")
            say(f"building {repo} (baseline recipe: pip inside the image)")
            podman_builder.build_image(
                client, dest, str(repo), args, context.PLATFORM[arch], progress=say
            )
            podman_builder.push_image(client, repo)
            out[f"v{major}"] = str(repo)
        sync_reqs = wheelhouse.pick_requirements(
            REPO / "pyproject.toml", sync_image.SYNC_REQUIREMENTS
        )
        dest = baseline_context(work / "before-sync", "sync_pod.Containerfile", sync_reqs, False)
        repo = refs.parse(f"{config.image_repository}/edgefleet-sync-before:bench")
        say(f"building {repo} (baseline recipe)")
        podman_builder.build_image(
            client, dest, str(repo), platform_args, context.PLATFORM[arch], progress=say
        )
        podman_builder.push_image(client, repo)
        out["sync"] = str(repo)
    finally:
        client.close()
    return out


# -- measuring -----------------------------------------------------------------------------


def rows_for(client: RegistryClient, when: str, images: dict[str, str]) -> list[Row]:
    v1 = transfer.platform_images(client, images["v1"])
    v2 = transfer.platform_images(client, images["v2"])
    sync = transfer.platform_images(client, images["sync"])
    rows = []
    for arch in support.IMAGE_ARCHES:
        if arch in v2:
            rows.append(
                Row(
                    "model-server",
                    arch,
                    when,
                    v2[arch].first_install(),
                    v2[arch].update_from(v1[arch]),
                )
            )
        else:
            rows.append(Row("model-server", arch, when, None, None, "not buildable at bbc767f"))
        if arch in sync:
            rows.append(Row("sync agent", arch, when, sync[arch].first_install()))
        else:
            rows.append(Row("sync agent", arch, when, None, None, "not buildable at bbc767f"))
    return rows


def mb(value: int | None) -> str:
    return "-" if value is None else f"{value / MB:8.1f}"


def report(before: list[Row], after: list[Row], model_bytes: int) -> int:
    print("\ncompressed bytes pulled (MB = 10^6 bytes), before = bbc767f recipe, after = now")
    print(f"{'image':13} {'arch':8} {'first install':>28} {'model update (v1 -> v2)':>32}")
    columns = f"{'before':>8} {'after':>8} {'ratio':>8}"
    print(f"{'':13} {'':8} {columns}   {columns}")
    failures = []
    by_key = {(r.image, r.arch): r for r in before}
    for a in after:
        b = by_key.get((a.image, a.arch))
        ratio = (
            f"{a.first_install / b.first_install:8.2f}"
            if b and b.first_install and a.first_install
            else "       -"
        )
        up_ratio = f"{a.update / b.update:8.2f}" if b and b.update and a.update else "       -"
        note = f"  ({b.note})" if b and b.note else ""
        print(
            f"{a.image:13} {a.arch:8} {mb(b.first_install if b else None)} {mb(a.first_install)} "
            f"{ratio}   {mb(b.update if b else None)} {mb(a.update)} {up_ratio}{note}"
        )
        target = TARGET_SERVER_MB if a.image == "model-server" else TARGET_SYNC_MB
        if a.first_install is None or a.first_install > target * MB:
            failures.append(f"{a.image} {a.arch} first install over {target:.0f} MB")
        if a.image == "model-server" and (a.update is None or a.update > model_bytes + 2 * MB):
            failures.append(f"{a.image} {a.arch} update is more than the model + 2 MB")
    print(
        f"\nmodel file of v2: {model_bytes / MB:.1f} MB; targets: model server <= "
        f"{TARGET_SERVER_MB:.0f} MB, sync agent <= {TARGET_SYNC_MB:.0f} MB first install"
    )
    for failure in failures:
        print(f"MISSED: {failure}")
    print("verdict:", "all targets met" if not failures else f"{len(failures)} target(s) missed")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    from edgefleet.localstack.podman import PodmanEnv, PodmanService
    from edgefleet.localstack.registry import Registry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-images-"))
    started = time.monotonic()
    registry = Registry(work / "registry").start()
    penv = PodmanEnv(work / "podman", [registry.host])
    service = PodmanService(work / "podman", penv).start()
    try:
        config = podman_builder.PodmanConfig(
            image_repository=f"{registry.host}/bench",
            socket=service.docker_url,
            insecure_registries=frozenset({registry.host}),
            podman_env=penv.env(),
        )
        client = RegistryClient(insecure=frozenset({registry.host}), token_source=lambda: None)
        t0 = time.monotonic()
        before = rows_for(client, "before", build_before(config, work))
        t1 = time.monotonic()
        after = rows_for(client, "after", build_after(config, work))
        t2 = time.monotonic()
        print(
            f"built: before {t1 - t0:.0f} s (host arch), after {t2 - t1:.0f} s (both arches); "
            f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
        )
        return report(before, after, len(package(2).files["model.tflite"]))
    finally:
        service.stop()
        registry.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        print(f"bench finished in {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""Packaging by role and by arch, without building an image: what each image's edgefleet
wheel carries, the aarch64 wheel tags, reproducible Python trees, the lean base recipe and
the armv7l refusal at provisioning."""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgefleet.packaging import base_image, site, support, wheelhouse

REPO = Path(__file__).resolve().parent.parent
# The cloud side, operator CLI, local stack, packaging, functions and test helpers: never
# in a device's image.
NOT_ON_DEVICES = (
    "edgefleet/cloud/",
    "edgefleet/operator/",
    "edgefleet/localstack/",
    "edgefleet/packaging/",
    "functions/",
    "manifests/",
    "tests/",
    "support/",
)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    out = tmp_path_factory.mktemp("role-wheels")
    found = {}
    for role in wheelhouse.ROLES:
        wheel = wheelhouse.build_project_wheel(REPO, out / role, role=role)
        found[role] = zipfile.ZipFile(wheel).namelist()
    return found


def _packages(names: list[str]) -> set[str]:
    """Top-level packages (``edgefleet/core`` for edgefleet's subpackages) of a wheel."""
    tops = set()
    for name in names:
        parts = name.split("/")
        if len(parts) < 2 or parts[0].endswith(".dist-info") or parts[1] == "__init__.py":
            continue
        tops.add("/".join(parts[:2]) if parts[0] == "edgefleet" and len(parts) > 2 else parts[0])
    return tops


def test_device_wheel_carries_core_device_and_sync_pod_only(wheels: dict[str, list[str]]) -> None:
    names = wheels["device"]
    assert _packages(names) == {"edgefleet/core", "device", "sync_pod"}
    wanted = {"edgefleet/__init__.py", "edgefleet/core/manifest_set.py", "device/podcheck.py"}
    wanted |= {"device/gcs_json.py", "sync_pod/__main__.py"}
    assert wanted <= set(names)
    assert not [n for n in names if n.startswith((*NOT_ON_DEVICES, "model_server/"))]
    assert not [n for n in names if n.endswith("entry_points.txt")], "no operator CLI"


def test_server_wheel_carries_core_and_model_server_only(wheels: dict[str, list[str]]) -> None:
    names = wheels["server"]
    assert {"model_server/__main__.py", "edgefleet/core/logs.py"} <= set(names)
    assert not [n for n in names if n.startswith((*NOT_ON_DEVICES, "device/", "sync_pod/"))]
    assert _packages(names) == {"model_server", "edgefleet/core"}


def test_full_wheel_still_carries_everything(tmp_path: Path) -> None:
    """The functions' and operator's wheel (no role) keeps the cloud side and the CLI."""
    names = zipfile.ZipFile(wheelhouse.build_project_wheel(REPO, tmp_path)).namelist()
    assert {"edgefleet/cloud/control.py", "edgefleet/operator/cli.py", "functions/main.py"} <= {
        *names
    }


def test_aarch64_platforms_name_manylinux_2_17_explicitly() -> None:
    tags = wheelhouse.PIP_PLATFORMS["aarch64"]
    assert "manylinux_2_17_aarch64" in tags and "manylinux_2_27_aarch64" in tags
    assert "manylinux_2_36_aarch64" in tags and "manylinux_2_37_aarch64" not in tags
    assert all(t.endswith("_aarch64") for t in tags)


def test_aarch64_wheelhouse_has_litert_and_numpy_for_arm64() -> None:
    """The real package index, through the real pip (cached after the first run)."""
    deps = wheelhouse.ensure_dependency_wheels(REPO, "aarch64")
    names = [p.name for p in deps.glob("*.whl")]
    for project in ("ai_edge_litert", "numpy", "pillow", "cryptography"):
        found = [n for n in names if n.startswith(f"{project}-")]
        assert found, f"no {project} wheel in {deps}"
        assert all(("aarch64" in n) or n.endswith("-none-any.whl") for n in found), found
    # LiteRT 2.x crashes under qemu's arm64; the aarch64 images keep 1.x (ARCH_PINS).
    assert [n for n in names if n.startswith("ai_edge_litert-1.")], names


def test_unpacked_tree_is_reproducible(tmp_path: Path) -> None:
    """Same wheel, same tree bytes and mtimes, hash-based byte code: the image layer of
    the edgefleet code is the same for every model version built from one source."""
    wheel = wheelhouse.build_project_wheel(REPO, tmp_path / "w", role="server")

    def fingerprint(root: Path) -> str:
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*")):
            st = path.lstat()
            digest.update(f"{path.relative_to(root)}|{st.st_mtime_ns}|{st.st_mode}".encode())
            if path.is_file():
                digest.update(path.read_bytes())
        return digest.hexdigest()

    one = site.unpack_wheel(wheel, tmp_path / "one")
    os.utime(wheel)  # a later build
    two = site.unpack_wheel(wheel, tmp_path / "two")
    assert fingerprint(one) == fingerprint(two)
    pycs = list(one.glob("model_server/__pycache__/*.pyc"))
    assert pycs and all(p.read_bytes()[4:8] == b"\x01\x00\x00\x00" for p in pycs)  # hash-based
    assert all(str(tmp_path).encode() not in p.read_bytes() for p in pycs)
    assert not list(one.glob("*.dist-info/direct_url.json"))


def test_lean_base_recipe_extracts_without_running_anything(tmp_path: Path) -> None:
    argv = base_image.mmdebstrap_argv("mmdebstrap", "aarch64", tmp_path / "root")
    assert "--variant=extract" in argv and "--architectures=arm64" in argv
    included = next(a for a in argv if a.startswith("--include=")).split("=", 1)[1].split(",")
    assert "python3.11" in included and not {"apt", "dpkg", "bash", "perl"} & set(included)
    assert base_image.RECIPE in base_image.DEFAULT_TAG


def test_finish_root_adds_what_maintainer_scripts_would_and_prunes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    mozilla = root / "usr/share/ca-certificates/mozilla"
    mozilla.mkdir(parents=True)
    (mozilla / "A.crt").write_text("-----A-----\n")
    (mozilla / "B.crt").write_text("-----B-----\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3.11").write_text("")
    (root / "usr/bin/dpkg").write_text("")
    (root / "usr/share/perl5/Debconf").mkdir(parents=True)
    (root / "etc").mkdir()
    stdlib = root / "usr/lib/python3.11"
    (stdlib / "json").mkdir(parents=True)
    (stdlib / "json/__init__.py").write_text("VALUE = 1\n")
    base_image.finish_root(root)
    assert (root / "etc/ssl/certs/ca-certificates.crt").read_text() == "-----A-----\n-----B-----\n"
    assert os.readlink(root / "usr/bin/python3") == "python3.11"
    assert "edgefleet:x:10001:10001:" in (root / "etc/passwd").read_text()
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert not (root / "usr/bin/dpkg").exists() and not (root / "usr/share/perl5").exists()
    assert not (root / "usr/share/ca-certificates").exists()
    # The standard library's byte code, as py3compile would have written it: found by the
    # image's python3.11 (cpython-311 tag), naming the image's path, never re-checked.
    pyc = stdlib / "json/__pycache__/__init__.cpython-311.pyc"
    data = pyc.read_bytes()
    assert data[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(data[4:8], "little") == 0b01  # hash-based, unchecked
    code = marshal.loads(data[16:])
    assert code.co_filename == "/usr/lib/python3.11/json/__init__.py"


def test_armv7l_provisioning_is_refused_in_one_line(tmp_path: Path) -> None:
    # fmt: off
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.operator.cli",
            "provision",
            "--arch",
            "armv7l",
            "--channel",
            "beta",
            "--bucket",
            "deploy",
            "--runtime",
            "podman",
            "--device-id",
            "pi-zero-1",
            "--root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # fmt: on
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("edgefleet: --arch armv7l: no image for armv7l")
    assert "aarch64" in lines[0]  # the fix: a 64-bit OS, provisioned as aarch64
    assert list(tmp_path.iterdir()) == []


def test_aarch64_provisioning_is_accepted() -> None:
    assert support.check_device_arch("aarch64") == "aarch64"
    assert support.check_device_arch("x86_64") == "x86_64"

"""Host-built wheels for the model-server image, so that the image build needs no network.

The dependency wheels (edgefleet's requirements plus the ``server`` extra) are fetched once
with the host's pip and cached under a key made of the pyproject content, the target
platform and the Python version: a later build with an unchanged pyproject reuses them.
The edgefleet wheel itself is rebuilt for every build, because the source changes without
pyproject changing. Foreign architectures get binary wheels only (``pip download
--platform``): nothing is compiled for a platform the host cannot run.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from edgefleet.core.errors import ConfigError, EdgefleetError
from edgefleet.packaging.base_image import Progress, host_arch, stderr_progress

PYTHON_VERSION = "3.11"
REPRODUCIBLE_EPOCH = "315532800"  # 1980-01-01: the earliest time a zip entry can hold
# Build outputs, caches and local state: never part of the edgefleet wheel's source.
_NOT_SOURCE_AT_ROOT = {".git", ".venv", "venv", ".edgefleet", "build", "dist"}
_NOT_SOURCE_ANYWHERE = shutil.ignore_patterns(
    "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "*.pyc"
)
DEFAULT_EXTRAS: tuple[str, ...] = ("server",)
COMPLETE = ".complete"  # marks a finished cache entry
_COMPLETE = COMPLETE
# The images' glibc (Debian bookworm): a manylinux_2_X wheel runs there when X <= 36.
GLIBC_MINOR = 36


def manylinux_tags(machine: str, glibc_minor: int = GLIBC_MINOR) -> tuple[str, ...]:
    """Every manylinux platform tag a wheel for ``machine`` may carry and still run on the
    image's glibc, named one by one: ``pip download --platform`` takes a tag literally (the
    current pip does not match ``manylinux2014_aarch64`` against a wheel tagged
    ``manylinux_2_17_aarch64``, and LiteRT's aarch64 wheels carry only the latter)."""
    perennial = tuple(f"manylinux_2_{m}_{machine}" for m in range(glibc_minor, 16, -1))
    return (*perennial, f"manylinux2014_{machine}")


# Device arch -> pip platform tags of the binary wheels that run there.
PIP_PLATFORMS: dict[str, tuple[str, ...]] = {
    "x86_64": manylinux_tags("x86_64"),
    "aarch64": manylinux_tags("aarch64"),
    "armv7l": (*manylinux_tags("armv7l"), "linux_armv7l"),
}
# What runs in each image, by role: the device image's wheel carries the shared core and the
# device side only (no cloud functions, operator CLI, local stack or test helpers).
ROLES: dict[str, tuple[str, ...]] = {
    "device": ("edgefleet/__init__.py", "edgefleet/core", "device", "sync_pod"),
    "server": ("edgefleet/__init__.py", "edgefleet/core", "model_server"),
}


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("EDGEFLEET_CACHE_DIR"):
        return Path(env["EDGEFLEET_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgefleet"


def find_project_root(env: Mapping[str, str] | None = None) -> Path:
    """The source tree the image is built from: EDGEFLEET_SOURCE, else this checkout."""
    env = os.environ if env is None else env
    candidates = [Path(env["EDGEFLEET_SOURCE"])] if env.get("EDGEFLEET_SOURCE") else []
    candidates.append(Path(__file__).resolve().parents[2])
    for root in candidates:
        if (root / "pyproject.toml").is_file() and (root / "model_server").is_dir():
            return root
    raise ConfigError(
        "cannot find the edgefleet source tree (pyproject.toml + model_server/): "
        "set EDGEFLEET_SOURCE to a checkout"
    )


def requirements(pyproject: Path, extras: Sequence[str] = DEFAULT_EXTRAS) -> list[str]:
    """The project's requirements plus those of ``extras``, as pip requirement strings."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ConfigError(f"pyproject has no extra {extra!r}")
        reqs += [r for r in optional[extra] if not r.startswith(project["name"])]
    return list(dict.fromkeys(reqs))


# What the model-server image installs, beside the ``server`` extra: of the base
# requirements model_server imports only urllib3 and google-auth (telemetry's REST
# publisher, model_server.publisher; of edgefleet.core only errors, logs, google_http).
IMAGE_BASE_REQUIREMENTS: tuple[str, ...] = ("urllib3", "google-auth")
# In the server extra for the drift tests' cross-check only; model_server never imports it.
IMAGE_EXCLUDED: tuple[str, ...] = ("scipy",)
# Each model runtime's package: an image carries only the one its model needs.
RUNTIME_PACKAGES: dict[str, str] = {"tflite": "ai-edge-litert", "onnx": "onnxruntime"}


def requirement_name(requirement: str) -> str:
    """The canonical project name of a requirement string (PEP 503 normalised)."""
    name = re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


# Per-arch bounds on top of pyproject's. LiteRT 2.x's aarch64 wheel dies with SIGSEGV in
# allocate_tensors under qemu-user (Debian 12's qemu 7.2), the only arm64 this project can
# run its tests on, even without the XNNPACK delegate; 1.4.0 (manylinux_2_17_aarch64)
# classifies the golden image correctly there. Lift the bound once 2.x is shown to run.
ARCH_PINS: dict[str, dict[str, str]] = {
    "aarch64": {"ai-edge-litert": "ai-edge-litert>=1.2,<2"},
}


def pinned(reqs: Sequence[str], arch: str) -> list[str]:
    """``reqs`` with the arch's bounds of :data:`ARCH_PINS` in place of pyproject's."""
    pins = ARCH_PINS.get(arch, {})
    return [pins.get(requirement_name(r), r) for r in reqs]


def image_requirements(pyproject: Path, runtime: str) -> list[str]:
    """The requirements the model-server image installs for a model of ``runtime``.

    Version bounds come from pyproject, so the image and the host never disagree.
    """
    if runtime not in RUNTIME_PACKAGES:
        raise ConfigError(f"unknown model runtime {runtime!r}")
    project = tomllib.loads(pyproject.read_text())["project"]
    base = {requirement_name(r): r for r in project.get("dependencies", [])}
    chosen = [base[name] for name in IMAGE_BASE_REQUIREMENTS if name in base]
    dropped = {*IMAGE_EXCLUDED, *(p for k, p in RUNTIME_PACKAGES.items() if k != runtime)}
    for req in project.get("optional-dependencies", {}).get("server", []):
        if requirement_name(req) not in dropped:
            chosen.append(req)
    return list(dict.fromkeys(chosen))


def pick_requirements(pyproject: Path, names: Sequence[str]) -> list[str]:
    """The base requirements called ``names``, with pyproject's version bounds."""
    project = tomllib.loads(pyproject.read_text())["project"]
    base = {requirement_name(r): r for r in project.get("dependencies", [])}
    missing = [n for n in names if requirement_name(n) not in base]
    if missing:
        raise ConfigError(f"pyproject's dependencies lack {', '.join(missing)}")
    return [base[requirement_name(n)] for n in names]


def cache_key(pyproject: Path, arch: str, extras: Sequence[str] = DEFAULT_EXTRAS) -> str:
    digest = hashlib.sha256(pyproject.read_bytes())
    digest.update(f"|{arch}|{PYTHON_VERSION}|{','.join(extras)}".encode())
    for name, bound in sorted(ARCH_PINS.get(arch, {}).items()):
        digest.update(f"|{name}={bound}".encode())
    return digest.hexdigest()[:16]


def ensure_dependency_wheels(
    project_root: Path,
    arch: str,
    *,
    cache_dir: Path | None = None,
    extras: Sequence[str] = DEFAULT_EXTRAS,
    progress: Progress = stderr_progress,
) -> Path:
    """The cached directory of dependency wheels for ``arch``, built when missing."""
    if arch not in PIP_PLATFORMS:
        raise ConfigError(f"no wheel platform for arch {arch!r}")
    pyproject = project_root / "pyproject.toml"
    cache_dir = cache_dir or default_cache_dir()
    target = cache_dir / "wheelhouse" / f"{arch}-{cache_key(pyproject, arch, extras)}"
    if (target / _COMPLETE).is_file():
        return target
    reqs = pinned(requirements(pyproject, extras), arch)
    progress(f"building the {arch} wheelhouse ({len(reqs)} requirements) into {target}")

    def pip_args(req_file: Path, out: Path) -> list[str]:
        if arch == host_arch():
            return ["wheel", "--wheel-dir", str(out), "--prefer-binary", "-r", str(req_file)]
        argv = ["download", "--dest", str(out), "--only-binary=:all:"]
        argv += [f"--platform={p}" for p in PIP_PLATFORMS[arch]]
        argv += [f"--python-version={PYTHON_VERSION}", "--implementation=cp"]
        return [*argv, "-r", str(req_file)]

    return fill_cache_entry(target, reqs, pip_args, f"fetching wheels for {arch}")


def fill_cache_entry(
    target: Path,
    reqs: Sequence[str],
    pip_args: Callable[[Path, Path], list[str]],
    what: str,
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """Make cache entry ``target`` with one pip run (``pip_args(requirements_file, out)``)
    into a temporary directory beside it, then ``finish(out)``, the completion mark and a
    rename: a half-made entry is never used, a completed one is reused as is."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=target.parent) as tmp:
        req_file = Path(tmp) / "requirements.txt"
        req_file.write_text("\n".join(reqs) + "\n")
        out = Path(tmp) / "out"
        run_pip(pip_args(req_file, out), what)
        if finish is not None:
            finish(out)
        (out / _COMPLETE).write_text("\n".join(reqs) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        out.rename(target)
    return target


def build_project_wheel(project_root: Path, out_dir: Path, role: str | None = None) -> Path:
    """Build the edgefleet wheel (pure Python, any arch) from the source tree into out_dir.

    With ``role`` (a key of :data:`ROLES`) the wheel holds only that role's packages and
    no console script (the CLI is not part of it): what an image of that role runs.

    The wheel is built from a copy without build outputs: setuptools reuses an in-tree
    ``build/lib``, which keeps modules deleted from the source and would ship them. It is
    reproducible: the same source gives the same bytes, so image builds reuse their cached
    runtime layer and model versions share it (see model_server/Containerfile).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("edgefleet-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="edgefleet-src-") as tmp:
        source = Path(tmp) / "src"
        if role is None:
            shutil.copytree(project_root, source, ignore=_not_source(project_root), symlinks=True)
        else:
            copy_role(project_root, source, role)
        run_pip(
            ["wheel", "--no-deps", "--wheel-dir", str(out_dir), str(source)],
            "edgefleet wheel",
            env={"SOURCE_DATE_EPOCH": REPRODUCIBLE_EPOCH},
        )
    wheels = sorted(out_dir.glob("edgefleet-*.whl"))
    if len(wheels) != 1:
        raise EdgefleetError(f"expected one edgefleet wheel in {out_dir}, found {len(wheels)}")
    return wheels[0]


def copy_role(project_root: Path, dest: Path, role: str) -> None:
    """The source tree of one role's wheel: pyproject (without console scripts or readme)
    and the role's packages; setuptools' package discovery then finds only those."""
    if role not in ROLES:
        raise ConfigError(f"unknown wheel role {role!r}: use one of {', '.join(ROLES)}")
    dest.mkdir(parents=True)
    pyproject = _without_table((project_root / "pyproject.toml").read_text(), "project.scripts")
    # No README as the long description: a docs change must not change the code layer.
    pyproject = "".join(
        line for line in pyproject.splitlines(keepends=True) if not line.startswith("readme =")
    )
    (dest / "pyproject.toml").write_text(pyproject)
    ignore = shutil.ignore_patterns(
        "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "*.pyc"
    )
    for rel in ROLES[role]:
        src, out = project_root / rel, dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, out, ignore=ignore)
        else:
            shutil.copyfile(src, out)


def _without_table(toml_text: str, table: str) -> str:
    """``toml_text`` without the ``[table]`` section (its header up to the next header)."""
    out, skipping = [], False
    for line in toml_text.splitlines(keepends=True):
        if line.startswith("["):
            skipping = line.strip() == f"[{table}]"
        if not skipping:
            out.append(line)
    return "".join(out)


def _not_source(project_root: Path) -> Callable[[str, list[str]], set[str]]:
    """A copytree filter that leaves out build outputs, caches and local state."""
    root = str(project_root)

    def ignore(directory: str, names: list[str]) -> set[str]:
        ignored = set(_NOT_SOURCE_ANYWHERE(directory, names))
        if directory == root:
            ignored |= _NOT_SOURCE_AT_ROOT & set(names)
        return ignored

    return ignore


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link ``src`` to ``dst`` (a copy across file systems); an existing ``dst`` stays."""
    if Path(dst).exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run_pip(args: list[str], what: str, env: Mapping[str, str] | None = None) -> None:
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    run_env = {**os.environ, **env} if env else None
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=run_env)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
        raise EdgefleetError(f"{what}: pip failed (exit {result.returncode}): {tail}")

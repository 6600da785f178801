"""A clean Debian bookworm root (mmdebstrap) to run commands in as on a fresh machine.

Commands run chrooted inside ``unshare --mount --pid --fork`` (plus ``--net`` for an own
network namespace): every mount made for the chroot lives in that private mount
namespace and every process in that PID namespace, so both vanish when the command ends,
however it ends. The root directory is then removed, after checking that nothing is
mounted below it.

Downloaded ``.deb`` files are cached between runs (``~/.cache/edgefleet/fresh-root/debs``,
``XDG_CACHE_HOME`` honoured): apt checks each cached archive against the hash in the
signed index before using it, so a cache never changes what gets installed, only how
long it takes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"
# The minimal Debian set (Essential + apt) plus what this kind of machine ships that
# the install script relies on and must not install: Debian's Python with venv, CA
# certificates. tests/test_fresh_machine.py says why.
INCLUDE = ("python3", "python3-venv", "ca-certificates")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def deb_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "edgefleet" / "fresh-root" / "debs"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(repr=False)
class Result:
    argv: Sequence[str]
    returncode: int
    output: str  # stdout and stderr, interleaved

    def __repr__(self) -> str:  # assertion messages show the output's tail instead
        return f"Result(exit {self.returncode})"

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


# Inside `unshare`: make the root a mount point (podman's storage remounts "/"), mount
# what a running system has, bind the host's preinstalled parts read-only at their own
# paths, then chroot. $1 = root, $2 = "net" to bring up loopback, $3.. = binds, "--", argv.
_ENTER = r"""
set -eu
root=$1; net=$2; shift 2
if [ "$net" = net ]; then ip link set lo up; fi
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
while [ "$1" != -- ]; do
  mode=$1; path=$2; shift 2
  mkdir -p "$root$path"
  mount --bind "$path" "$root$path"
  if [ "$mode" = ro ]; then mount -o remount,bind,ro "$root$path"; fi
done
shift
cp /etc/resolv.conf "$root/etc/resolv.conf"
exec chroot "$root" "$@"
"""


@dataclass
class FreshRoot:
    """A bookworm root at ``path`` with ``binds``: (host path, read-only?) mounted at the
    same path inside."""

    path: Path
    binds: list[tuple[Path, bool]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def build(self, timeout: float = 300.0) -> Result:
        cache = deb_cache()
        argv = [
            "mmdebstrap",
            "--variant=apt",
            f"--include={','.join(INCLUDE)}",
            "--skip=essential/unlink",
            f'--setup-hook=mkdir -p "$1"/var/cache/apt/archives/ && '
            f'cp -a {shlex.quote(str(cache))}/. "$1"/var/cache/apt/archives/',
            f"--customize-hook=sync-out /var/cache/apt/archives {shlex.quote(str(cache))}",
            SUITE,
            str(self.path),
        ]
        return _run(argv, timeout)

    def run(self, argv: Sequence[str], *, own_net: bool, timeout: float) -> Result:
        """``argv`` chrooted in the root, in fresh mount and PID namespaces (and network
        namespace when ``own_net``), with ``env`` and a plain PATH."""
        flags = ["--mount", "--pid", "--fork", "--kill-child", "--propagation", "private"]
        if own_net:
            flags.append("--net")
        binds: list[str] = []
        for path, read_only in self.binds:
            binds += ["ro" if read_only else "rw", str(path)]
        env = ["env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8"]
        env += [f"{k}={v}" for k, v in self.env.items()]
        cmd = ["unshare", *flags, "bash", "-c", _ENTER, "enter", str(self.path)]
        cmd += ["net" if own_net else "host", *binds, "--", *env, *argv]
        return _run(cmd, timeout)

    def remove(self) -> None:
        """Delete the root, refusing while anything is mounted below it (a bind of the
        host's files must never be deleted through)."""
        if not self.path.exists():
            return
        prefix = str(self.path.resolve()) + "/"
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        below = [m.split()[4] for m in mounts if (m.split()[4] + "/").startswith(prefix)]
        if below:
            raise RuntimeError(f"not removing {self.path}: still mounted below it: {below}")
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.path)], check=True)


def _run(argv: Sequence[str], timeout: float) -> Result:
    try:
        proc = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        return Result(argv, -1, f"{out}\n(timed out after {timeout:.0f} s)")
    return Result(argv, proc.returncode, proc.stdout)


def preinstalled_gcloud_sdk() -> Path | None:
    """The Google Cloud SDK this machine ships (``…/google-cloud-sdk``), if any."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    sdk = Path(gcloud).resolve().parents[1]
    return sdk if (sdk / "bin" / "gcloud").is_file() else None


def interpreter_prefix() -> Path | None:
    """The prefix of the Python that runs the tests when it is not Debian's own (e.g. the
    pyenv Python this kind ships): bound into the root so the project's venv runs there."""
    base = Path(sys.base_prefix).resolve()
    return None if base == Path("/usr") or Path("/usr") in base.parents else base

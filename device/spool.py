"""Per-pod spool directories: created by the device, never by the runtime.

A workload may mount only its OWN spool directory, ``/var/spool/edgefleet/POD``, with
``hostPath.type: Directory`` (see :mod:`edgefleet.core.policy`): the runtime refuses to
start the pod unless the directory exists, and never creates it. The agent creates it here
before the switch, as a real directory: the spool root and the pod's directory are checked
with ``lstat`` so a symlink planted there (by anything) is an error, not a mount of
whatever it points to.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgefleet.core import policy
from edgefleet.core.errors import EdgefleetError


class SpoolError(EdgefleetError):
    """A spool directory cannot be made, or something else sits where it should be."""


def spool_dirs(pods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The spool directories ``pods`` (name -> checked pod) mount (pure)."""
    out = []
    for name, pod in pods.items():
        own = f"{policy.SPOOL_ROOT}/{name}"
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            if (volume.get("hostPath") or {}).get("path") == own:
                out.append(own)
    return sorted(set(out))


def ensure(paths: list[str], root: Path = Path("/")) -> None:
    """Create each spool directory (mode 0755) below ``root``; raise :class:`SpoolError`."""
    for path in paths:
        spool_root = root / policy.SPOOL_ROOT.lstrip("/")
        _real_dir(spool_root, parents=True)
        _real_dir(root / path.lstrip("/"), parents=False)


def _real_dir(path: Path, *, parents: bool) -> None:
    try:
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SpoolError(f"cannot create spool directory {path}: {exc.strerror}") from exc
    mode = os.lstat(path).st_mode
    if not stat.S_ISDIR(mode):
        kind = "a symlink" if stat.S_ISLNK(mode) else "not a directory"
        raise SpoolError(f"spool path {path} is {kind}: remove it; pods mount real directories")

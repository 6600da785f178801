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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.core import policy
from edgefleet.core.errors import EdgefleetError


class SpoolError(EdgefleetError):
    """A spool directory cannot be made, or something else sits where it should be."""


@dataclass(frozen=True, slots=True)
class SpoolDir:
    path: str
    uid: int | None = None  # the pod's runAsUser (its containers write there), if declared
    gid: int | None = None


def spool_dirs(pods: Mapping[str, Mapping[str, Any]]) -> list[SpoolDir]:
    """The spool directories ``pods`` (name -> checked pod) mount, with the user the pod
    declares (pod-level ``runAsUser``/``runAsGroup``) as their owner (pure)."""
    out = []
    for name, pod in sorted(pods.items()):
        spec = pod.get("spec") or {}
        own = f"{policy.SPOOL_ROOT}/{name}"
        sc = spec.get("securityContext") or {}
        for volume in spec.get("volumes") or []:
            if (volume.get("hostPath") or {}).get("path") == own:
                out.append(SpoolDir(own, sc.get("runAsUser"), sc.get("runAsGroup")))
                break
    return out


def ensure(dirs: Sequence[SpoolDir], root: Path = Path("/")) -> None:
    """Create each spool directory below ``root`` (0755, or 0750 owned by the pod's user);
    raise :class:`SpoolError`."""
    for spool_dir in dirs:
        _real_dir(root / policy.SPOOL_ROOT.lstrip("/"), parents=True)
        path = root / spool_dir.path.lstrip("/")
        _real_dir(path, parents=False)
        if spool_dir.uid is not None:
            gid = spool_dir.gid if spool_dir.gid is not None else spool_dir.uid
            try:
                os.chown(path, spool_dir.uid, gid, follow_symlinks=False)
                os.chmod(path, 0o750)
            except OSError as exc:
                raise SpoolError(
                    f"cannot hand {path} to uid {spool_dir.uid}: {exc.strerror}"
                ) from exc


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

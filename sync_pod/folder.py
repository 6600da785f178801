"""The kubelet's manifest folder as a symlink that is switched between complete set dirs.

A kubelet reads each file of its folder on its own, so replacing files one by one would
let it run a mix of two sets. Instead every set is written, fsynced, into its own
directory under ``STATE_DIR/sets/`` and ``MANIFEST_DIR`` is a symlink to one of them;
applying a set is one ``rename()`` of a fresh symlink over it, so the kubelet (and a
restarted agent) sees the old set or the new one, never a mix or a partial file.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from edgefleet.core import layout
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.fsutil import fsync_dir, write_file_synced

SWAP_PREFIX = ".edgefleet-swap-"
ADOPTED_PREFIX = "adopted-"


class FolderError(EdgefleetError):
    """The manifest folder or the set store cannot be written (disk full, permissions…)."""


class ManifestFolder:
    def __init__(self, manifest_dir: Path, sets_dir: Path) -> None:
        self.manifest_dir = manifest_dir
        self.sets_dir = sets_dir

    def current(self) -> Path | None:
        """The set dir the kubelet reads now (resolved), or None when there is none."""
        link = self.manifest_dir
        if link.is_symlink():
            target = Path(os.readlink(link))
            if not target.is_absolute():
                target = link.parent / target
            return Path(os.path.normpath(target))
        if link.is_dir():
            return link
        return None

    def read(self, set_dir: Path | None = None) -> dict[str, bytes]:
        """File name -> bytes of the manifests in ``set_dir`` (default: the current one)."""
        folder = set_dir if set_dir is not None else self.current()
        if folder is None or not folder.is_dir():
            return {}
        out: dict[str, bytes] = {}
        for entry in sorted(folder.iterdir()):
            if layout.is_manifest_file_name(entry.name) and entry.is_file():
                out[entry.name] = entry.read_bytes()
        return out

    def set_dir(self, sequence: int, digest: str) -> Path:
        return self.sets_dir / f"{sequence}-{digest[:16]}"

    def prepare(self, set_dir: Path, files: Mapping[str, bytes]) -> Path:
        """Write ``files`` into a fresh ``set_dir`` and fsync them and the directory."""
        if set_dir.parent != self.sets_dir:
            raise FolderError(f"{set_dir} is not inside {self.sets_dir}")
        if self.current() == set_dir:
            raise FolderError(f"{set_dir} is the live set: refusing to rewrite it")
        try:
            self.sets_dir.mkdir(parents=True, exist_ok=True)
            if set_dir.exists():
                shutil.rmtree(set_dir)
            set_dir.mkdir(mode=0o755)
            for name, data in sorted(files.items()):
                if not layout.is_manifest_file_name(name):
                    raise FolderError(f"refusing to write {name!r}: not a manifest file name")
                write_file_synced(set_dir / name, data)
            fsync_dir(set_dir)
            fsync_dir(self.sets_dir)
        except OSError as exc:
            raise FolderError(f"cannot write {set_dir}: {exc.strerror or exc}") from exc
        return set_dir

    def switch(self, set_dir: Path) -> None:
        """Point ``MANIFEST_DIR`` at ``set_dir`` with one rename (adopting a plain dir)."""
        parent = self.manifest_dir.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            if self.manifest_dir.is_dir() and not self.manifest_dir.is_symlink():
                # A device whose folder predates edgefleet: move it aside (same file
                # system, one rename) so the symlink can take its place.
                aside = parent / f".{self.manifest_dir.name}.{ADOPTED_PREFIX}{int(time.time())}"
                os.rename(self.manifest_dir, aside)
            tmp = parent / f"{SWAP_PREFIX}{self.manifest_dir.name}-{os.getpid()}"
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(str(set_dir), tmp)
            os.rename(tmp, self.manifest_dir)
            fsync_dir(parent)
        except OSError as exc:
            raise FolderError(
                f"cannot switch {self.manifest_dir} to {set_dir}: {exc.strerror or exc}"
            ) from exc

    def clean_swap_leftovers(self) -> None:
        """Remove symlinks a killed agent left half-way through a switch."""
        parent = self.manifest_dir.parent
        if not parent.is_dir():
            return
        for entry in parent.iterdir():
            if entry.name.startswith(SWAP_PREFIX) and entry.is_symlink():
                entry.unlink()

    def gc(self, keep: Iterable[Path | None]) -> list[Path]:
        """Delete set dirs other than ``keep`` and the live one; return what was removed."""
        wanted = {p for p in keep if p is not None}
        current = self.current()
        if current is not None:
            wanted.add(current)
        removed = []
        if not self.sets_dir.is_dir():
            return removed
        for entry in self.sets_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink() and entry not in wanted:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        return removed

"""The kubelet's manifest folder: one stable real directory, updated file by file with
atomic renames in a safe order; complete copies of each set kept under ``STATE_DIR/sets``.

Why not swap a symlink between set directories (the design before): kubelet's file
source (``pkg/kubelet/config/file_linux.go``, ``sourceFile.doWatch``) adds its fsnotify
watch on ``--pod-manifest-path`` once, and inotify resolves a symlink when the watch is
added: the watch stays on the directory the link pointed to then. After a swap kubelet
gets no event for the new set and only sees it on its next relist (``fileCheckFrequency``,
20 s by default), and a relist racing the swap (``extractFromDir``: glob the path, then
open every file through the path again) reads old names with new contents.

So the folder kubelet watches is never replaced. Applying a set:

1. every added or changed manifest is written to a dot-file in the folder (kubelet skips
   names starting with "." in both its watch, ``produceWatchEvent``, and its relist glob
   ``[^.]*``), fsynced, and renamed over its final name: inotify reports IN_MOVED_TO, which
   fsnotify reports as Create, which kubelet reads as ``podAdd`` and re-reads the whole
   file; a reader sees the old file or the new one, never a prefix;
2. then the manifests the set drops are unlinked (``podDelete``);
3. the agent's own sync pod comes last: kubelet restarts the agent when it changes, and
   by then everything else is in place (a restart finishes the apply from the journal).
   (A set never removes the sync pod: :func:`sync_pod.pipeline.plan` keeps it.)

Adds before removals: a relist in the middle of an apply never sees a pod of the new set
missing (which would make kubelet stop it); it may briefly see a pod the set drops, which
is stopped a moment later. Each set is also written complete under ``STATE_DIR/sets/`` so
that a rollback or a restart after a crash can put a whole set back, file by file, the
same way. A device whose folder is still the old symlink keeps the directory the link
points to as its stable folder (no gap in which kubelet would find no folder).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from edgefleet.core import layout
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.fsutil import fsync_dir, write_file_synced

TMP_PREFIX = ".edgefleet-"
TMP_SUFFIX = ".tmp"
LEGACY_SWAP_PREFIX = ".edgefleet-swap-"
SYNC_POD_FILE = layout.manifest_file_name(layout.SYNC_POD_NAME)


class FolderError(EdgefleetError):
    """The manifest folder or the set store cannot be written (disk full, permissions…)."""


WRITE = "write"
REMOVE = "remove"


def write_order(live: Mapping[str, bytes], wanted: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """The (operation, file name) steps that turn ``live`` into ``wanted``, in the order to
    take them (pure): adds and changes (sorted), then removals (sorted), then the sync
    pod's own manifest when it changes."""
    writes = sorted(f for f, data in wanted.items() if live.get(f) != data and f != SYNC_POD_FILE)
    removals = sorted(f for f in live if f not in wanted and f != SYNC_POD_FILE)
    steps = [(WRITE, f) for f in writes] + [(REMOVE, f) for f in removals]
    if SYNC_POD_FILE in wanted and live.get(SYNC_POD_FILE) != wanted[SYNC_POD_FILE]:
        steps.append((WRITE, SYNC_POD_FILE))
    elif SYNC_POD_FILE in live and SYNC_POD_FILE not in wanted:
        steps.append((REMOVE, SYNC_POD_FILE))
    return steps


def parse_manifest(data: bytes) -> Any:
    """A manifest file of the folder as a document. The device writes the canonical JSON
    of what it checked (:func:`edgefleet.core.policy.canonical`), which ``json`` reads
    ~300 times faster than PyYAML's pure-Python loader (the gate reads every pod it waits
    for); a file written before canonical JSON is read as YAML. Raises ``ValueError``
    or ``yaml.YAMLError``."""
    try:
        return json.loads(data)
    except ValueError:
        return yaml.safe_load(data)


class ManifestFolder:
    def __init__(self, manifest_dir: Path, sets_dir: Path) -> None:
        self.manifest_dir = manifest_dir
        self.sets_dir = sets_dir

    @property
    def live(self) -> Path:
        """The real directory kubelet reads: MANIFEST_DIR, or where its legacy symlink
        points (kept for good: replacing it would leave kubelet a moment without one)."""
        link = self.manifest_dir
        if link.is_symlink():
            target = Path(os.readlink(link))
            if not target.is_absolute():
                target = link.parent / target
            return Path(os.path.normpath(target))
        return link

    def ensure(self) -> Path:
        """Create the live folder when missing; return it."""
        live = self.live
        try:
            live.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FolderError(f"cannot create {live}: {exc.strerror or exc}") from exc
        return live

    def read(self, folder: Path | None = None) -> dict[str, bytes]:
        """File name -> bytes of the manifests in ``folder`` (default: the live one)."""
        folder = self.live if folder is None else folder
        if not folder.is_dir():
            return {}
        out: dict[str, bytes] = {}
        for entry in sorted(folder.iterdir()):
            if layout.is_manifest_file_name(entry.name) and entry.is_file():
                out[entry.name] = entry.read_bytes()
        return out

    def set_dir(self, name: str) -> Path:
        return self.sets_dir / name

    def stage(self, set_dir: Path, files: Mapping[str, bytes]) -> Path:
        """Write ``files`` as a complete set into a fresh ``set_dir``, fsynced."""
        if set_dir.parent != self.sets_dir:
            raise FolderError(f"{set_dir} is not inside {self.sets_dir}")
        if set_dir == self.live:
            raise FolderError(f"{set_dir} is the live folder: refusing to rewrite it")
        try:
            self.sets_dir.mkdir(parents=True, exist_ok=True)
            if set_dir.exists():
                shutil.rmtree(set_dir)
            set_dir.mkdir(mode=0o755)
            for name, data in sorted(files.items()):
                _check_name(name)
                write_file_synced(set_dir / name, data)
            fsync_dir(set_dir)
            fsync_dir(self.sets_dir)
        except OSError as exc:
            raise FolderError(f"cannot write {set_dir}: {exc.strerror or exc}") from exc
        return set_dir

    def sync(self, wanted: Mapping[str, bytes]) -> list[str]:
        """Make the live folder hold exactly ``wanted``, file by file (see the module doc);
        return the files written or removed. Idempotent: a crash midway is finished by
        calling it again with the same files."""
        live = self.ensure()
        steps = write_order(self.read(live), wanted)
        try:
            for op, name in steps:
                _check_name(name)
                if op == REMOVE:
                    (live / name).unlink(missing_ok=True)
                    continue
                tmp = live / f"{TMP_PREFIX}{name}{TMP_SUFFIX}"
                tmp.unlink(missing_ok=True)
                write_file_synced(tmp, wanted[name])
                os.replace(tmp, live / name)
            if steps:
                fsync_dir(live)
        except OSError as exc:
            raise FolderError(f"cannot update {live}: {exc.strerror or exc}") from exc
        return [name for _, name in steps]

    def clean_leftovers(self) -> None:
        """Remove temporary files a killed agent left in the live folder (kubelet never
        reads them: their names start with a dot) and the swap links the former symlink
        design left beside MANIFEST_DIR."""
        _unlink_matching(self.live, lambda n: n.startswith(TMP_PREFIX) and n.endswith(TMP_SUFFIX))
        _unlink_matching(self.manifest_dir.parent, lambda n: n.startswith(LEGACY_SWAP_PREFIX))

    def gc(self, keep: Iterable[Path | None]) -> list[Path]:
        """Delete set copies other than ``keep`` (never the live folder)."""
        wanted = {p for p in keep if p is not None}
        wanted.add(self.live)
        removed: list[Path] = []
        if not self.sets_dir.is_dir():
            return removed
        for entry in self.sets_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink() and entry not in wanted:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        return removed


def _unlink_matching(folder: Path, match: Callable[[str], bool]) -> None:
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if match(entry.name) and (entry.is_symlink() or entry.is_file()):
            entry.unlink(missing_ok=True)


def _check_name(name: str) -> None:
    if not layout.is_manifest_file_name(name):
        raise FolderError(f"refusing to write {name!r}: not a manifest file name")

"""Issue 12, the spool symlink: a workload that could mount the spool root could plant a
symlink to ``/`` there for another pod's hostPath. Now each workload mounts only its own
directory (policy) and the device creates it as a real directory, refusing a symlink."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from support.security import POLICY, good_pod

from device import spool
from edgefleet.core import policy


def test_spool_dirs_are_the_pods_own_and_created_as_real_directories(tmp_path: Path) -> None:
    pod = policy.check_manifest(yaml.safe_dump(good_pod()), POLICY, model_check=False)
    assert spool.spool_dirs({"model": pod}) == ["/var/spool/edgefleet/model"]
    spool.ensure(spool.spool_dirs({"model": pod}), root=tmp_path)
    made = tmp_path / "var/spool/edgefleet/model"
    assert made.is_dir() and not made.is_symlink()
    spool.ensure(["/var/spool/edgefleet/model"], root=tmp_path)  # idempotent


def test_a_planted_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "var/spool/edgefleet"
    root.mkdir(parents=True)
    (root / "model").symlink_to("/")
    with pytest.raises(spool.SpoolError, match="symlink"):
        spool.ensure(["/var/spool/edgefleet/model"], root=tmp_path)

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
    assert spool.spool_dirs({"model": pod}) == [spool.SpoolDir("/var/spool/edgefleet/model")]
    spool.ensure(spool.spool_dirs({"model": pod}), root=tmp_path)
    made = tmp_path / "var/spool/edgefleet/model"
    assert made.is_dir() and not made.is_symlink()
    spool.ensure(spool.spool_dirs({"model": pod}), root=tmp_path)  # idempotent


def test_spool_dir_belongs_to_the_pods_declared_user(tmp_path: Path) -> None:
    doc = good_pod()
    doc["spec"]["securityContext"].update(runAsUser=10001, runAsGroup=10002)
    pod = policy.check_manifest(yaml.safe_dump(doc), POLICY, model_check=False)
    [wanted] = spool.spool_dirs({"model": pod})
    assert (wanted.uid, wanted.gid) == (10001, 10002)
    spool.ensure([wanted], root=tmp_path)
    st = (tmp_path / "var/spool/edgefleet/model").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (10001, 10002, 0o750)


def test_a_planted_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "var/spool/edgefleet"
    root.mkdir(parents=True)
    (root / "model").symlink_to("/")
    with pytest.raises(spool.SpoolError, match="symlink"):
        spool.ensure([spool.SpoolDir("/var/spool/edgefleet/model")], root=tmp_path)

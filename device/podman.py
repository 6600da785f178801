"""The podman runtime: reconcile the applied manifest folder with ``podman kube play``.

Podman has no folder watcher, so the agent plays every manifest whose content changed
(``--replace``) and takes down the pods whose manifest disappeared. What was played is
recorded as a copy per pod under ``STATE_DIR/runtime/podman/``: comparing it with the
folder tells what changed, and it names the pods to take down and their grace periods.
The sync pod's own manifest is never played nor taken down here: on a podman device the
agent runs from its systemd unit.

A pod being replaced or taken down is first stopped (``podman pod stop``, with the
manifest's ``terminationGracePeriodSeconds``) and only then removed. Removing a running
pod in one step (``kube play --replace``, ``pod rm -f``) makes podman 4.3 wait about 3 s
on the pod's cgroup, which still holds the containers' exit handlers; stopping first
takes that 3 s out of every rollout (see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from device.runtime import ContainerStatus, PodStatus
from edgefleet.core import layout, refs
from edgefleet.core.errors import EdgefleetError, InvalidReference
from edgefleet.core.fsutil import atomic_write

log = logging.getLogger(__name__)

PLAY_TIMEOUT = 600.0
QUERY_TIMEOUT = 30.0
CLEANUP_NICENESS = 10  # removing a pod nothing waits for: behind the versions starting
MAX_ANNOTATION = 63
DEFAULT_GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds


class RuntimeFailure(EdgefleetError):
    """podman failed or timed out; the message holds its last error line."""


def adapt_for_podman(text: bytes) -> bytes:
    """The manifest as podman 4.3 accepts it.

    ``kube play`` turns ``containerPort`` into port mappings and then refuses them for a
    hostNetwork pod ("PortMappings can only be used with Bridge or slirp4netns
    networking"); on the host network ports are informational, so they are dropped.
    """
    pod = yaml.safe_load(text)
    spec = pod.get("spec") or {}
    changed = False
    # podman 4.3 refuses annotation values longer than 63 characters (a label limit it
    # applies to annotations), e.g. a digest-pinned image reference: they are only
    # informational, so long ones are dropped.
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    for key in [k for k, v in annotations.items() if len(str(v)) > MAX_ANNOTATION]:
        del annotations[key]
        changed = True
    if not spec.get("hostNetwork"):
        return yaml.safe_dump(pod, sort_keys=False).encode() if changed else text
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if c.pop("ports", None) is not None:
            changed = True
    if not changed:
        return text
    return yaml.safe_dump(pod, sort_keys=False).encode()


def grace_seconds(pod: Mapping[str, Any] | None) -> int:
    """How long a pod's containers get between SIGTERM and SIGKILL (pure)."""
    value = ((pod or {}).get("spec") or {}).get("terminationGracePeriodSeconds")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return DEFAULT_GRACE_SECONDS
    return value


def images_of(pod: Mapping[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    return [str(c.get("image")) for c in containers if c.get("image")]


class PodmanRuntime:
    name = "podman"

    def __init__(
        self,
        state_dir: Path,
        *,
        podman: str = "podman",
        tls_verify: bool = True,
        insecure_registries: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        play_timeout: float = PLAY_TIMEOUT,
    ) -> None:
        self.record_dir = state_dir / "runtime" / "podman"
        self.podman = podman
        self.tls_verify = tls_verify
        self.insecure = tuple(insecure_registries)
        self.env = dict(env) if env is not None else None
        self.play_timeout = play_timeout

    # -- Runtime protocol -------------------------------------------------------------

    def prefetch(self, pods: Mapping[str, Mapping[str, Any]]) -> None:
        for image in dict.fromkeys(i for pod in pods.values() for i in images_of(pod)):
            exists = self._run(["image", "exists", image], QUERY_TIMEOUT, check=False)
            if exists.returncode == 0:
                continue
            log.info("pulling image", extra={"fields": {"image": image}})
            self._run(["pull", "-q", *self._tls_flags([image]), image], self.play_timeout)

    def reconcile(self, folder: Path, *, background: bool = False) -> list[str]:
        """Play what changed or stopped, take down what left the folder. ``background``
        (nothing waits for this pass): the query and the removals run at low CPU
        priority; plays never do, since a pod's processes would inherit it."""
        desired = self._desired(folder)
        running = self.pods(background=background) or {}
        started: list[str] = []
        for name, text in sorted(desired.items()):
            adapted = adapt_for_podman(text)
            status = running.get(name)
            if self._recorded(name) == adapted and status is not None and status.running:
                continue
            if status is not None:
                self._stop_and_remove(name, nice=background)
            self._play(name, adapted)
            started.append(name)
        for name in sorted(set(self._recorded_names()) - set(desired)):
            self._down(name)
        return started

    def play(self, name: str, text: str) -> None:
        self._play(name, adapt_for_podman(text.encode()))

    def pods(self, *, background: bool = False) -> dict[str, PodStatus] | None:
        out = self._run(["ps", "-a", "--pod", "--format", "json"], QUERY_TIMEOUT, nice=background)
        try:
            containers = json.loads(out.stdout or "[]") or []
        except json.JSONDecodeError as exc:
            raise RuntimeFailure(f"podman ps printed something that is not JSON: {exc}") from exc
        by_pod: dict[str, list[ContainerStatus]] = {}
        for c in containers:
            pod = c.get("PodName") or ""
            if not pod or c.get("IsInfra"):
                continue
            image = str(c.get("Image") or "")
            names = c.get("Names") or [""]
            by_pod.setdefault(pod, []).append(
                ContainerStatus(
                    name=str(names[0] if isinstance(names, list) else names),
                    image=image,
                    image_digest=_digest_of(image),
                    state=str(c.get("State") or "unknown"),
                )
            )
        return {
            name: PodStatus(
                name, all(c.state == "running" for c in cs), tuple(sorted(cs, key=_by_name))
            )
            for name, cs in by_pod.items()
        }

    # -- helpers ----------------------------------------------------------------------

    def _desired(self, folder: Path) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        if not folder.is_dir():
            return out
        for entry in folder.iterdir():
            if not layout.is_manifest_file_name(entry.name):
                continue
            name = entry.name[: -len(layout.MANIFEST_SUFFIX)]
            if name != layout.SYNC_POD_NAME:
                out[name] = entry.read_bytes()
        return out

    def _record_path(self, name: str) -> Path:
        return self.record_dir / layout.manifest_file_name(name)

    def _recorded(self, name: str) -> bytes | None:
        try:
            return self._record_path(name).read_bytes()
        except FileNotFoundError:
            return None

    def _recorded_names(self) -> list[str]:
        if not self.record_dir.is_dir():
            return []
        return [
            p.name[: -len(layout.MANIFEST_SUFFIX)]
            for p in self.record_dir.iterdir()
            if layout.is_manifest_file_name(p.name)
        ]

    def _play(self, name: str, adapted: bytes) -> None:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        play_file = self.record_dir / f".{name}.play.yaml"
        atomic_write(play_file, adapted)
        pod = yaml.safe_load(adapted)
        log.info("podman kube play", extra={"fields": {"pod": name}})
        try:
            self._run(
                [
                    "kube",
                    "play",
                    "--replace",
                    "-q",
                    *self._tls_flags(images_of(pod)),
                    str(play_file),
                ],
                self.play_timeout,
            )
        except RuntimeFailure:
            # Whatever half-started must not look like a healthy, recorded pod.
            self._run(["pod", "rm", "-f", "-t", "0", "--ignore", name], QUERY_TIMEOUT, check=False)
            self._record_path(name).unlink(missing_ok=True)
            raise
        finally:
            play_file.unlink(missing_ok=True)
        atomic_write(self._record_path(name), adapted)

    def _stop_and_remove(self, name: str, *, nice: bool = False) -> None:
        """Stop ``name`` within its grace period, then remove it (see the module doc).
        ``nice``: at low CPU priority, for a pod nothing waits for (one no longer in the
        set, an old version already handed over): the versions starting get the CPU."""
        try:
            recorded = yaml.safe_load(self._recorded(name) or b"")
        except yaml.YAMLError:
            recorded = None
        grace = grace_seconds(recorded if isinstance(recorded, dict) else None)
        log.info("podman pod stop", extra={"fields": {"pod": name, "grace_seconds": grace}})
        self._run(
            ["pod", "stop", "--ignore", "-t", str(grace), name],
            grace + QUERY_TIMEOUT,
            check=False,
            nice=nice,
        )
        self._run(["pod", "rm", "-f", "--ignore", name], QUERY_TIMEOUT * 4, nice=nice)

    def _down(self, name: str) -> None:
        self._stop_and_remove(name, nice=True)
        self._record_path(name).unlink(missing_ok=True)

    def _tls_flags(self, images: Sequence[str]) -> list[str]:
        if not self.tls_verify:
            return ["--tls-verify=false"]
        for image in images:
            try:
                registry = refs.parse(image).registry
            except InvalidReference:
                continue
            if registry in self.insecure:
                return ["--tls-verify=false"]
        return []

    def _run(
        self, args: list[str], timeout: float, *, check: bool = True, nice: bool = False
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.podman, *args]
        if nice:
            argv = ["nice", "-n", str(CLEANUP_NICENESS), *argv]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, env=self.env, check=False
            )
        except FileNotFoundError as exc:
            raise RuntimeFailure(
                f"{self.podman} not found: install podman (make install) or set PODMAN"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise RuntimeFailure(
                f"`podman {' '.join(args[:2])}` timed out after {timeout}s"
            ) from exc
        if check and result.returncode != 0:
            lines = [ln for ln in (result.stderr or result.stdout or "").splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else f"exit status {result.returncode}"
            raise RuntimeFailure(f"`podman {' '.join(args[:2])}` failed: {last}")
        return result


def _digest_of(image: str) -> str:
    try:
        return refs.parse(image).digest or ""
    except InvalidReference:
        return ""


def _by_name(c: ContainerStatus) -> str:
    return c.name

"""What the kubelet itself runs: its node API ``GET /pods``, read with the agent's client
certificate, turned into the runtime's :class:`~device.runtime.PodStatus` per pod.

``/pods`` is served by kubelet's ``Server.getPods`` (``pkg/kubelet/server/server.go``):
``encodePods`` writes a ``v1.PodList`` of ``Kubelet.GetPods()``, the pod manager's pods
with, for static pods, the status manager's status merged in
(``pkg/kubelet/kubelet_getters.go``: "a kubelet running without apiserver requires an
additional update of the static pod status"). A static pod read from file ``NAME-pod.*``
is named ``NAME-NODENAME`` there, carries ``spec.nodeName`` and the annotation
``kubernetes.io/config.source: file`` (``pkg/kubelet/config/common.go``,
``applyDefaults``), so the pod name is recovered without knowing the node name.

The answer is untrusted input like any other: bounded in size, parsed defensively.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from device.runtime import ContainerStatus, PodStatus, spec_fingerprint
from edgefleet.core import refs
from edgefleet.core.errors import ConfigError, EdgefleetError, InvalidReference

MAX_PODS_BYTES = 8 * 1024 * 1024
SOURCE_ANNOTATION = "kubernetes.io/config.source"
FILE_SOURCE = "file"
DEFAULT_URL = "https://127.0.0.1:10250"


class KubeletUnavailable(EdgefleetError):
    """kubelet's API could not be read (down, refused us, answered garbage)."""


@dataclass(frozen=True)
class KubeletCredentials:
    """How the agent authenticates to kubelet (client certificate) and verifies it
    (the device CA). Paths on the device, written by ``edgefleet provision``."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def in_dir(cls, folder: Path) -> KubeletCredentials:
        return cls(folder / "ca.crt", folder / "agent.crt", folder / "agent.key")

    def check(self) -> None:
        missing = [str(p) for p in (self.ca_file, self.cert_file, self.key_file) if not p.is_file()]
        if missing:
            raise ConfigError(
                f"kubelet credentials missing: {', '.join(missing)}: run `edgefleet provision` "
                "(it writes them) or point KUBELET_CREDENTIALS at them"
            )


class KubeletApi:
    def __init__(self, url: str, credentials: KubeletCredentials, *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        context = ssl.create_default_context(cafile=str(credentials.ca_file))
        context.load_cert_chain(str(credentials.cert_file), str(credentials.key_file))
        self._http = urllib3.PoolManager(maxsize=1, ssl_context=context)
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)

    def pods(self) -> dict[str, PodStatus]:
        """This node's static pods from kubelet, by their manifest name."""
        try:
            resp = self._http.request(
                "GET", f"{self.url}/pods", timeout=self._timeout, retries=False,
                redirect=False, preload_content=False,
            )  # fmt: skip
            try:
                body = resp.read(MAX_PODS_BYTES + 1)
            finally:
                resp.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeletUnavailable(f"kubelet {self.url}/pods: {exc}") from exc
        if resp.status != 200:
            hint = (
                " (the agent's client certificate was refused)" if resp.status in (401, 403) else ""
            )
            raise KubeletUnavailable(f"kubelet {self.url}/pods: HTTP {resp.status}{hint}")
        if len(body) > MAX_PODS_BYTES:
            raise KubeletUnavailable(f"kubelet {self.url}/pods: answer over {MAX_PODS_BYTES} bytes")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise KubeletUnavailable(f"kubelet {self.url}/pods: not JSON: {exc}") from exc
        return static_pods(doc)


def static_pods(doc: Any) -> dict[str, PodStatus]:
    """A ``v1.PodList`` -> the file-sourced pods by manifest name (pure, defensive)."""
    if not isinstance(doc, dict) or doc.get("kind") != "PodList":
        raise KubeletUnavailable("kubelet /pods did not answer with a PodList")
    out: dict[str, PodStatus] = {}
    for item in doc.get("items") or []:
        pod = _static_pod(item)
        if pod is not None and (pod.name not in out or not _deleting(item)):
            out[pod.name] = pod
    return out


def _static_pod(item: Any) -> PodStatus | None:
    meta, spec, status = (_obj(item, k) for k in ("metadata", "spec", "status"))
    if _obj(meta, "annotations").get(SOURCE_ANNOTATION) != FILE_SOURCE:
        return None
    full, node = str(meta.get("name") or ""), str(spec.get("nodeName") or "")
    if not node or not full.endswith(f"-{node}"):
        return None
    name = full[: -len(node) - 1]
    statuses = {str(c.get("name")): c for c in _list(status, "containerStatuses")}
    containers = tuple(
        _container(str(c.get("name") or ""), str(c.get("image") or ""), statuses)
        for c in _list(spec, "containers")
    )
    conditions = {str(c.get("type")): c.get("status") for c in _list(status, "conditions")}
    running = (
        status.get("phase") == "Running"
        and bool(containers)
        and all(c.state == "running" for c in containers)
    )
    ready = conditions.get("Ready") == "True"
    return PodStatus(name, running, containers, ready=ready, fingerprint=spec_fingerprint(spec))


def _container(name: str, image: str, statuses: Mapping[str, Any]) -> ContainerStatus:
    """The container as the spec asks for it, with what the runtime reports: its state
    and, from ``imageID`` (``REPO@sha256:…`` for containerd), the digest it runs."""
    st = statuses.get(name)
    if not isinstance(st, dict):
        return ContainerStatus(name, image, "", "waiting: not started")
    state = _obj(st, "state")
    if "running" in state:
        word = "running"
    elif "waiting" in state:
        word = f"waiting: {_obj(state, 'waiting').get('reason') or 'unknown'}"
    elif "terminated" in state:
        word = f"terminated: {_obj(state, 'terminated').get('reason') or 'unknown'}"
    else:
        word = "unknown"
    return ContainerStatus(name, image, _digest(str(st.get("imageID") or "")), word)


def _digest(image_id: str) -> str:
    """The manifest digest in an ``imageID`` (``[docker-pullable://]REPO@sha256:…``); ""
    when it only names the image config (``sha256:…``), which is not comparable."""
    ref = image_id.split("://", 1)[-1]
    if "@" not in ref:
        return ""
    try:
        return refs.parse(ref).digest or ""
    except InvalidReference:
        return ""


def _deleting(item: Any) -> bool:
    return bool(_obj(item, "metadata").get("deletionTimestamp"))


def _obj(doc: Any, key: str) -> dict[str, Any]:
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, dict) else {}


def _list(doc: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = doc.get(key)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []

"""The kubelet runtime against a stand-in for kubelet (tests/support/kubelet.py: its file
source as read from pkg/kubelet/config/file*.go, and its /pods API), the real agent on
the device's GCS adapter over the real emulator, and the PKI provisioning writes."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.kubelet import KubeletStandIn, versions, written
from support.sync import FAKE_DIGEST, TEST_REGISTRY, SetPublisher, agent_env, entries, pod_yaml

from device import gcs_json
from device.kubelet import KubeletApi, KubeletCredentials, KubeletUnavailable, static_pods
from edgefleet.core import layout
from edgefleet.core.errors import ConfigError
from edgefleet.localstack.process import free_port
from edgefleet.operator import kubelet_pki
from sync_pod.__main__ import kubelet_runtime, make_agent
from sync_pod.agent import APPLIED, ROLLED_BACK, Agent
from sync_pod.config import from_env

IMAGE = f"{TEST_REGISTRY}/edgefleet/web@{FAKE_DIGEST}"
OTHER = f"{TEST_REGISTRY}/edgefleet/web@sha256:{'cd' * 32}"


def _wait_for(what: str, ok: Callable[[], object], timeout: float = 10.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if ok():
            return time.monotonic() - start
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """The files `edgefleet provision` writes under /etc/edgefleet/kubelet."""
    folder = tmp_path / "kubelet-pki"
    folder.mkdir()
    for name, data in kubelet_pki.generate("dev-1").files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def kubelets() -> Iterator[Callable[..., KubeletStandIn]]:
    made: list[KubeletStandIn] = []

    def start(path: Path, **kwargs: object) -> KubeletStandIn:
        k = KubeletStandIn(str(path), **kwargs).start()  # type: ignore[arg-type]
        made.append(k)
        return k

    yield start
    for k in made:
        k.stop()


@pytest.fixture
def lean(bucket, gcs) -> gcs_json.JsonBucket:  # type: ignore[no-untyped-def]
    """The device's bucket adapter, as `python -m sync_pod` makes it."""
    return gcs_json.connect(bucket.name, timeout=5.0, retry=gcs_json.NO_RETRY, env=gcs.env())


def _serve(kubelet: KubeletStandIn, pki: Path, port: int) -> str:
    return kubelet.serve(
        port, cert=pki / "kubelet.crt", key=pki / "kubelet.key", client_ca=pki / "ca.crt"
    )


def _agent(lean, tmp_path: Path, url: str, pki: Path, **extra: str) -> Agent:  # type: ignore[no-untyped-def]
    env = agent_env(lean.name, tmp_path, KUBELET_API=url, KUBELET_CREDENTIALS=str(pki), **extra)
    config = from_env(env)
    return Agent(config, lean, kubelet_runtime(config))


def test_a_swapped_symlink_hides_a_new_set_from_kubelet_until_its_relist(
    tmp_path, kubelets
) -> None:
    """Why the folder is no longer a symlink: kubelet's watch stays on the old target, so
    the swap itself goes unseen, and deleting the old set dir (the old design's clean-up)
    reads as every pod's manifest deleted: kubelet stops them until its next relist."""
    v1, v2 = pod_yaml("web", IMAGE), pod_yaml("web", OTHER)
    for name, text in (("a", v1), ("b", v2)):
        (tmp_path / "sets" / name).mkdir(parents=True)
        (tmp_path / "sets" / name / "web-pod.yaml").write_text(text)
    link = tmp_path / "pods"
    link.symlink_to(tmp_path / "sets" / "a")
    kubelet = kubelets(link, period=2.0, start_delay=0.0)
    _wait_for("kubelet to run v1", lambda: kubelet.running() == {"web": versions([v1]).pop()})
    time.sleep(0.2)  # the watch is in place
    (tmp_path / "swap").symlink_to(tmp_path / "sets" / "b")
    os.rename(tmp_path / "swap", link)
    time.sleep(0.5)
    assert kubelet.running() == {"web": versions([v1]).pop()}, "kubelet saw the swap at once"
    shutil.rmtree(tmp_path / "sets" / "a")
    _wait_for("the delete events", lambda: kubelet.running() == {}, 1.0)
    assert kubelet.updates[-1].cause == "watch:delete"
    _wait_for("the relist", lambda: kubelet.running() == {"web": versions([v2]).pop()}, 5)
    assert kubelet.updates[-1].cause == "list"


def test_new_sets_reach_kubelet_through_its_watch_and_commit_once_it_runs_them(
    bucket, lean, tmp_path, pki, kubelets
) -> None:
    pub = SetPublisher(bucket, "x86_64", "beta")
    port = free_port()
    manifest_dir = tmp_path / "device" / "pods"
    manifest_dir.mkdir(parents=True)
    # A relist every 60 s: only the watch can explain a set seen within the gate.
    kubelet = kubelets(manifest_dir, period=60.0, start_delay=0.5)
    url = _serve(kubelet, pki, port)
    agent = _agent(lean, tmp_path, url, pki, HEALTH_TIMEOUT="5")
    agent.recover()
    first = {"web": pod_yaml("web", IMAGE), "db": pod_yaml("db", IMAGE)}
    pub.publish(entries(first))
    assert agent.poll_once() == APPLIED
    assert set(kubelet.running().values()) == versions(map(written, first.values()))
    second = {
        "web": pod_yaml("web", IMAGE, command=["/bin/busybox", "sleep", "1"]),
        "db": first["db"],
        "cache": pod_yaml("cache", OTHER),
    }
    pub.publish(entries(second))
    mark = len(kubelet.updates)
    assert agent.poll_once() == APPLIED
    committed = time.monotonic()
    assert set(kubelet.running().values()) == versions(map(written, second.values()))
    assert {u.cause for u in kubelet.updates[mark:]} <= {"watch:add", "watch:modify"}
    # The gate waited for kubelet to run the NEW web pod, Ready: not for the old one
    # (same images, same port), which was Ready all along.
    ready = kubelet.ready_at("web", versions([written(second["web"])]).pop())
    assert ready is not None and committed >= ready
    agent.report(force=True)
    status = json.loads(bucket.read(layout.status_object("dev-1")).data)
    by_name = {p["name"]: p for p in status["pods"]}
    assert set(by_name) == {"web", "db", "cache"}
    assert by_name["cache"]["ready"] is True
    assert by_name["cache"]["containers"][0]["imageDigest"] == OTHER.split("@")[1]
    assert status["health"] == "healthy"


class _OldPod(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_old_pod_answering_the_port_does_not_pass_the_gate_for_the_new_one(
    bucket, lean, tmp_path, pki, kubelets
) -> None:
    """The issue's case: 127.0.0.1:PORT still answers (the OLD pod) while kubelet never
    gets the new one ready: the set is rolled back, not committed."""
    pub = SetPublisher(bucket, "x86_64", "beta")
    port = free_port()
    old_pod = http.server.ThreadingHTTPServer(("127.0.0.1", port), _OldPod)
    threading.Thread(target=old_pod.serve_forever, daemon=True).start()
    try:
        manifest_dir = tmp_path / "device" / "pods"
        manifest_dir.mkdir(parents=True)  # provisioning creates it before kubelet starts
        kubelet = kubelets(manifest_dir, period=60.0, start_delay=0.1, never_ready={OTHER})
        url = _serve(kubelet, pki, free_port())
        agent = _agent(lean, tmp_path, url, pki, HEALTH_TIMEOUT="2")
        agent.recover()
        good = pod_yaml("web", IMAGE, port=port, readiness_path="/")
        pub.publish(entries({"web": good}))
        assert agent.poll_once() == APPLIED
        bad = pub.publish(entries({"web": pod_yaml("web", OTHER, port=port, readiness_path="/")}))
        assert agent.poll_once() == ROLLED_BACK
        assert bad.digest() in agent.state.bad_digests
        assert (manifest_dir / "web-pod.yaml").read_text() == written(good)
        old = {"web": versions([written(good)]).pop()}
        _wait_for("kubelet to run the old pod again", lambda: kubelet.running() == old)
        detail = agent.state.last_rejection.detail
        assert "not running" in detail or "not ready" in detail, detail
    finally:
        old_pod.shutdown()
        old_pod.server_close()


def test_relists_racing_applies_never_read_a_torn_file_or_drop_a_staying_pod(
    bucket, lean, tmp_path, pki, kubelets
) -> None:
    pub = SetPublisher(bucket, "x86_64", "beta")
    manifest_dir = tmp_path / "device" / "pods"
    manifest_dir.mkdir(parents=True)
    kubelet = kubelets(manifest_dir, period=0.002, start_delay=0.0)
    url = _serve(kubelet, pki, free_port())
    agent = _agent(lean, tmp_path, url, pki, HEALTH_TIMEOUT="5")
    agent.recover()
    staying = [f"p{i}" for i in range(8)]
    published: list[str] = []
    for n in range(8):
        pods = {p: pod_yaml(p, IMAGE, command=["/bin/busybox", "sleep", str(n)]) for p in staying}
        pods[f"extra-{n}"] = pod_yaml(f"extra-{n}", OTHER)
        published += pods.values()
        pub.publish(entries(pods))
        assert agent.poll_once() == APPLIED, n
    assert kubelet.read_errors == []
    lists = [u for u in kubelet.updates if u.cause == "list" and u.pods]
    assert len(lists) > 20, "the relists did not race the applies"
    full = [u for u in kubelet.updates if set(staying) <= set(u.pods)]
    first = kubelet.updates.index(full[0])
    for update in kubelet.updates[first:]:
        assert set(staying) <= set(update.pods), f"a staying pod was dropped: {update}"
        assert set(update.pods.values()) <= versions(map(written, published))


def test_kubelet_api_refuses_anonymous_and_other_devices(tmp_path, pki, kubelets) -> None:
    kubelet = kubelets(tmp_path / "pods", period=60.0)
    url = _serve(kubelet, pki, free_port())
    anonymous = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/pods", context=anonymous, timeout=5)
    assert refused.value.code == 401
    other = tmp_path / "other-pki"
    other.mkdir()
    for name, data in kubelet_pki.generate("dev-2").files.items():
        (other / name).write_bytes(data)
    stranger = KubeletCredentials(pki / "ca.crt", other / "agent.crt", other / "agent.key")
    with pytest.raises(KubeletUnavailable):
        KubeletApi(url, stranger).pods()
    assert KubeletApi(url, KubeletCredentials.in_dir(pki)).pods() == {}


def test_pod_list_is_read_defensively() -> None:
    doc = {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": [
            {"metadata": {"name": "web-node-a", "annotations":
                          {"kubernetes.io/config.source": "file"}},
             "spec": {"nodeName": "node-a", "containers": [{"name": "main", "image": IMAGE}]},
             "status": {"phase": "Running",
                        "conditions": [{"type": "Ready", "status": "True"}],
                        "containerStatuses": [{"name": "main", "imageID": IMAGE,
                                               "state": {"running": {}}}]}},
            {"metadata": {"name": "api-pod", "annotations":
                          {"kubernetes.io/config.source": "api"}}, "spec": {"nodeName": "node-a"}},
            "garbage",
            {"metadata": {"name": "x-node-b", "annotations":
                          {"kubernetes.io/config.source": "file"}}, "spec": {"nodeName": "node-a"}},
        ],
    }  # fmt: skip
    pods = static_pods(doc)
    assert list(pods) == ["web"]
    web = pods["web"]
    assert web.running and web.ready and web.containers[0].image_digest == FAKE_DIGEST
    for bad in ([], {"kind": "Status"}, "x"):
        with pytest.raises(KubeletUnavailable):
            static_pods(bad)


def test_agent_without_kubelet_credentials_does_not_start(bucket, gcs, tmp_path) -> None:
    env = agent_env(bucket.name, tmp_path, KUBELET_CREDENTIALS=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="edgefleet provision"):
        make_agent(from_env(env))

"""tag_monitor on the real local stack: registry -> bridge -> Pub/Sub emulator -> push ->
functions-framework (functions/main.py) -> GCS emulator.

Every test uses its own repository (so its own pod name) in the shared deploy bucket and
asserts only on its own entries.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml
from podman_images import push_multiarch

from edgefleet.cloud.storage import Bucket, make_client
from edgefleet.core import layout, manifest_set
from edgefleet.localstack.functions import FunctionProcess

pytestmark = [pytest.mark.stack, pytest.mark.slow]

ARCHES = layout.ARCHES


@pytest.fixture
def deploy(stack_functions, monkeypatch) -> Bucket:
    for key, value in stack_functions.env().items():
        monkeypatch.setenv(key, value)
    return Bucket(make_client(), stack_functions.config.deploy_bucket)


def new_repo() -> tuple[str, str]:
    """(repository, pod name) unique to one test."""
    name = f"tm-{uuid.uuid4().hex[:8]}"
    return f"ctl/{name}", name


def wait_until(check: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def set_entry(bucket: Bucket, arch: str, channel: str, name: str):
    blob = bucket.read(layout.set_object(arch, channel))
    if blob is None:
        return None
    return manifest_set.decode(blob.data).manifest_set.entry("channel", name)


def image_of(yaml_text: str) -> str:
    return yaml.safe_load(yaml_text)["spec"]["containers"][0]["image"]


def mirror(bucket: Bucket, arch: str, channel: str, name: str) -> bytes | None:
    blob = bucket.read(layout.manifest_object(arch, channel, name))
    return blob.data if blob else None


def function_log(stack) -> list[dict]:
    return stack.functions["tag_monitor"].log_entries()


def manifest_bytes(registry, repository: str, digest: str) -> tuple[bytes, str]:
    resp = requests.get(
        f"{registry.url}/v2/{repository}/manifests/{digest}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    resp.raise_for_status()
    return resp.content, resp.headers["Content-Type"]


def retag(registry, repository: str, digest: str, tag: str) -> None:
    body, media_type = manifest_bytes(registry, repository, digest)
    registry.put_manifest(repository, tag, body, media_type)


# -----------------------------------------------------------------------------------------


def test_retag_appears_as_pinned_manifest_and_follows_the_tag(stack_functions, deploy) -> None:
    reg = stack_functions.registry
    repo, name = new_repo()
    first = reg.push_minimal_image(repo, "v1", arch="amd64", salt="1")
    retag(reg, repo, first, "beta")
    pinned = f"{reg.host}/{repo}@{first}"

    entry = wait_until(
        lambda: (e := set_entry(deploy, "x86_64", "beta", name)) and image_of(e.yaml) == pinned,
        "the beta manifest",
    )
    assert entry
    text = mirror(deploy, "x86_64", "beta", name)
    assert text is not None and image_of(text.decode()) == pinned
    # Only the image's own arch; the version tag v1 wrote nothing anywhere.
    for arch in ("aarch64", "armv7l"):
        assert set_entry(deploy, arch, "beta", name) is None
    for channel in ("latest", "alpha", "stable"):
        assert set_entry(deploy, "x86_64", channel, name) is None

    second = reg.push_minimal_image(repo, "beta", arch="amd64", salt="2")
    pinned2 = f"{reg.host}/{repo}@{second}"
    wait_until(
        lambda: (e := set_entry(deploy, "x86_64", "beta", name)) and image_of(e.yaml) == pinned2,
        "the moved beta manifest",
    )
    wait_until(
        lambda: (m := mirror(deploy, "x86_64", "beta", name)) and image_of(m.decode()) == pinned2,
        "the mirror of the moved manifest",
    )


def test_multiarch_index_yields_one_manifest_per_arch_and_delete_removes_them(
    stack_functions, deploy, tmp_path
) -> None:
    reg = stack_functions.registry
    repo, name = new_repo()
    index = push_multiarch(reg.host, repo, "stable", workdir=tmp_path)
    children = {
        m["platform"]["architecture"] + m["platform"].get("variant", ""): m["digest"]
        for m in json.loads(
            requests.get(
                f"{reg.url}/v2/{repo}/manifests/{index}",
                headers={"Accept": "application/vnd.oci.image.index.v1+json"},
                timeout=10,
            ).content
        )["manifests"]
    }
    expected = {
        "x86_64": children["amd64"],
        "aarch64": children["arm64"],
        "armv7l": children["armv7"],
    }

    def all_pinned() -> bool:
        for arch, digest in expected.items():
            e = set_entry(deploy, arch, "stable", name)
            if e is None or image_of(e.yaml) != f"{reg.host}/{repo}@{digest}":
                return False
            m = mirror(deploy, arch, "stable", name)
            if m is None or m.decode() != e.yaml:
                return False
        return True

    wait_until(all_pinned, "one manifest per arch")
    for arch in ARCHES:
        pod = yaml.safe_load(set_entry(deploy, arch, "stable", name).yaml)
        assert pod["metadata"]["labels"]["edgefleet.dev/arch"] == arch
        # The index it came from, for `edgefleet rollout wait --digest INDEX`.
        assert pod["metadata"]["annotations"]["edgefleet.dev/source-digest"] == index

    # Deleting the tagged image (the index) removes its manifests everywhere.
    reg.delete_manifest(repo, index)

    def all_gone() -> bool:
        return all(
            set_entry(deploy, arch, "stable", name) is None
            and mirror(deploy, arch, "stable", name) is None
            for arch in ARCHES
        )

    wait_until(all_gone, "the manifests of the deleted image to disappear")


class TailLatencyProxy:
    """A loopback TCP proxy in front of the storage emulator that holds a random
    ``slow_fraction`` of what clients send for ``slow_seconds`` before forwarding it: a
    storage service with tail latency, so concurrent handlers' reads and writes land in
    a shuffled order for real (a read sent before another handler's write can be served
    after it)."""

    def __init__(self, target_port: int, slow_fraction: float, slow_seconds: float, seed: int):
        self.target_port = target_port
        self.slow_fraction, self.slow_seconds = slow_fraction, slow_seconds
        self._rng, self._lock = random.Random(seed), threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, delay: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if delay:
                    with self._lock:
                        slow = self._rng.random() < self.slow_fraction
                    if slow:
                        time.sleep(self.slow_seconds)
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._sock.close()


def test_duplicated_shuffled_concurrent_events_converge_while_the_registry_moves(
    stack_functions, deploy, tmp_path
) -> None:
    """200 events (old digests, duplicates, untagged pushes, deletes of unknown digests),
    shuffled and sent by 8 clients WHILE the tag really moves between five images in the
    registry (each move followed by its event); then 10 rounds in which the tag moves while
    8 handlers are in flight. Storage has tail latency. After each round the set
    holds what the registry names now: a tag_monitor that resolved the tag before reading
    the set's generation writes what it resolved before the move over the move's write.

    The function is a tag_monitor of its own (channel ``storm``, which the stack's
    tag_monitor ignores) behind the slow-tailed storage, fed push requests directly."""
    reg = stack_functions.registry
    repo, name = new_repo()
    digests = [reg.push_minimal_image(repo, f"v{i}", arch="amd64", salt=f"c{i}") for i in range(5)]
    proxy = TailLatencyProxy(stack_functions.gcs.port, slow_fraction=0.15, slow_seconds=0.8, seed=5)
    env = {
        **stack_functions.function_env(),
        "STORAGE_EMULATOR_HOST": proxy.endpoint,
        "CHANNELS": "storm",
    }
    tag = f"{reg.host}/{repo}:storm"
    rng = random.Random(7)

    def event_for(d: str) -> bytes:
        kind = rng.random()
        if kind < 0.6:
            doc = {"action": "INSERT", "digest": f"{reg.host}/{repo}@{d}", "tag": tag}
        elif kind < 0.75:
            doc = {"action": "INSERT", "digest": f"{reg.host}/{repo}@{d}"}
        elif kind < 0.9:
            doc = {"action": "DELETE", "tag": tag}
        else:
            doc = {"action": "DELETE", "digest": f"{reg.host}/{repo}@sha256:{uuid.uuid4().hex * 2}"}
        return json.dumps(doc).encode()

    with FunctionProcess(tmp_path, "tag_monitor", env=env) as fn:

        def send(data: bytes) -> None:
            resp = requests.post(fn.url, json=push_body(data, uuid.uuid4().hex), timeout=120)
            assert resp.status_code in (200, 500), resp.text  # 500: Pub/Sub would redeliver
            if resp.status_code == 500:  # redeliver, as Pub/Sub does
                send(data)

        def move(i: int) -> None:
            retag(reg, repo, digests[i], "storm")
            send(json.dumps({"action": "INSERT", "digest": f"{reg.host}/{repo}@{digests[i]}",
                             "tag": tag}).encode())  # fmt: skip

        def serving() -> str | None:
            e = set_entry(deploy, "x86_64", "storm", name)
            return image_of(e.yaml) if e else None

        move(0)
        storm = [event_for(rng.choice(digests)) for _ in range(200)]
        moves = [rng.randrange(5) for _ in range(20)]
        with ThreadPoolExecutor(9) as pool:
            mover = pool.submit(lambda: [move(i) for i in moves])
            list(pool.map(send, storm))
            mover.result()
        assert serving() == f"{reg.host}/{repo}@{digests[moves[-1]]}"

        current = moves[-1]
        for _ in range(10):  # the tag moves while 8 handlers that resolved it are in flight
            target = (current + 1 + rng.randrange(4)) % 5
            with ThreadPoolExecutor(9) as pool:
                inflight = [pool.submit(send, event_for(digests[current])) for _ in range(8)]
                time.sleep(0.03)
                pool.submit(move, target).result()
                for f in inflight:
                    f.result()
            current = target
            assert serving() == f"{reg.host}/{repo}@{digests[current]}"
        assert image_of(mirror(deploy, "x86_64", "storm", name).decode()) == serving()
        for arch in ("aarch64", "armv7l"):
            assert set_entry(deploy, arch, "storm", name) is None
        rejected = [e for e in fn.log_entries() if e.get("event") == "tag-event-rejected"]
        assert not rejected
    proxy.close()


def push_body(data: bytes | str, message_id: str) -> dict:
    raw = data if isinstance(data, str) else base64.b64encode(data).decode()
    return {
        "message": {"data": raw, "messageId": message_id, "attributes": {}},
        "subscription": "projects/edgefleet-local/subscriptions/direct",
    }


def malformed_payloads(host: str, n: int) -> list[dict | bytes]:
    rng = random.Random(1000)
    d = "sha256:" + "ab" * 32

    def js(**doc: object) -> bytes:
        return json.dumps(doc).encode()

    bodies: list[Callable[[], bytes | str]] = [
        lambda: rng.randbytes(rng.randint(0, 64)),
        lambda: "%%%" + str(rng.random()),
        lambda: b"[1, 2, 3]",
        lambda: b'"just a string"',
        lambda: js(action="INSERT"),
        lambda: js(action="UPSERT", tag=f"{host}/x:beta"),
        lambda: js(action="INSERT", tag="no-host:beta"),
        lambda: js(action="INSERT", tag=f"{host}/UPPER:beta"),
        lambda: js(action="INSERT", tag=f"{host}/x:beta", digest=f"{host}/y@{d}"),
        lambda: js(action="DELETE", digest=f"{host}/x@md5:zz"),
        lambda: js(action="INSERT", tag=["a"]),
        lambda: b"\xff\xfe" + rng.randbytes(8),
    ]
    raw: list[Callable[[int], dict | bytes]] = [
        lambda i: {"message": {"data": 5, "messageId": f"m{i}"}, "subscription": "s"},
        lambda i: {"message": {"data": "", "messageId": f"m{i}", "attributes": {"a": 1}},
                   "subscription": "s"},
        lambda i: b"not json at all",
        lambda i: b'{"message": {}}',
    ]  # fmt: skip
    out: list[dict | bytes] = []
    for i in range(n):
        k = i % (len(bodies) + len(raw))
        if k < len(bodies):
            out.append(push_body(bodies[k](), f"m{i}"))
        else:
            out.append(raw[k - len(bodies)](i))
    return out


def test_malformed_payloads_write_nothing_and_crash_nothing(stack_functions, deploy) -> None:
    """1,000 malformed pushes straight to the functions-framework endpoint."""
    reg = stack_functions.registry
    url = stack_functions.functions["tag_monitor"].url
    before = {info.name: info.generation for info in deploy.list_objects("")}
    payloads = malformed_payloads(reg.host, 1000)
    session = requests.Session()

    def post(payload: dict | bytes) -> int:
        if isinstance(payload, bytes):
            resp = session.post(url, data=payload, headers={"Content-Type": "application/json"},
                                timeout=30)  # fmt: skip
        else:
            resp = session.post(url, json=payload, timeout=30)
        return resp.status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(post, payloads))
    assert all(s < 500 for s in statuses), sorted(set(statuses))
    reached = [p for p, s in zip(payloads, statuses, strict=True) if s == 200]
    assert len(reached) >= 800  # the framework itself refuses only the non-Pub/Sub bodies

    after = {info.name: info.generation for info in deploy.list_objects("")}
    assert after == before
    # One structured error per payload that reached the function.
    ids = {p["message"]["messageId"] for p in reached if isinstance(p, dict)}
    logged = [e for e in function_log(stack_functions) if e.get("event_id") in ids]
    assert len(logged) == len(ids)
    assert all(e["event"] == "tag-event-rejected" and e["severity"] == "ERROR" for e in logged)

    # Still alive and working.
    repo, name = new_repo()
    digest = reg.push_minimal_image(repo, "latest", arch="arm64", salt="alive")
    wait_until(
        lambda: set_entry(deploy, "aarch64", "latest", name), "a valid event after 1,000 bad"
    )
    assert image_of(set_entry(deploy, "aarch64", "latest", name).yaml).endswith(digest)


def write_signed_template(stack, bucket: Bucket, name: str, data: bytes) -> None:
    """A bucket template as an operator uploads it: with its signature (templates are code)."""
    from edgefleet.cloud.render import SIGNATURE_SUFFIX, sign_template
    from edgefleet.core import signing

    bucket.write(layout.template_object(name), data)
    key = signing.load_private_key(stack.template_key)
    bucket.write(layout.template_object(name) + SIGNATURE_SUFFIX, sign_template(data, key))


def test_unknown_arch_template_errors_and_policy_violations_write_nothing(
    stack_functions, deploy
) -> None:
    reg = stack_functions.registry
    before = {info.name: info.generation for info in deploy.list_objects("sets/")}
    # An image for an arch no device has.
    odd_repo, odd = new_repo()
    reg.push_minimal_image(odd_repo, "beta", arch="s390x", salt="odd")
    # A repository whose own template is broken, and one whose template asks for privilege.
    broken_repo, broken = new_repo()
    write_signed_template(stack_functions, deploy, broken, b"metadata: {{ missing_variable }}\n")
    evil_repo, evil = new_repo()
    template = deploy.read("templates/model-server.yaml.j2")
    source = template.data.decode() if template else None
    if source is None:
        from edgefleet.cloud.render import PackagedTemplates

        source = PackagedTemplates().load("model-server")
    # Signed by the operator: the template is used, and the policy still refuses it.
    evil_source = source.replace("allowPrivilegeEscalation: false", "privileged: true")
    write_signed_template(stack_functions, deploy, evil, evil_source.encode())
    reg.push_minimal_image(broken_repo, "beta", arch="amd64", salt="broken")
    reg.push_minimal_image(evil_repo, "beta", arch="amd64", salt="evil")

    def rejected() -> dict[str, str]:
        out = {}
        for e in function_log(stack_functions):
            if e.get("event") == "tag-event-rejected" and e.get("tag"):
                for n in (odd, broken, evil):
                    if f"/{n}:beta" in e["tag"]:
                        out[n] = e["error"]
        return out

    errors = wait_until(lambda: len(r := rejected()) == 3 and r, "three rejections")
    assert "unknown arch" in errors[odd]
    assert "missing_variable" in errors[broken]
    assert "privileged" in errors[evil]
    after = {info.name: info.generation for info in deploy.list_objects("sets/")}
    changed = {n for n in after if after[n] != before.get(n)}
    for name in changed:  # other tests may write, but never these three
        s = manifest_set.decode(deploy.read(name).data).manifest_set
        assert not {e.name for e in s.entries} & {odd, broken, evil}


def test_a_second_repository_with_the_same_pod_name_is_refused(stack_functions, deploy) -> None:
    """Pod names come from the repository's last path component: team-b/NAME:beta must not
    silently replace team-a/NAME's pod on every beta device."""
    reg = stack_functions.registry
    _, name = new_repo()
    first_repo, second_repo = f"team-a/{name}", f"team-b/{name}"
    first = reg.push_minimal_image(first_repo, "beta", arch="amd64", salt="a")
    pinned = f"{reg.host}/{first_repo}@{first}"
    wait_until(
        lambda: (e := set_entry(deploy, "x86_64", "beta", name)) and image_of(e.yaml) == pinned,
        "team-a's pod in the beta set",
    )
    generation = deploy.generation(layout.set_object("x86_64", "beta"))
    reg.push_minimal_image(second_repo, "beta", arch="amd64", salt="b")

    def refusal() -> dict | None:
        for e in function_log(stack_functions):
            if e.get("event") == "tag-event-rejected" and f"/{second_repo}:beta" in (
                e.get("tag") or ""
            ):
                return e
        return None

    entry = wait_until(refusal, "the collision to be refused")
    assert entry["error_type"] == "NameCollision"
    assert f"{reg.host}/{first_repo}" in entry["error"] and "rename" in entry["error"]
    # team-a keeps its pod; nothing was written for team-b.
    assert image_of(set_entry(deploy, "x86_64", "beta", name).yaml) == pinned
    later = deploy.generation(layout.set_object("x86_64", "beta"))
    if later != generation:  # other tests' writes may land; never team-b's image
        s = manifest_set.decode(deploy.read(layout.set_object("x86_64", "beta")).data)
        assert all(second_repo not in e.yaml for e in s.manifest_set.entries)

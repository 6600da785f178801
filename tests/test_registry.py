"""edgefleet.cloud.registry against the real docker-registry (and, for answers a healthy
registry never gives, a small hostile HTTP server on loopback)."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from podman_images import push_multiarch

from edgefleet.cloud import platforms
from edgefleet.cloud.registry import (
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    NotFound,
    RegistryClient,
    RegistryError,
)
from edgefleet.core import refs
from edgefleet.core.errors import InvalidInput, TransientError

pytestmark = pytest.mark.stack


@pytest.fixture
def client(registry) -> RegistryClient:
    return RegistryClient(insecure=[registry.host], token_source=lambda: None)


def ref(registry, text: str) -> refs.ImageRef:
    return refs.parse(f"{registry.host}/{text}")


def test_resolve_oci_manifest_and_config(registry, client) -> None:
    digest = registry.push_minimal_image("ctl/reg-a", "beta", arch="arm64", salt="a")
    r = ref(registry, "ctl/reg-a:beta")
    m = client.get_manifest(r)
    assert m.digest == digest == client.resolve(r)
    assert not m.is_index
    assert client.get_config(r, m)["architecture"] == "arm64"
    assert platforms.resolve(client, r) == {"aarch64": digest}
    # By digest, too: same bytes.
    assert client.get_manifest(r.with_digest(digest)).raw == m.raw


def test_docker_v2_manifest_keeps_its_digest(registry, client) -> None:
    """Without every media type in Accept, distribution converts and changes the digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
                         "diff_ids": []}}).encode()  # fmt: skip
    config_digest = registry.upload_blob("ctl/reg-docker", config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [],
    }).encode()  # fmt: skip
    pushed = registry.put_manifest("ctl/reg-docker", "stable", manifest, DOCKER_MANIFEST)
    r = ref(registry, "ctl/reg-docker:stable")
    m = client.get_manifest(r)
    assert (m.digest, m.media_type) == (pushed, DOCKER_MANIFEST)
    # What a naive client gets (no Accept): not the stored manifest.
    naive = requests.get(f"{registry.url}/v2/ctl/reg-docker/manifests/stable", timeout=5)
    assert naive.headers.get("Docker-Content-Digest") != pushed
    assert platforms.resolve(client, r) == {"x86_64": pushed}


def test_multiarch_index_from_podman(registry, client, tmp_path) -> None:
    digest = push_multiarch(registry.host, "ctl/reg-multi", "beta", workdir=tmp_path)
    r = ref(registry, "ctl/reg-multi:beta")
    m = client.get_manifest(r)
    assert m.digest == digest and m.media_type in INDEX_TYPES
    arches = platforms.resolve(client, r)
    assert sorted(arches) == ["aarch64", "armv7l", "x86_64"]
    for arch, child in arches.items():
        config = client.get_config(r, client.get_manifest(r.with_digest(child)))
        assert platforms.config_arch(config) == arch


def test_not_found(registry, client) -> None:
    registry.push_minimal_image("ctl/reg-nf", "beta", salt="nf")
    with pytest.raises(NotFound, match="not found"):
        client.resolve(ref(registry, "ctl/reg-nf:stable"))
    with pytest.raises(NotFound):
        client.resolve(ref(registry, "ctl/no-such-repo:beta"))
    with pytest.raises(NotFound):
        client.get_blob(ref(registry, "ctl/reg-nf"), "sha256:" + "0" * 64)
    with pytest.raises(InvalidInput, match="needs a tag or a digest"):
        client.get_manifest(ref(registry, "ctl/reg-nf"))


def test_retag_and_delete(registry, client) -> None:
    digest = registry.push_minimal_image("ctl/reg-rt", "alpha", salt="rt")
    source = client.get_manifest(ref(registry, f"ctl/reg-rt@{digest}"))
    assert client.put_manifest(ref(registry, "ctl/reg-rt:stable"), source) == digest
    assert client.resolve(ref(registry, "ctl/reg-rt:stable")) == digest
    client.delete_manifest(ref(registry, f"ctl/reg-rt@{digest}"))
    for tag in ("alpha", "stable"):
        with pytest.raises(NotFound):
            client.resolve(ref(registry, f"ctl/reg-rt:{tag}"))
    with pytest.raises(InvalidInput, match="needs a digest"):
        client.delete_manifest(ref(registry, "ctl/reg-rt:alpha"))


def test_plain_http_only_for_insecure_hosts(registry) -> None:
    strict = RegistryClient(token_source=lambda: None, timeout=(2, 2))
    assert strict.base_url(registry.host) == f"https://{registry.host}"
    with pytest.raises(RegistryError, match="INSECURE_REGISTRIES"):
        strict.resolve(ref(registry, "ctl/reg-a:beta"))


def test_unreachable_and_silent_registries_are_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = RegistryClient(insecure=[f"127.0.0.1:{port}"], timeout=(0.5, 0.5))
    with pytest.raises(TransientError):
        client.resolve(refs.parse(f"127.0.0.1:{port}/m:beta"))
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        client = RegistryClient(insecure=[host], timeout=(0.5, 0.5))
        with pytest.raises(TransientError):
            client.resolve(refs.parse(f"{host}/m:beta"))


# -- a hostile registry: answers a real one never gives ------------------------------------

GOOD = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPES[0],
                   "config": {"digest": "sha256:" + "1" * 64}, "layers": []}).encode()  # fmt: skip


class Hostile:
    """Serves ``routes[path] = (status, headers, body)``; records request headers."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                owner.seen.append((self.path, dict(self.headers)))
                status, headers, body = owner.routes.get(path, (404, {}, b"{}"))
                if callable(body):
                    status, headers, body = body(self)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self) -> RegistryClient:
        return RegistryClient(insecure=[self.host], token_source=lambda: "adc", timeout=(1, 1))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    h = Hostile()
    yield h
    h.close()


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    ("status", "headers", "body", "error", "fragment"),
    [
        (200, {"Content-Type": MANIFEST_TYPES[0], "Docker-Content-Digest": "sha256:" + "f" * 64},
         GOOD, RegistryError, "does not match"),
        (200, {"Content-Type": MANIFEST_TYPES[0]}, b"not json", RegistryError, "not JSON"),
        (200, {"Content-Type": MANIFEST_TYPES[0]}, b"[]", RegistryError, "not a JSON object"),
        (200, {"Content-Type": "text/html"}, b"{}", RegistryError, "unsupported manifest type"),
        (200, {"Content-Type": MANIFEST_TYPES[1]}, b'{"schemaVersion": 2}', RegistryError,
         "no 'manifests' list"),
        (200, {"Content-Type": MANIFEST_TYPES[0]}, b'{"schemaVersion": 1}', RegistryError,
         "schemaVersion"),
        (200, {"Content-Type": MANIFEST_TYPES[0]},
         json.dumps({"schemaVersion": 2, "config": {"digest": "md5:x"}, "layers": []}).encode(),
         RegistryError, "invalid digest"),
        (500, {}, b"", TransientError, "HTTP 500"),
        (429, {}, b"", TransientError, "HTTP 429"),
        (403, {}, b"", RegistryError, "access denied"),
        (401, {"WWW-Authenticate": 'Basic realm="x"'}, b"", RegistryError, "Bearer"),
        (401, {"WWW-Authenticate": 'Bearer realm="http://10.0.0.1/token"'}, b"", RegistryError,
         "not HTTPS"),
    ],
)  # fmt: skip
def test_malformed_answers(hostile, status, headers, body, error, fragment) -> None:
    hostile.routes["/v2/m/manifests/beta"] = (status, headers, body)
    with pytest.raises(error, match=fragment):
        hostile.client().resolve(refs.parse(f"{hostile.host}/m:beta"))


def test_oversized_manifest_rejected(hostile) -> None:
    hostile.routes["/v2/m/manifests/beta"] = (
        200, {"Content-Type": MANIFEST_TYPES[0]}, b" " * (4 * 1024 * 1024 + 1)
    )  # fmt: skip
    with pytest.raises(RegistryError, match="limit"):
        hostile.client().resolve(refs.parse(f"{hostile.host}/m:beta"))


def test_accept_lists_all_four_types(hostile) -> None:
    hostile.routes["/v2/m/manifests/beta"] = (200, {"Content-Type": MANIFEST_TYPES[0]}, GOOD)
    assert hostile.client().resolve(refs.parse(f"{hostile.host}/m:beta")) == _digest(GOOD)
    accept = hostile.seen[0][1]["Accept"]
    assert all(t in accept for t in MANIFEST_TYPES)


def test_bearer_token_flow(hostile) -> None:
    def manifest(handler: BaseHTTPRequestHandler):
        if handler.headers.get("Authorization") == "Bearer tok-123":
            return 200, {"Content-Type": MANIFEST_TYPES[0]}, GOOD
        challenge = (
            f'Bearer realm="http://{hostile.host}/token",service="reg",'
            'scope="repository:team/m:pull"'
        )
        return 401, {"WWW-Authenticate": challenge}, b""

    hostile.routes["/v2/team/m/manifests/beta"] = (0, {}, manifest)
    hostile.routes["/token"] = (200, {"Content-Type": "application/json"},
                                json.dumps({"token": "tok-123"}).encode())  # fmt: skip
    client = hostile.client()
    r = refs.parse(f"{hostile.host}/team/m:beta")
    assert client.resolve(r) == _digest(GOOD)
    token_requests = [p for p, _ in hostile.seen if p.startswith("/token")]
    assert token_requests == ["/token?service=reg&scope=repository%3Ateam%2Fm%3Apull"]
    # Plain-HTTP realm: Google credentials are never sent over it.
    token_headers = next(h for p, h in hostile.seen if p.startswith("/token"))
    assert "Authorization" not in token_headers
    # The token is cached: the next resolve needs no new challenge or token request.
    seen = len(hostile.seen)
    assert client.resolve(r) == _digest(GOOD)
    assert len(hostile.seen) == seen + 1


def test_token_refused(hostile) -> None:
    challenge = f'Bearer realm="http://{hostile.host}/token",service="reg"'
    hostile.routes["/v2/m/manifests/beta"] = (401, {"WWW-Authenticate": challenge}, b"")
    hostile.routes["/token"] = (401, {}, b"")
    with pytest.raises(RegistryError, match="token request refused"):
        hostile.client().resolve(refs.parse(f"{hostile.host}/m:beta"))

"""A small client for the OCI distribution API (Artifact Registry, docker-registry).

Only what the control plane needs: resolve a tag or digest to the manifest the registry
stores (and its digest), fetch blobs, put a manifest under a new tag, delete.

Every answer is validated (status, content type, JSON shape, ``Docker-Content-Digest``
against the SHA-256 we compute), because a registry's reply is external input. Requests
always list all four manifest media types in ``Accept``: a registry that is not offered
the stored type converts the manifest and answers with a *different* digest.

Auth is anonymous first; on a ``401`` with a ``Bearer`` challenge the standard token flow
runs. Google application-default credentials (``oauth2accesstoken:<token>``) are sent ONLY
to a Google registry's own token endpoint (realm on the same host as the registry, which
is ``*-docker.pkg.dev`` or ``*gcr.io``) and only for registries in ``credential_hosts``
(the hosts of ``ALLOWED_REGISTRIES``): any other realm gets an anonymous token request, so
a registry, or a forged event naming one, cannot collect the function's token. Plain HTTP
is spoken only to hosts named in ``INSECURE_REGISTRIES``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlparse

import requests

from edgefleet.core import refs
from edgefleet.core.errors import EdgefleetError, InvalidInput, TransientError
from edgefleet.core.refs import ImageRef

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES: tuple[str, ...] = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPT = ", ".join(MANIFEST_TYPES)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's own limit
MAX_CONFIG_BYTES = 4 * 1024 * 1024
DEFAULT_TIMEOUT = (3.05, 10.0)  # (connect, read) seconds
GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_GOOGLE_REGISTRY = re.compile(r"(?:[a-z0-9-]+-)?docker\.pkg\.dev|(?:[a-z0-9-]+\.)?gcr\.io")


def google_credentials_allowed(registry: str, realm_host: str, hosts: Iterable[str]) -> bool:
    """True when Google credentials may answer ``registry``'s token challenge (pure)."""
    registry = registry.lower()
    return (
        _GOOGLE_REGISTRY.fullmatch(registry) is not None
        and realm_host.lower() == registry
        and registry in {h.lower() for h in hosts}
    )


class RegistryError(EdgefleetError):
    """The registry refused a request or answered something malformed; a retry won't help."""


class NotFound(RegistryError):
    """The repository, tag, manifest or blob does not exist."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest or index exactly as the registry stores it."""

    digest: str
    media_type: str
    raw: bytes
    doc: dict[str, Any]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


TokenSource = Callable[[], str | None]


def google_token_source() -> TokenSource:
    """Google application-default credentials as a token source (``None`` when absent).

    Looked up on the first Bearer challenge only: a registry that never asks for auth
    (a local one) never causes a credentials lookup.
    """
    lock = threading.Lock()
    state: dict[str, Any] = {}

    def token() -> str | None:
        with lock:
            if "creds" not in state:
                try:
                    import google.auth
                    from google.auth.exceptions import DefaultCredentialsError

                    try:
                        state["creds"], _ = google.auth.default(scopes=[GOOGLE_SCOPE])
                    except DefaultCredentialsError:
                        state["creds"] = None
                except ImportError:
                    state["creds"] = None
            creds = state["creds"]
            if creds is None:
                return None
            if not creds.valid:
                import google.auth.transport.requests

                creds.refresh(google.auth.transport.requests.Request())
            return str(creds.token)

    return token


def parse_insecure(value: str | None) -> frozenset[str]:
    """Parse ``INSECURE_REGISTRIES`` (comma-separated ``host:port``)."""
    return frozenset(h.strip().lower() for h in (value or "").split(",") if h.strip())


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryClient:
    """Talks to any number of registries; thread-safe for concurrent resolves."""

    def __init__(
        self,
        *,
        insecure: Iterable[str] = (),
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        token_source: TokenSource | None = None,
        session: requests.Session | None = None,
        credential_hosts: Iterable[str] = (),
    ) -> None:
        """``credential_hosts``: registries that may receive Google credentials (see the
        module doc); empty sends them nowhere."""
        self._insecure = frozenset(h.lower() for h in insecure)
        self._credential_hosts = frozenset(h.lower() for h in credential_hosts)
        self._timeout = timeout
        self._token_source = token_source if token_source is not None else google_token_source()
        self._session = session or requests.Session()
        self._tokens: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    # -- public API ------------------------------------------------------------------

    def get_manifest(self, ref: ImageRef) -> Manifest:
        """The manifest or index that ``ref``'s tag (or digest) names, validated."""
        reference = ref.digest or ref.tag
        if not reference:
            raise InvalidInput(f"{ref}: needs a tag or a digest to fetch a manifest")
        resp = self._request("GET", ref, f"manifests/{reference}", headers={"Accept": ACCEPT})
        raw = _read_limited(resp, MAX_MANIFEST_BYTES, f"manifest of {ref}")
        digest = sha256_digest(raw)
        if ref.digest and ref.digest != digest:
            raise RegistryError(f"{ref}: registry sent content whose sha256 is {digest}")
        header = resp.headers.get("Docker-Content-Digest")
        if header and header != digest:
            raise RegistryError(
                f"{ref}: Docker-Content-Digest {header} does not match the content's {digest}"
            )
        doc = _json_object(raw, f"manifest of {ref}")
        media_type = _media_type(resp, doc, ref)
        _check_manifest_shape(doc, media_type, ref)
        return Manifest(digest, media_type, raw, doc)

    def resolve(self, ref: ImageRef) -> str:
        """The digest of the manifest ``ref`` names now (raise :class:`NotFound`)."""
        return self.get_manifest(ref).digest

    def get_blob(self, ref: ImageRef, digest: str, *, max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
        """A blob of ``ref``'s repository, checked against its digest."""
        refs.check_digest(digest)
        resp = self._request("GET", ref, f"blobs/{digest}")
        data = _read_limited(resp, max_bytes, f"blob {digest} of {ref.name}")
        if digest.startswith("sha256:") and sha256_digest(data) != digest:
            raise RegistryError(f"blob {digest} of {ref.name}: content does not match its digest")
        return data

    def get_config(self, ref: ImageRef, manifest: Manifest) -> dict[str, Any]:
        """The image config of a single-platform manifest, as a JSON object."""
        if manifest.is_index:
            raise InvalidInput(f"{ref}: an index has no config")
        digest = manifest.doc["config"]["digest"]
        return _json_object(self.get_blob(ref, digest), f"config {digest} of {ref.name}")

    def put_manifest(self, ref: ImageRef, manifest: Manifest) -> str:
        """Store ``manifest`` under ``ref``'s tag (a retag); return the stored digest."""
        if not ref.tag:
            raise InvalidInput(f"{ref}: needs a tag to put a manifest under")
        resp = self._request(
            "PUT",
            ref,
            f"manifests/{ref.tag}",
            data=manifest.raw,
            headers={"Content-Type": manifest.media_type},
            ok=(201,),
        )
        header = resp.headers.get("Docker-Content-Digest")
        if header and header != manifest.digest:
            raise RegistryError(
                f"{ref}: registry stored digest {header}, expected {manifest.digest}"
            )
        return manifest.digest

    def delete_manifest(self, ref: ImageRef) -> None:
        """Delete the manifest ``ref``'s digest names (with every tag pointing at it)."""
        if not ref.digest:
            raise InvalidInput(f"{ref}: deleting needs a digest (REPO@sha256:…)")
        self._request("DELETE", ref, f"manifests/{ref.digest}", ok=(202, 200))

    # -- transport -------------------------------------------------------------------

    def base_url(self, registry: str) -> str:
        scheme = "http" if registry.lower() in self._insecure else "https"
        return f"{scheme}://{registry}"

    def _request(
        self,
        method: str,
        ref: ImageRef,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> requests.Response:
        url = f"{self.base_url(ref.registry)}/v2/{ref.repository}/{path}"
        scope_action = "pull" if method == "GET" else "pull,push"
        if method == "DELETE":
            scope_action = "delete"
        scope = f"repository:{ref.repository}:{scope_action}"
        hdrs = dict(headers or {})
        token = self._tokens.get((ref.registry, scope))
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        resp = self._send(method, url, hdrs, data)
        if resp.status_code == 401:
            token = self._token_for(ref.registry, resp, scope)
            hdrs["Authorization"] = f"Bearer {token}"
            resp.close()
            resp = self._send(method, url, hdrs, data)
        if resp.status_code in ok:
            return resp
        _raise_for(resp, method, ref, path)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(
        self, method: str, url: str, headers: dict[str, str], data: bytes | None
    ) -> requests.Response:
        try:
            return self._session.request(
                method,
                url,
                headers=headers,
                data=data,
                timeout=self._timeout,
                stream=True,
                allow_redirects=True,
            )
        except requests.exceptions.SSLError as exc:
            raise RegistryError(
                f"{method} {url}: TLS failed ({exc}); a plain-HTTP registry must be listed "
                "in INSECURE_REGISTRIES"
            ) from exc
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise TransientError(f"{method} {url}: {exc.__class__.__name__}: {exc}") from exc
        except requests.RequestException as exc:
            raise RegistryError(f"{method} {url}: {exc}") from exc

    def _token_for(self, registry: str, challenge: requests.Response, scope: str) -> str:
        """Run the Docker token flow for ``scope`` as the 401 ``challenge`` describes."""
        header = challenge.headers.get("WWW-Authenticate", "")
        if not header.lower().startswith("bearer "):
            raise RegistryError(
                f"{registry} asks for {header.split(' ')[0] or 'unknown'} auth; only the "
                "Bearer token flow is supported"
            )
        params = dict(_CHALLENGE_PARAM.findall(header))
        realm = params.get("realm", "")
        realm_url = urlparse(realm)
        realm_host = (realm_url.netloc or "").lower()
        if realm_url.scheme != "https" and not (
            realm_url.scheme == "http" and realm_host in self._insecure
        ):
            raise RegistryError(
                f"{registry}: token realm {realm!r} is not HTTPS (or an INSECURE_REGISTRIES host)"
            )
        query = {"service": params.get("service", "")}
        query["scope"] = params.get("scope") or scope
        auth = None
        if realm_url.scheme == "https" and google_credentials_allowed(
            registry, realm_host, self._credential_hosts
        ):
            token = self._token_source()
            if token:
                auth = ("oauth2accesstoken", token)
        try:
            resp = self._session.get(
                f"{realm}?{urlencode(query)}",
                auth=auth,
                timeout=self._timeout,
                allow_redirects=False,  # a redirect must not carry credentials elsewhere
            )
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise TransientError(f"token request to {realm}: {exc}") from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            raise TransientError(f"token request to {realm}: HTTP {resp.status_code}")
        if resp.status_code != 200:
            raise RegistryError(
                f"{registry}: token request refused (HTTP {resp.status_code}); check the "
                "credentials (gcloud auth application-default login) and IAM permissions"
            )
        body = _json_object(resp.content, f"token answer of {realm}")
        value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise RegistryError(f"token answer of {realm} holds no token")
        with self._lock:
            self._tokens[(registry, scope)] = value
        return value


def _raise_for(resp: requests.Response, method: str, ref: ImageRef, path: str) -> None:
    status = resp.status_code
    what = f"{method} {ref.name} {path}"
    codes = _error_codes(resp)
    resp.close()
    if status == 404:
        raise NotFound(f"{ref}: not found ({', '.join(codes) or 'HTTP 404'})")
    if status >= 500 or status in (408, 429):
        raise TransientError(f"{what}: HTTP {status}")
    if status in (401, 403):
        raise RegistryError(f"{what}: access denied (HTTP {status}); check credentials and IAM")
    raise RegistryError(f"{what}: HTTP {status} {', '.join(codes)}".rstrip())


def _error_codes(resp: requests.Response) -> list[str]:
    try:
        body = json.loads(resp.raw.read(64 * 1024, decode_content=True) or b"{}")
        return [str(e.get("code")) for e in body.get("errors", []) if isinstance(e, dict)]
    except Exception:
        return []


def _read_limited(resp: requests.Response, limit: int, what: str) -> bytes:
    try:
        length = int(resp.headers.get("Content-Length") or 0)
        if length > limit:
            raise RegistryError(f"{what} is {length} bytes, over the {limit} limit")
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_content(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise RegistryError(f"{what} is over the {limit} byte limit")
            chunks.append(chunk)
        return b"".join(chunks)
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise TransientError(f"reading {what}: {exc}") from exc
    finally:
        resp.close()


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return doc


def _media_type(resp: requests.Response, doc: dict[str, Any], ref: ImageRef) -> str:
    header = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
    declared = doc.get("mediaType")
    media_type = header if header in MANIFEST_TYPES else declared
    if media_type not in MANIFEST_TYPES:
        raise RegistryError(
            f"{ref}: unsupported manifest type {header or declared!r}; expected one of {ACCEPT}"
        )
    if isinstance(declared, str) and declared and declared != media_type:
        raise RegistryError(f"{ref}: Content-Type {media_type} but mediaType {declared}")
    return str(media_type)


def _check_manifest_shape(doc: dict[str, Any], media_type: str, ref: ImageRef) -> None:
    if doc.get("schemaVersion") != 2:
        raise RegistryError(f"{ref}: manifest schemaVersion is {doc.get('schemaVersion')!r}")
    if media_type in INDEX_TYPES:
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise RegistryError(f"{ref}: index has no 'manifests' list")
        for m in manifests:
            if not isinstance(m, dict) or not isinstance(m.get("digest"), str):
                raise RegistryError(f"{ref}: index entry without a digest")
            _check_digest(m["digest"], ref)
            if m.get("platform") is not None and not isinstance(m["platform"], dict):
                raise RegistryError(f"{ref}: index entry platform is not an object")
        return
    config = doc.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
        raise RegistryError(f"{ref}: manifest has no config digest")
    _check_digest(config["digest"], ref)
    if not isinstance(doc.get("layers"), list):
        raise RegistryError(f"{ref}: manifest has no 'layers' list")


def _check_digest(digest: str, ref: ImageRef) -> None:
    try:
        refs.check_digest(digest)
    except InvalidInput as exc:
        raise RegistryError(f"{ref}: {exc}") from exc

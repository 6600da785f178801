"""The cloud builder: the same packaging steps as PodmanBuilder, as a Cloud Build build.

:func:`build_request_body` is a pure function from a BuildRequest and a config to the
Cloud Build ``Build`` resource; :class:`CloudBuildBuilder` submits it through the REST API
(``projects.locations.builds.create``) with application-default credentials and returns
the planned image tags with the long-running operation's name (the build is asynchronous;
the registry's tag events report the result).

Steps, in the build's workspace (the edgefleet source tarball, ``CLOUDBUILD_SOURCE``):

1. ``prepare`` (Python image): ``python -m edgefleet.packaging prepare`` fetches and
   validates the model package from GCS and lays out the context: model/, the
   dependencies installed per platform (site/GOARCH/), app/, Containerfile, build-args —
   the code PodmanBuilder runs locally. Only arches with an image (``support``) are built.
2. ``binfmt`` (only for foreign platforms): registers qemu emulators on the build VM. The
   Containerfile is COPY-only, so the build itself runs nothing emulated; the step is kept
   for Containerfiles (a BASE_IMAGE's ONBUILD, custom templates) that do.
3. ``buildx``: a docker-container buildx builder, for multi-platform builds.
4. ``build``: ``docker buildx build`` of model_server/Containerfile for every platform,
   pushed to Artifact Registry as ``REPO/MODEL:VERSION`` and ``REPO/MODEL:latest``, with
   its layer cache in ``REPO/MODEL:buildcache`` so that versions share their runtime layers.

Step images are pinned by digest: ``CLOUDBUILD_PYTHON_IMAGE``, ``CLOUDBUILD_DOCKER_IMAGE``
and ``CLOUDBUILD_BINFMT_IMAGE`` must each be ``NAME[:TAG]@sha256:HEX`` (a moved tag on a
public image would otherwise run new code with the builder's push rights); ``BASE_IMAGE``,
when set, too. ``scripts/deploy-gcp.sh`` resolves them through a remote Artifact Registry
repository at deploy time (no registry host is written here).

``CLOUDBUILD_EMULATOR_HOST=HOST:PORT`` sends the request over plain HTTP to a local
stand-in of the Cloud Build API instead, WITHOUT credentials (tests; like
``STORAGE_EMULATOR_HOST``): Google credentials only ever go to Google's endpoint.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.cloud.build import BuildRequest, BuildResult
from edgefleet.core import layout, refs
from edgefleet.core.errors import ConfigError, EdgefleetError, InvalidInput, TransientError
from edgefleet.packaging import context, support

API = "https://cloudbuild.googleapis.com/v1"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
WORKSPACE = "/workspace"
CONTEXT_DIR = f"{WORKSPACE}/build-context"
BUILDX_NAME = "edgefleet"
# qemu names tonistiigi/binfmt installs, per device arch.
BINFMT_ARCH = {"aarch64": "arm64", "armv7l": "arm", "x86_64": "amd64"}

_SA_EMAIL = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.iam\.gserviceaccount\.com$")
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^(global|[a-z]+-[a-z]+[0-9])$")
_GS_OBJECT = re.compile(r"^gs://(?P<bucket>[a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/(?P<obj>[^\s]+)$")
_PINNED = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")
STEP_IMAGES = (
    ("python_image", "CLOUDBUILD_PYTHON_IMAGE"),
    ("docker_image", "CLOUDBUILD_DOCKER_IMAGE"),
    ("binfmt_image", "CLOUDBUILD_BINFMT_IMAGE"),
)


@dataclass(frozen=True)
class CloudBuildConfig:
    project: str
    region: str
    image_repository: str  # e.g. the Artifact Registry repository's registryUri
    source: str  # gs://BUCKET/OBJECT.tar.gz: the edgefleet source tree
    service_account: str  # the build's least-privilege service account (email)
    # Step images, each NAME[:TAG]@sha256:HEX (see the module docstring).
    python_image: str
    docker_image: str
    binfmt_image: str
    base_image: str | None = None
    machine_type: str = "E2_HIGHCPU_8"
    timeout_seconds: int = 1800
    emulator_host: str | None = None  # CLOUDBUILD_EMULATOR_HOST: a local stand-in

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CloudBuildConfig:
        def need(name: str, hint: str) -> str:
            value = (env.get(name) or "").strip()
            if not value:
                raise ConfigError(f"{name} is not set: {hint}")
            return value

        project = (env.get("CLOUDBUILD_PROJECT") or env.get("GOOGLE_CLOUD_PROJECT") or "").strip()
        if not project:
            raise ConfigError("CLOUDBUILD_PROJECT is not set: the project that runs builds")
        config = cls(
            project=project,
            region=(env.get("CLOUDBUILD_REGION") or "global").strip(),
            image_repository=need(
                "IMAGE_REPOSITORY", "the Artifact Registry repository path"
            ).rstrip("/"),
            source=need("CLOUDBUILD_SOURCE", "gs:// path of the edgefleet source tarball"),
            service_account=need(
                "CLOUDBUILD_SERVICE_ACCOUNT", "the build service account (deploy-gcp.sh makes it)"
            ),
            base_image=(env.get("BASE_IMAGE") or "").strip() or None,
            emulator_host=(env.get("CLOUDBUILD_EMULATOR_HOST") or "").strip() or None,
            **{
                key: need(name, "a step image pinned by digest, NAME[:TAG]@sha256:HEX")
                for key, name in STEP_IMAGES
            },
            **(
                {"machine_type": env["CLOUDBUILD_MACHINE_TYPE"].strip()}
                if env.get("CLOUDBUILD_MACHINE_TYPE", "").strip()
                else {}
            ),
        )
        return config.check()

    def check(self) -> CloudBuildConfig:
        if not _PROJECT.match(self.project):
            raise ConfigError(f"invalid project id {self.project!r}")
        if not _REGION.match(self.region):
            raise ConfigError(f"invalid Cloud Build region {self.region!r}: e.g. europe-west1")
        refs.parse(f"{self.image_repository}/model:tag")
        if not _GS_OBJECT.match(self.source):
            raise ConfigError(f"invalid CLOUDBUILD_SOURCE {self.source!r}: gs://BUCKET/OBJECT")
        if not _SA_EMAIL.match(self.service_account):
            raise ConfigError(f"invalid service account {self.service_account!r}")
        pinned = [(name, getattr(self, key)) for key, name in STEP_IMAGES]
        if self.base_image:
            pinned.append(("BASE_IMAGE", self.base_image))
        for name, ref in pinned:
            if not _PINNED.match(ref):
                raise ConfigError(
                    f"{name}={ref!r} is not pinned by digest: give NAME[:TAG]@sha256:HEX "
                    "(scripts/deploy-gcp.sh resolves it)"
                )
        if self.emulator_host and not _HOST_PORT.match(self.emulator_host):
            raise ConfigError(f"invalid CLOUDBUILD_EMULATOR_HOST {self.emulator_host!r}: HOST:PORT")
        return self


def image_tags(config: CloudBuildConfig, request: BuildRequest) -> tuple[str, str]:
    repo = refs.parse(f"{config.image_repository}/{request.model}:{request.version}")
    return str(repo), str(repo.with_tag("latest"))


def cache_ref(config: CloudBuildConfig, request: BuildRequest) -> str:
    """Where buildx keeps the model's layer cache between builds. Each Cloud Build VM starts
    empty; without it every version would get its own copy of the runtime layers and every
    device would download them again for each new model version."""
    return str(refs.parse(f"{config.image_repository}/{request.model}:{layout.BUILD_CACHE_TAG}"))


def build_request_body(config: CloudBuildConfig, request: BuildRequest) -> dict[str, Any]:
    """The Cloud Build ``Build`` resource that packages ``request`` (pure)."""
    context.check_request(request)
    arches, skipped = support.plan_arches(tuple(dict.fromkeys(request.arches)))
    if not arches:
        raise InvalidInput(support.skipped_message(arches, skipped))
    platforms = ",".join(context.PLATFORM[a] for a in arches)
    foreign = [BINFMT_ARCH[a] for a in arches if a != "x86_64"]  # Cloud Build VMs are amd64
    version_tag, latest_tag = image_tags(config, request)
    cache = cache_ref(config, request)
    source = _GS_OBJECT.match(config.source)
    assert source is not None
    prepare = [
        "pip install --quiet --disable-pip-version-check --root-user-action=ignore "
        f"{WORKSPACE}",
        shlex.join(
            [
                "python", "-m", "edgefleet.packaging", "prepare",
                "--model", request.model,
                "--version", request.version,
                "--major", str(request.major),
                "--trained-at", str(request.trained_at),
                "--source", request.source,
                "--arches", ",".join(arches),
                "--context", CONTEXT_DIR,
                "--source-root", WORKSPACE,
            ]
        ),
    ]  # fmt: skip
    steps: list[dict[str, Any]] = [
        {
            "id": "prepare",
            "name": config.python_image,
            "entrypoint": "bash",
            "args": ["-euc", " && ".join(prepare)],
        }
    ]
    if foreign:
        steps.append(
            {
                "id": "binfmt",
                "name": config.docker_image,
                "args": ["run", "--privileged", "--rm", config.binfmt_image,
                         "--install", ",".join(foreign)],
                "waitFor": ["-"],
            }
        )  # fmt: skip
    steps.append(
        {
            "id": "buildx",
            "name": config.docker_image,
            "args": ["buildx", "create", "--name", BUILDX_NAME, "--driver", "docker-container"],
            "waitFor": ["-"],
        }
    )
    build = [
        "docker", "buildx", "build", "--builder", BUILDX_NAME,
        "--platform", platforms,
        "--provenance=false", "--sbom=false",
        "--tag", version_tag, "--tag", latest_tag,
        "--cache-from", f"type=registry,ref={cache}",
        "--cache-to", f"type=registry,ref={cache},mode=max,image-manifest=true,oci-mediatypes=true",
        "--file", f"{CONTEXT_DIR}/Containerfile", "--push",
    ]  # fmt: skip
    if config.base_image:
        build.append(f"--build-arg=BASE_IMAGE={config.base_image}")
    steps.append(
        {
            "id": "build",
            "name": config.docker_image,
            "entrypoint": "sh",
            "args": [
                "-euc",
                f"{shlex.join(build)} $(cat {CONTEXT_DIR}/{context.BUILD_ARGS_FILE}) {CONTEXT_DIR}",
            ],
            "waitFor": ["prepare", "buildx", *(["binfmt"] if foreign else [])],
        }
    )
    return {
        "source": {
            "storageSource": {"bucket": source["bucket"], "object": source["obj"]},
        },
        "steps": steps,
        "timeout": f"{config.timeout_seconds}s",
        "serviceAccount": f"projects/{config.project}/serviceAccounts/{config.service_account}",
        "options": {"logging": "CLOUD_LOGGING_ONLY", "machineType": config.machine_type},
        "tags": ["edgefleet", request.model, request.version],
    }


def build_url(config: CloudBuildConfig) -> str:
    api = f"http://{config.emulator_host}/v1" if config.emulator_host else API
    return f"{api}/projects/{config.project}/locations/{config.region}/builds"


class CloudBuildBuilder:
    """Builder (edgefleet.cloud.build) for GCP: submits the build, does not wait for it."""

    def __init__(self, config: CloudBuildConfig, *, session: Any = None) -> None:
        self.config = config.check()
        self._session = session

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CloudBuildBuilder:
        return cls(CloudBuildConfig.from_env(env))

    def build(self, request: BuildRequest) -> BuildResult:
        body = build_request_body(self.config, request)
        session = self._session or _session_for(self.config)
        try:
            resp = session.post(build_url(self.config), json=body, timeout=30)
        except Exception as exc:  # transport errors: Pub/Sub/Eventarc retries the event
            raise TransientError(f"submitting the Cloud Build build: {exc}") from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            raise TransientError(f"Cloud Build answered {resp.status_code}: {resp.text[:300]}")
        if resp.status_code >= 400:
            raise EdgefleetError(f"Cloud Build refused the build ({resp.status_code}): "
                                 f"{resp.text[:300]}")  # fmt: skip
        operation = resp.json().get("name", "")
        return BuildResult(images=image_tags(self.config, request), detail=operation)


def _session_for(config: CloudBuildConfig) -> Any:
    """No credentials for a stand-in (they go to Google's endpoint only)."""
    if config.emulator_host:
        import requests

        return requests.Session()
    return _authorized_session()


def _authorized_session() -> Any:
    try:
        import google.auth
        from google.auth.transport.requests import AuthorizedSession
    except ImportError as exc:  # pragma: no cover - google-auth is a core dependency
        raise ConfigError("google-auth is missing: pip install edgefleet") from exc
    credentials, _ = google.auth.default(scopes=[SCOPE])
    return AuthorizedSession(credentials)

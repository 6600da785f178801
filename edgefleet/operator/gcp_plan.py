"""The gcloud commands that deploy edgefleet to a GCP project, as a reviewable plan.

:func:`plan` turns a :class:`GcpConfig` into an ordered list of :class:`Step` (pure, so
the tests check roles, names and flags); :func:`render` prints them as a bash script in
which every create is guarded by a describe, so running it twice changes nothing. The
values only known at deploy time (the registry's URI, the Cloud Storage service agent)
are captured into shell variables by the script itself.

``scripts/deploy-gcp.sh [--dry-run] [flags]`` is the entry point: ``--dry-run`` prints the
script, otherwise it is run with ``bash -euo pipefail``.

Least privilege, per identity:

* ``edgefleet-tag-monitor`` (tag_monitor): objectAdmin on the deploy bucket only; reader
  on the Artifact Registry repository; accessor of the signing-key secret only.
* ``edgefleet-model-done`` (model_done_watcher): submits Cloud Builds and may act as the
  builder account; no bucket, repository or secret access at all.
* ``edgefleet-trigger`` (Eventarc): receives events, may invoke the two functions.
* ``edgefleet-builder`` (Cloud Build): reads the model and build buckets, writes the
  repository, pulls step images through the upstream remote repository, writes logs.
* Devices: each device is its OWN principal, federated from its X.509 client certificate
  (Workload Identity Federation, pool ``edgefleet-devices``, ``google.subject`` = the
  certificate's CN = the device id; no service-account keys on devices). The whole pool
  reads ``sets/`` of the deploy bucket, pulls from the repository and publishes telemetry;
  each device alone may create/replace exactly ``status/DEVICE_ID.json`` (custom role,
  one conditional binding per device, ``--devices``/``--devices-file``).
No primitive role (owner/editor/viewer) is granted to anyone.

Cloud Build step images are pinned by digest: the plan creates a remote Artifact Registry
repository in front of the public images, resolves each step image's digest there at
deploy time and gives model_done_watcher ``NAME@sha256:…`` references only.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.core import layout, mqtt
from edgefleet.core.errors import ConfigError, EdgefleetError

TAG_MONITOR_SA = "edgefleet-tag-monitor"
MODEL_DONE_SA = "edgefleet-model-done"
TRIGGER_SA = "edgefleet-trigger"
BUILDER_SA = "edgefleet-builder"
STATUS_ROLE_ID = "edgefleetDeviceStatusWriter"
DEVICE_POOL = "edgefleet-devices"
DEVICE_PROVIDER = "edgefleet-device-ca"
TRUST_STORE = "device-trust-store.yaml"
UPSTREAM_REPOSITORY = "edgefleet-upstream"
# Step images, by their path in the upstream remote repository, and the env naming each.
STEP_IMAGES = (
    ("CLOUDBUILD_PYTHON_IMAGE", "PYTHON_DIGEST", "library/python:3.11-slim"),
    ("CLOUDBUILD_DOCKER_IMAGE", "DOCKER_DIGEST", "library/docker:27-cli"),
    ("CLOUDBUILD_BINFMT_IMAGE", "BINFMT_DIGEST", "tonistiigi/binfmt:latest"),
)
GCR_TOPIC = "gcr"
RESULTS_TOPIC = "edge-inference-results"
TAG_MONITOR = "tag-monitor"
MODEL_DONE_WATCHER = "model-done-watcher"
ROLLOUT_CONTROLLER = "rollout-controller"
ROLLOUT_SA = "edgefleet-rollouts"
TICK_TOPIC = "rollout-tick"
TICK_JOB = "edgefleet-rollout-tick"
TICK_SCHEDULE = "* * * * *"  # Cloud Scheduler's finest: once a minute
RESIGN_SETS = "resign-sets"
RESIGN_TOPIC = "resign-tick"
RESIGN_JOB = "edgefleet-resign-tick"
# Sets live 7 days and are re-signed within half of that (docs/security.md): every 6 h
# leaves many chances before a set nears its expiry.
RESIGN_SCHEDULE = "17 */6 * * *"
RUNTIME = "python311"
SOURCE_OBJECT = "source/edgefleet-src.tar.gz"
SERVICES = (
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "eventarc.googleapis.com",
    "iam.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
    "sts.googleapis.com",
)
PRIMITIVE_ROLES = frozenset({"roles/owner", "roles/editor", "roles/viewer"})
# Sources that go into the Cloud Build source tarball (the prepare step installs it).
SOURCE_PATHS = (
    "pyproject.toml",
    "README.md",
    "edgefleet",
    "model_server",
    "manifests",
    "functions",
    "sync_pod",
    "device",
)

_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$")
_ID = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$")


@dataclass(frozen=True)
class GcpConfig:
    project: str
    region: str = "europe-west1"
    deploy_bucket: str = ""
    model_bucket: str = ""
    build_bucket: str = ""
    repository: str = "edgefleet"
    channels: tuple[str, ...] = layout.DEFAULT_CHANNELS
    arches: tuple[str, ...] = layout.ARCHES
    build_arches: tuple[str, ...] = ("x86_64", "aarch64")
    signing_secret: str = "edgefleet-signing-key"
    signing_key: str = "edgefleet-signing.pem"
    stage_dir: str = "build/gcp"
    # The CA (PEM) that issues device client certificates (CN = device id), and the
    # devices allowed to write their own status.
    device_ca: str = "edgefleet-device-ca.pem"
    devices: tuple[str, ...] = ()
    mqtt_url: str = ""  # the wake-up broker tag_monitor publishes to (docs/operations.md)

    def __post_init__(self) -> None:
        for name, suffix in (
            ("deploy_bucket", "deploy"),
            ("model_bucket", "models"),
            ("build_bucket", "build"),
        ):
            if not getattr(self, name):
                object.__setattr__(self, name, f"{self.project}-edgefleet-{suffix}")

    def check(self) -> GcpConfig:
        if not _PROJECT.match(self.project):
            raise ConfigError(f"invalid project id {self.project!r}: set --project / PROJECT")
        if not _REGION.match(self.region):
            raise ConfigError(f"invalid region {self.region!r}: e.g. europe-west1")
        for name in (self.deploy_bucket, self.model_bucket, self.build_bucket):
            if not _BUCKET.match(name):
                raise ConfigError(f"invalid bucket name {name!r}")
        for name in (self.repository, self.signing_secret):
            if not _ID.match(name):
                raise ConfigError(f"invalid resource id {name!r}")
        if self.mqtt_url:
            mqtt.parse_url(self.mqtt_url, var="--mqtt-url")
        for channel in self.channels:
            layout.check_channel(channel)
        for arch in (*self.arches, *self.build_arches):
            layout.check_arch(arch)
        for device in self.devices:
            layout.check_device_id(device)
        if len(set(self.devices)) != len(self.devices):
            raise ConfigError("a device id is listed twice in --devices/--devices-file")
        return self

    def sa(self, name: str) -> str:
        return f"{name}@{self.project}.iam.gserviceaccount.com"

    @property
    def secret_version(self) -> str:
        return f"projects/{self.project}/secrets/{self.signing_secret}/versions/latest"

    @property
    def pool_path(self) -> str:
        """The device pool; ``${PROJECT_NUMBER}`` is captured by the script."""
        return f"projects/${{PROJECT_NUMBER}}/locations/global/workloadIdentityPools/{DEVICE_POOL}"

    @property
    def all_devices(self) -> str:
        return f"principalSet://iam.googleapis.com/{self.pool_path}/*"

    def device(self, device_id: str) -> str:
        """One device's principal: the pool subject mapped from its certificate's CN."""
        return f"principal://iam.googleapis.com/{self.pool_path}/subject/{device_id}"


@dataclass(frozen=True)
class Step:
    """One command. ``unless``: a check that, when it succeeds, makes the step a no-op.
    ``capture``: the name of a shell variable that receives the command's output."""

    argv: tuple[str, ...]
    comment: str = ""
    unless: tuple[str, ...] | None = None
    capture: str | None = None

    @property
    def role(self) -> str | None:
        return _flag(self.argv, "--role")

    @property
    def member(self) -> str | None:
        return _flag(self.argv, "--member")


@dataclass
class _Plan:
    config: GcpConfig
    steps: list[Step] = field(default_factory=list)

    def gcloud(
        self,
        *args: str,
        comment: str = "",
        unless: Sequence[str] | None = None,
        capture: str | None = None,
        project: bool = True,
    ) -> None:
        argv = ("gcloud", *args, *((f"--project={self.config.project}",) if project else ()))
        check = None
        if unless is not None:
            check = ("gcloud", *unless, f"--project={self.config.project}")
        self.steps.append(Step(argv, comment, check, capture))

    def local(self, *argv: str, comment: str = "", unless: Sequence[str] | None = None) -> None:
        self.steps.append(Step(tuple(argv), comment, tuple(unless) if unless else None))

    def service_account(self, name: str, title: str) -> str:
        """Create service account ``name`` unless it exists; return its email."""
        email = self.config.sa(name)
        self.gcloud(
            "iam", "service-accounts", "create", name, f"--display-name={title}",
            comment=f"service account {name}",
            unless=("iam", "service-accounts", "describe", email),
        )  # fmt: skip
        return email

    def bucket_binding(
        self,
        bucket: str,
        member: str,
        role: str,
        *,
        condition: str | None = None,
        comment: str = "",
    ) -> None:
        """Grant ``member`` ``role`` on ``gs://bucket`` (under ``condition``, if any)."""
        args = [
            "storage", "buckets", "add-iam-policy-binding", f"gs://{bucket}",
            f"--member={member}", f"--role={role}",
        ]  # fmt: skip
        if condition:
            args.append(f"--condition={condition}")
        self.gcloud(*args, comment=comment or f"{member}: {role} on gs://{bucket}")

    def repository_binding(
        self, repository: str, location: str, member: str, role: str, *, comment: str = ""
    ) -> None:
        """Grant ``member`` ``role`` on the Artifact Registry ``repository``."""
        self.gcloud(
            "artifacts", "repositories", "add-iam-policy-binding", repository,
            f"--location={location}", f"--member={member}", f"--role={role}",
            comment=comment or f"{member}: {role} on repository {repository}",
        )  # fmt: skip


def plan(config: GcpConfig) -> list[Step]:
    """Every command of a deployment, in order."""
    c = config.check()
    p = _Plan(c)
    sa = {name: c.sa(name) for name in (TAG_MONITOR_SA, MODEL_DONE_SA, TRIGGER_SA, BUILDER_SA)}
    member = {name: f"serviceAccount:{email}" for name, email in sa.items()}

    p.gcloud("services", "enable", *SERVICES, comment="APIs edgefleet uses")

    for bucket in (c.deploy_bucket, c.model_bucket, c.build_bucket):
        p.gcloud(
            "storage",
            "buckets",
            "create",
            f"gs://{bucket}",
            f"--location={c.region}",
            "--uniform-bucket-level-access",
            "--public-access-prevention",
            comment=f"bucket {bucket}",
            unless=("storage", "buckets", "describe", f"gs://{bucket}"),
        )
    p.gcloud(
        "storage",
        "buckets",
        "update",
        f"gs://{c.deploy_bucket}",
        "--versioning",
        comment="keep old manifest sets: an audit trail and a manual way back",
    )

    for topic in (GCR_TOPIC, RESULTS_TOPIC):
        p.gcloud(
            "pubsub",
            "topics",
            "create",
            topic,
            comment=f"topic {topic}",
            unless=("pubsub", "topics", "describe", topic),
        )

    p.gcloud(
        "artifacts",
        "repositories",
        "create",
        c.repository,
        "--repository-format=docker",
        f"--location={c.region}",
        "--description=edgefleet model-server images",
        comment="Artifact Registry repository (publishes tag events to topic gcr)",
        unless=("artifacts", "repositories", "describe", c.repository, f"--location={c.region}"),
    )
    p.gcloud(
        "artifacts",
        "repositories",
        "describe",
        c.repository,
        f"--location={c.region}",
        "--format=value(registryUri)",
        capture="IMAGE_REPOSITORY",
        comment="HOST/PROJECT/REPO of the repository",
    )
    p.gcloud(
        "artifacts",
        "repositories",
        "create",
        UPSTREAM_REPOSITORY,
        "--repository-format=docker",
        f"--location={c.region}",
        "--mode=remote-repository",
        "--remote-docker-repo=DOCKER-HUB",
        "--description=public build-step images, pulled through and pinned by digest",
        comment="remote repository in front of the public step images",
        unless=(
            "artifacts",
            "repositories",
            "describe",
            UPSTREAM_REPOSITORY,
            f"--location={c.region}",
        ),
    )
    p.gcloud(
        "artifacts",
        "repositories",
        "describe",
        UPSTREAM_REPOSITORY,
        f"--location={c.region}",
        "--format=value(registryUri)",
        capture="UPSTREAM",
        comment="HOST/PROJECT/REPO of the upstream remote repository",
    )
    for _, digest_var, image in STEP_IMAGES:
        p.gcloud(
            "artifacts",
            "docker",
            "images",
            "describe",
            f"${{UPSTREAM}}/{image}",
            "--format=value(image_summary.digest)",
            capture=digest_var,
            comment=f"pin build step {image} to the digest it has now",
            project=False,
        )
    p.gcloud(
        "projects",
        "describe",
        c.project,
        "--format=value(projectNumber)",
        capture="PROJECT_NUMBER",
        comment="workload identity principals are named by project number",
        project=False,
    )

    for name, title in (
        (TAG_MONITOR_SA, "edgefleet tag_monitor"),
        (MODEL_DONE_SA, "edgefleet model_done_watcher"),
        (TRIGGER_SA, "edgefleet triggers"),
        (BUILDER_SA, "edgefleet image builds"),
    ):
        p.service_account(name, title)
    p.gcloud(
        "iam",
        "roles",
        "create",
        STATUS_ROLE_ID,
        "--title=edgefleet device status writer",
        "--permissions=storage.objects.create,storage.objects.delete",
        "--stage=GA",
        comment="create/replace objects, nothing else (one object per device, by a condition)",
        unless=("iam", "roles", "describe", STATUS_ROLE_ID),
    )
    _device_pool(p, c)

    objects = f"projects/_/buckets/{c.deploy_bucket}/objects/"
    p.bucket_binding(c.deploy_bucket, member[TAG_MONITOR_SA], "roles/storage.objectAdmin")
    p.bucket_binding(
        c.deploy_bucket,
        c.all_devices,
        "roles/storage.objectViewer",
        condition=f'expression=resource.name.startsWith("{objects}sets/"),title=device-read-sets',
    )
    for device in c.devices:
        # Exactly this device's status object: no device can write (or delete) another's.
        status = objects + layout.status_object(device)
        p.bucket_binding(
            c.deploy_bucket,
            c.device(device),
            f"projects/{c.project}/roles/{STATUS_ROLE_ID}",
            condition=f'expression=resource.name == "{status}",title=status-{device}',
        )
    p.bucket_binding(c.model_bucket, member[BUILDER_SA], "roles/storage.objectViewer")
    p.bucket_binding(c.build_bucket, member[BUILDER_SA], "roles/storage.objectViewer")

    for repository, who, role in (
        (c.repository, member[TAG_MONITOR_SA], "roles/artifactregistry.reader"),
        (c.repository, member[BUILDER_SA], "roles/artifactregistry.writer"),
        (c.repository, c.all_devices, "roles/artifactregistry.reader"),
        (UPSTREAM_REPOSITORY, member[BUILDER_SA], "roles/artifactregistry.reader"),
    ):
        p.repository_binding(repository, c.region, who, role)
    p.gcloud(
        "pubsub",
        "topics",
        "add-iam-policy-binding",
        RESULTS_TOPIC,
        f"--member={c.all_devices}",
        "--role=roles/pubsub.publisher",
        comment="devices publish inference results",
    )
    p.gcloud(
        "iam",
        "service-accounts",
        "add-iam-policy-binding",
        sa[BUILDER_SA],
        f"--member={member[MODEL_DONE_SA]}",
        "--role=roles/iam.serviceAccountUser",
        comment="model-done-watcher starts builds that run as the builder account",
    )
    for who, role in (
        (MODEL_DONE_SA, "roles/cloudbuild.builds.editor"),
        (BUILDER_SA, "roles/logging.logWriter"),
        (TRIGGER_SA, "roles/eventarc.eventReceiver"),
    ):
        p.gcloud(
            "projects",
            "add-iam-policy-binding",
            c.project,
            f"--member={member[who]}",
            f"--role={role}",
            "--condition=None",
            comment=f"{who}: {role} (no narrower scope exists)",
            project=False,
        )
    p.gcloud(
        "storage",
        "service-agent",
        capture="GCS_AGENT",
        comment="the Cloud Storage service agent publishes finalize events",
    )
    p.gcloud(
        "projects",
        "add-iam-policy-binding",
        c.project,
        "--member=serviceAccount:${GCS_AGENT}",
        "--role=roles/pubsub.publisher",
        "--condition=None",
        comment="GCS -> Eventarc (model bucket finalize)",
        project=False,
    )

    p.gcloud(
        "secrets",
        "create",
        c.signing_secret,
        "--replication-policy=automatic",
        comment="the manifest-set signing key (Ed25519, PEM)",
        unless=("secrets", "describe", c.signing_secret),
    )
    p.local(
        sys.executable,
        "-m",
        "edgefleet.operator.cli",
        "keys",
        "generate",
        c.signing_key,
        comment="a key when there is none",
        unless=("test", "-f", c.signing_key),
    )
    p.gcloud(
        "secrets",
        "versions",
        "add",
        c.signing_secret,
        f"--data-file={c.signing_key}",
        comment="upload the key once; the offline root authorises it (bootstrap --root-key)",
        unless=(
            "secrets",
            "versions",
            "access",
            "latest",
            f"--secret={c.signing_secret}",
            "--out-file=/dev/null",
        ),
    )
    p.gcloud(
        "secrets",
        "add-iam-policy-binding",
        c.signing_secret,
        f"--member={member[TAG_MONITOR_SA]}",
        "--role=roles/secretmanager.secretAccessor",
        comment="only tag_monitor reads the signing key",
    )

    stage = c.stage_dir
    p.local(
        sys.executable,
        "-m",
        "edgefleet.operator.gcp_plan",
        "stage",
        f"--out={stage}",
        comment="function source (main.py + edgefleet wheel) and the build source tarball",
    )
    p.gcloud(
        "storage",
        "cp",
        f"{stage}/edgefleet-src.tar.gz",
        f"gs://{c.build_bucket}/{SOURCE_OBJECT}",
        comment="source for Cloud Build",
        project=False,
    )

    common = (
        "--gen2",
        f"--region={c.region}",
        f"--runtime={RUNTIME}",
        f"--source={stage}/functions",
        f"--trigger-service-account={sa[TRIGGER_SA]}",
        "--retry",
        "--ingress-settings=internal-only",
        "--no-allow-unauthenticated",
        "--memory=512Mi",
        "--timeout=60s",
        "--max-instances=10",
    )
    tag_env = {
        "DEPLOY_BUCKET": c.deploy_bucket,
        "CHANNELS": ",".join(c.channels),
        "ARCHES": ",".join(c.arches),
        "SIGNING_KEY": c.secret_version,
        "ALLOWED_REGISTRIES": "${IMAGE_REPOSITORY}",
    }
    if c.mqtt_url:
        tag_env["MQTT_URL"] = c.mqtt_url
    p.gcloud(
        "functions",
        "deploy",
        TAG_MONITOR,
        *common,
        "--entry-point=tag_monitor",
        f"--service-account={sa[TAG_MONITOR_SA]}",
        f"--trigger-topic={GCR_TOPIC}",
        f"--set-env-vars={env_flag(tag_env)}",
        comment="registry tag events -> signed manifest sets",
    )
    watcher_env = {
        "BUILDER": "cloudbuild",
        "MODEL_BUCKET": c.model_bucket,
        "ARCHES": ",".join(c.build_arches),
        "IMAGE_REPOSITORY": "${IMAGE_REPOSITORY}",
        "CLOUDBUILD_PROJECT": c.project,
        "CLOUDBUILD_REGION": c.region,
        "CLOUDBUILD_SOURCE": f"gs://{c.build_bucket}/{SOURCE_OBJECT}",
        "CLOUDBUILD_SERVICE_ACCOUNT": sa[BUILDER_SA],
        **{
            env: f"${{UPSTREAM}}/{image.rsplit(':', 1)[0]}@${{{digest_var}}}"
            for env, digest_var, image in STEP_IMAGES
        },
    }
    p.gcloud(
        "functions",
        "deploy",
        MODEL_DONE_WATCHER,
        *common,
        "--entry-point=model_done_watcher",
        f"--service-account={sa[MODEL_DONE_SA]}",
        "--trigger-event-filters=type=google.cloud.storage.object.v1.finalized",
        f"--trigger-event-filters=bucket={c.model_bucket}",
        f"--set-env-vars={env_flag(watcher_env)}",
        comment="TRAINER-DONE in the model bucket -> Cloud Build",
    )
    for fn in (TAG_MONITOR, MODEL_DONE_WATCHER):
        p.gcloud(
            "run",
            "services",
            "add-iam-policy-binding",
            fn,
            f"--region={c.region}",
            f"--member=serviceAccount:{sa[TRIGGER_SA]}",
            "--role=roles/run.invoker",
            comment=f"Eventarc may invoke {fn}, nobody else",
        )
    _rollout_steps(p, c, common, tag_env, sa[TRIGGER_SA])
    _resign_steps(p, c, common, tag_env, sa[TAG_MONITOR_SA], sa[TRIGGER_SA])
    from edgefleet.operator.dashboard import deploy as dashboard

    dashboard.plan(p, c)  # Cloud Run behind IAP, read-only service account
    return p.steps


def _rollout_steps(
    p: _Plan, c: GcpConfig, common: Sequence[str], env: Mapping[str, str], trigger_sa: str
) -> None:
    """rollout_controller (docs/rollouts.md): its own service account -- it alone may move
    a channel tag (a completed rollout) besides the operator -- woken by a Cloud Scheduler
    job publishing to topic rollout-tick once a minute."""
    p.gcloud("services", "enable", "cloudscheduler.googleapis.com", comment="ticks")
    rollout_sa = p.service_account(ROLLOUT_SA, "edgefleet rollout controller")
    p.bucket_binding(
        c.deploy_bucket, f"serviceAccount:{rollout_sa}", "roles/storage.objectAdmin",
        comment="rollout_controller: reads reports, writes rollouts/ and sets/",
    )  # fmt: skip
    p.repository_binding(
        c.repository, c.region, f"serviceAccount:{rollout_sa}", "roles/artifactregistry.writer",
        comment="a completed rollout moves the channel tag to the candidate",
    )  # fmt: skip
    p.gcloud(
        "secrets", "add-iam-policy-binding", c.signing_secret,
        f"--member=serviceAccount:{rollout_sa}", "--role=roles/secretmanager.secretAccessor",
        comment="it signs the sets it writes, with the same key as tag_monitor",
    )  # fmt: skip
    _ticked_function(
        p, c, common, env,
        name=ROLLOUT_CONTROLLER, entry="rollout_controller", account=rollout_sa,
        trigger_sa=trigger_sa, topic=TICK_TOPIC, job=TICK_JOB, schedule=TICK_SCHEDULE,
        comment="progressive rollouts: advance, hold, or halt and revert, at every tick",
    )  # fmt: skip


def _resign_steps(
    p: _Plan,
    c: GcpConfig,
    common: Sequence[str],
    env: Mapping[str, str],
    signer_sa: str,
    trigger_sa: str,
) -> None:
    """resign_sets: a Cloud Scheduler job re-signs every set before it expires, so a
    channel nobody promotes keeps a fresh, short-lived signature (docs/security.md, row
    5e). It runs as tag_monitor's account: the one that already signs sets."""
    _ticked_function(
        p, c, common, env,
        name=RESIGN_SETS, entry="resign_sets", account=signer_sa, trigger_sa=trigger_sa,
        topic=RESIGN_TOPIC, job=RESIGN_JOB, schedule=RESIGN_SCHEDULE,
        comment="sets near their expiry re-signed (short expiry, devices report freshness)",
    )  # fmt: skip


def _ticked_function(
    p: _Plan,
    c: GcpConfig,
    common: Sequence[str],
    env: Mapping[str, str],
    *,
    name: str,
    entry: str,
    account: str,
    trigger_sa: str,
    topic: str,
    job: str,
    schedule: str,
    comment: str,
) -> None:
    """A function woken by a Cloud Scheduler job through its own topic (locally the
    stack's ticker), running as ``account``; only Eventarc may invoke it."""
    p.gcloud(
        "pubsub", "topics", "create", topic, comment=f"topic {topic}",
        unless=("pubsub", "topics", "describe", topic),
    )  # fmt: skip
    argv = [a for a in common if not a.startswith("--service-account=")]
    p.gcloud(
        "functions", "deploy", name, *argv,
        f"--service-account={account}", f"--entry-point={entry}",
        f"--trigger-topic={topic}", f"--set-env-vars={env_flag(env)}",
        comment=comment,
    )  # fmt: skip
    p.gcloud(
        "run", "services", "add-iam-policy-binding", name,
        f"--region={c.region}", f"--member=serviceAccount:{trigger_sa}",
        "--role=roles/run.invoker", comment=f"Eventarc may invoke {name}, nobody else",
    )  # fmt: skip
    p.gcloud(
        "scheduler", "jobs", "create", "pubsub", job, f"--location={c.region}",
        f"--schedule={schedule}", f"--topic={topic}", '--message-body={"tick":1}',
        comment=f"the tick of {name} (Cloud Scheduler; locally the stack's ticker)",
        unless=("scheduler", "jobs", "describe", job, f"--location={c.region}"),
    )  # fmt: skip


def _device_pool(p: _Plan, c: GcpConfig) -> None:
    """The devices' workload identity pool and its X.509 provider: a device presents its
    client certificate (issued by the fleet's device CA, CN = device id) and becomes the
    principal ``…/subject/DEVICE_ID``; no service-account key is ever put on a device."""
    where = ("--location=global", f"--workload-identity-pool={DEVICE_POOL}")
    p.local(
        sys.executable,
        "-m",
        "edgefleet.operator.gcp_plan",
        "trust-store",
        f"--ca={c.device_ca}",
        f"--out={c.stage_dir}/{TRUST_STORE}",
        comment="the provider trusts the device CA only",
    )
    p.gcloud(
        "iam",
        "workload-identity-pools",
        "create",
        DEVICE_POOL,
        "--location=global",
        "--display-name=edgefleet devices",
        comment="one federated identity per device",
        unless=("iam", "workload-identity-pools", "describe", DEVICE_POOL, "--location=global"),
    )
    p.gcloud(
        "iam",
        "workload-identity-pools",
        "providers",
        "create-x509",
        DEVICE_PROVIDER,
        *where,
        "--attribute-mapping=google.subject=assertion.subject.dn.cn",
        f"--trust-store-config-path={c.stage_dir}/{TRUST_STORE}",
        comment="device client certificates -> principal subject = CN = device id",
        unless=("iam", "workload-identity-pools", "providers", "describe", DEVICE_PROVIDER, *where),
    )


def env_flag(env: Mapping[str, str]) -> str:
    """``--set-env-vars`` with gcloud's alternate delimiter, so values may hold commas."""
    for key, value in env.items():
        if ";" in value or ";" in key:
            raise ConfigError(f"env value {key}={value!r} contains ';'")
    return "^;^" + ";".join(f"{k}={v}" for k, v in env.items())


def _flag(argv: Sequence[str], name: str) -> str | None:
    for arg in argv:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _quote(arg: str) -> str:
    """Shell-quote; an argument with ``${VAR}`` is double-quoted so the variable expands."""
    if "${" in arg:
        return '"' + re.sub(r'(["\\`])', r"\\\1", arg) + '"'
    return shlex.quote(arg)


def render(steps: Sequence[Step]) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# generated by edgefleet.operator.gcp_plan",
        "set -euo pipefail",
        "",
    ]
    for step in steps:
        if step.comment:
            lines.append(f"# {step.comment}")
        command = " ".join(_quote(a) for a in step.argv)
        if step.capture:
            lines.append(f'{step.capture}="$({command})"')
        elif step.unless:
            check = " ".join(_quote(a) for a in step.unless)
            lines.append(f"{check} >/dev/null 2>&1 || {command}")
        else:
            lines.append(command)
    return "\n".join(lines) + "\n"


def stage(root: Path, out: Path) -> None:
    """Function source dir (main.py, requirements + the edgefleet wheel) and source tarball."""
    from edgefleet.packaging import wheelhouse

    functions = out / "functions"
    functions.mkdir(parents=True, exist_ok=True)
    wheel = wheelhouse.build_project_wheel(root, functions)
    (functions / "main.py").write_text((root / "functions" / "main.py").read_text())
    reqs = (root / "functions" / "requirements.txt").read_text().rstrip("\n")
    (functions / "requirements.txt").write_text(f"{reqs}\n./{wheel.name}\n")
    from edgefleet.operator.dashboard import deploy as dashboard

    dashboard.stage(functions, wheel.name, out)

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if "__pycache__" in info.name or info.name.endswith(".pyc") else info

    with tarfile.open(out / "edgefleet-src.tar.gz", "w:gz") as tar:
        for rel in SOURCE_PATHS:
            if (root / rel).exists():
                tar.add(root / rel, arcname=rel, filter=keep)


def trust_store(ca_path: Path) -> str:
    """The X.509 provider's trust-store config (YAML) trusting the CA certificates in
    ``ca_path`` only; refuses a file that holds no CA certificate."""
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(ca_path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(
            f"no device CA at {ca_path}: create the CA that issues device certificates "
            "(CN = device id; docs/operations.md) or pass --device-ca"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"{ca_path} holds no PEM certificate: {exc}") from None
    for cert in certs:
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca:
            raise ConfigError(
                f"{ca_path}: {cert.subject.rfc4514_string()} is not a CA certificate "
                "(basicConstraints CA:TRUE): give the device CA, not a device certificate"
            )
    from cryptography.hazmat.primitives.serialization import Encoding

    lines = ["trustStore:", "  trustAnchors:"]
    for cert in certs:
        lines.append("  - pemCertificate: |")
        pem = cert.public_bytes(Encoding.PEM).decode()
        lines.extend(f"      {line}" for line in pem.splitlines())
    return "\n".join(lines) + "\n"


def read_devices(inline: str, path: str | None) -> tuple[str, ...]:
    """Device ids from ``--devices a,b`` and ``--devices-file F`` (one per line, # comments)."""
    ids = [v.strip() for v in inline.split(",") if v.strip()]
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"--devices-file {path}: {exc.strerror or exc}") from None
        ids += [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return tuple(i for i in ids if i)


def config_from(args: argparse.Namespace) -> GcpConfig:
    def split(value: str) -> tuple[str, ...]:
        return tuple(v.strip() for v in value.split(",") if v.strip())

    return GcpConfig(
        project=args.project,
        region=args.region,
        deploy_bucket=args.deploy_bucket,
        model_bucket=args.model_bucket,
        build_bucket=args.build_bucket,
        repository=args.repository,
        channels=split(args.channels),
        arches=split(args.arches),
        build_arches=split(args.build_arches),
        signing_secret=args.signing_secret,
        signing_key=args.signing_key,
        stage_dir=args.stage_dir,
        device_ca=args.device_ca,
        devices=read_devices(args.devices, args.devices_file),
        mqtt_url=args.mqtt_url,
    )


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    d = GcpConfig(project="placeholder-project")
    parser = argparse.ArgumentParser(prog="deploy-gcp.sh", description="Deploy edgefleet to GCP.")
    parser.add_argument(
        "command", nargs="?", default="deploy", choices=("deploy", "stage", "trust-store")
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--project", default=env.get("PROJECT") or env.get("GOOGLE_CLOUD_PROJECT", "")
    )
    parser.add_argument("--region", default=env.get("REGION", d.region))
    parser.add_argument("--deploy-bucket", default=env.get("DEPLOY_BUCKET", ""))
    parser.add_argument("--model-bucket", default=env.get("MODEL_BUCKET", ""))
    parser.add_argument("--build-bucket", default=env.get("BUILD_BUCKET", ""))
    parser.add_argument("--repository", default=env.get("REPOSITORY", d.repository))
    parser.add_argument("--channels", default=env.get("CHANNELS", ",".join(d.channels)))
    parser.add_argument("--arches", default=env.get("ARCHES", ",".join(d.arches)))
    parser.add_argument("--build-arches", default=env.get("BUILD_ARCHES", ",".join(d.build_arches)))
    parser.add_argument("--signing-secret", default=env.get("SIGNING_SECRET", d.signing_secret))
    parser.add_argument("--signing-key", default=env.get("SIGNING_KEY_FILE", d.signing_key))
    parser.add_argument("--stage-dir", default=env.get("STAGE_DIR", d.stage_dir))
    parser.add_argument("--device-ca", default=env.get("DEVICE_CA", d.device_ca))
    parser.add_argument("--devices", default=env.get("DEVICES", ""), help="device ids a,b,…")
    parser.add_argument("--devices-file", default=env.get("DEVICES_FILE"), help="one id a line")
    parser.add_argument("--ca", help="trust-store: the device CA (PEM)")
    parser.add_argument("--out", help="stage: output directory; trust-store: output file")
    parser.add_argument(
        "--mqtt-url",
        default=env.get("MQTT_URL", ""),
        help="wake-up broker (mqtts://USER:PASSWORD@HOST:8883) tag_monitor publishes to",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "stage":
            from edgefleet.packaging.wheelhouse import find_project_root

            stage(find_project_root(env), Path(args.out or args.stage_dir))
            return 0
        if args.command == "trust-store":
            out = Path(args.out or f"{args.stage_dir}/{TRUST_STORE}")
            text = trust_store(Path(args.ca or args.device_ca))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            return 0
        if not args.project:
            raise ConfigError("no project: pass --project or set PROJECT")
        config = config_from(args)
        script = render(plan(config))
        if args.dry_run:
            sys.stdout.write(script)
            return 0
        trust_store(Path(config.device_ca))  # fail before anything is created
        with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
            f.write(script)
        print(f"edgefleet: deploying to {args.project} (plan: {f.name})", file=sys.stderr)
        return subprocess.run(["bash", "-euo", "pipefail", f.name], check=False).returncode
    except EdgefleetError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

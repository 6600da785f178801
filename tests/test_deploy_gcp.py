"""scripts/deploy-gcp.sh cannot run here: the generated commands are checked instead."""

from __future__ import annotations

import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from edgefleet.core.errors import ConfigError, InvalidInput
from edgefleet.operator import gcp_plan
from edgefleet.operator.gcp_plan import GcpConfig, Step

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "deploy-gcp.sh"
P = "acme-fleet"


def sa(name: str) -> str:
    return f"serviceAccount:{name}@{P}.iam.gserviceaccount.com"


DEVICES = ("pi-0001", "pi-0002")
POOL = (
    "iam.googleapis.com/projects/${PROJECT_NUMBER}/locations/global/"
    "workloadIdentityPools/edgefleet-devices"
)
ALL_DEVICES = f"principalSet://{POOL}/*"


def device(device_id: str) -> str:
    return f"principal://{POOL}/subject/{device_id}"


@pytest.fixture(scope="module")
def steps() -> list[Step]:
    return gcp_plan.plan(GcpConfig(project=P, region="europe-west1", devices=DEVICES))


def bindings(steps: list[Step]) -> set[tuple[str, str, str, str]]:
    """(resource kind, resource, member, role) of every IAM binding in the plan."""
    out = set()
    for step in steps:
        argv = step.argv
        if "add-iam-policy-binding" not in argv or step.role is None or step.member is None:
            continue
        i = argv.index("add-iam-policy-binding")
        out.add((" ".join(argv[1:i]), argv[i + 1], step.member, step.role))
    return out


def test_no_primitive_or_admin_roles(steps: list[Step]) -> None:
    roles = {s.role for s in steps if s.role}
    assert roles, "the plan grants no roles at all"
    assert not roles & gcp_plan.PRIMITIVE_ROLES
    assert not any(r.endswith(".admin") or r == "roles/iam.serviceAccountAdmin" for r in roles)


def test_each_identity_gets_exactly_its_bindings(steps: list[Step]) -> None:
    deploy, models, build = (f"gs://{P}-edgefleet-{x}" for x in ("deploy", "models", "build"))
    status_role = f"projects/{P}/roles/edgefleetDeviceStatusWriter"
    repo = "artifacts repositories"
    expected = {
        ("storage buckets", deploy, sa("edgefleet-tag-monitor"), "roles/storage.objectAdmin"),
        ("storage buckets", deploy, ALL_DEVICES, "roles/storage.objectViewer"),
        ("storage buckets", deploy, device("pi-0001"), status_role),
        ("storage buckets", deploy, device("pi-0002"), status_role),
        ("storage buckets", models, sa("edgefleet-builder"), "roles/storage.objectViewer"),
        ("storage buckets", build, sa("edgefleet-builder"), "roles/storage.objectViewer"),
        (repo, "edgefleet", sa("edgefleet-tag-monitor"), "roles/artifactregistry.reader"),
        (repo, "edgefleet", sa("edgefleet-builder"), "roles/artifactregistry.writer"),
        (repo, "edgefleet", ALL_DEVICES, "roles/artifactregistry.reader"),
        (repo, "edgefleet-upstream", sa("edgefleet-builder"), "roles/artifactregistry.reader"),
        ("pubsub topics", "edge-inference-results", ALL_DEVICES, "roles/pubsub.publisher"),
        (
            "iam service-accounts",
            f"edgefleet-builder@{P}.iam.gserviceaccount.com",
            sa("edgefleet-model-done"),
            "roles/iam.serviceAccountUser",
        ),
        ("projects", P, sa("edgefleet-model-done"), "roles/cloudbuild.builds.editor"),
        ("projects", P, sa("edgefleet-builder"), "roles/logging.logWriter"),
        ("projects", P, sa("edgefleet-trigger"), "roles/eventarc.eventReceiver"),
        ("projects", P, "serviceAccount:${GCS_AGENT}", "roles/pubsub.publisher"),
        (
            "secrets",
            "edgefleet-signing-key",
            sa("edgefleet-tag-monitor"),
            "roles/secretmanager.secretAccessor",
        ),
        ("run services", "tag-monitor", sa("edgefleet-trigger"), "roles/run.invoker"),
        ("run services", "model-done-watcher", sa("edgefleet-trigger"), "roles/run.invoker"),
        # The dashboard: read-only, reachable only through IAP.
        ("storage buckets", deploy, sa("edgefleet-dashboard"), "roles/storage.objectViewer"),
        (
            "artifacts repositories",
            "edgefleet",
            sa("edgefleet-dashboard"),
            "roles/artifactregistry.reader",
        ),
        (
            "run services",
            "edgefleet-dashboard",
            "serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-iap.iam.gserviceaccount.com",
            "roles/run.invoker",
        ),
        (
            "iap web",
            "--resource-type=cloud-run",
            "${DASHBOARD_MEMBERS:?set DASHBOARD_MEMBERS, e.g. group:ops@example.com}",
            "roles/iap.httpsResourceAccessor",
        ),
        # rollout_controller (docs/rollouts.md): its own account, the only one that moves tags
        ("storage buckets", deploy, sa("edgefleet-rollouts"), "roles/storage.objectAdmin"),
        (
            "artifacts repositories",
            "edgefleet",
            sa("edgefleet-rollouts"),
            "roles/artifactregistry.writer",
        ),
        (
            "secrets",
            "edgefleet-signing-key",
            sa("edgefleet-rollouts"),
            "roles/secretmanager.secretAccessor",
        ),
        ("run services", "rollout-controller", sa("edgefleet-trigger"), "roles/run.invoker"),
        # resign_sets runs as tag_monitor (the account that signs sets)
        ("run services", "resign-sets", sa("edgefleet-trigger"), "roles/run.invoker"),
    }
    assert bindings(steps) == expected


def test_the_two_functions_run_as_separate_least_privilege_accounts(steps: list[Step]) -> None:
    """tag_monitor cannot start builds or act as the builder; model_done_watcher cannot
    touch the deploy bucket, the repository or the signing key."""
    deploys = {s.argv[3]: s.argv for s in steps if s.argv[1:3] == ("functions", "deploy")}
    accounts = {fn: gcp_plan._flag(argv, "--service-account") for fn, argv in deploys.items()}
    assert accounts.pop("rollout-controller") == f"edgefleet-rollouts@{P}.iam.gserviceaccount.com"
    assert accounts.pop("resign-sets") == f"edgefleet-tag-monitor@{P}.iam.gserviceaccount.com"
    assert accounts == {
        "tag-monitor": f"edgefleet-tag-monitor@{P}.iam.gserviceaccount.com",
        "model-done-watcher": f"edgefleet-model-done@{P}.iam.gserviceaccount.com",
    }
    granted: dict[str, set[str]] = {}
    for kind, resource, member, role in bindings(steps):
        granted.setdefault(member, set()).add(f"{role} on {kind} {resource}")
    assert granted[sa("edgefleet-model-done")] == {
        f"roles/iam.serviceAccountUser on iam service-accounts "
        f"edgefleet-builder@{P}.iam.gserviceaccount.com",
        f"roles/cloudbuild.builds.editor on projects {P}",
    }
    assert not any("cloudbuild" in g or "serviceAccountUser" in g
                   for g in granted[sa("edgefleet-tag-monitor")])  # fmt: skip


def test_each_device_may_write_only_its_own_status(steps: list[Step]) -> None:
    """One principal per device (its certificate's CN), bound to exactly its own
    status object; the pool as a whole may only read sets/."""
    objects = f"projects/_/buckets/{P}-edgefleet-deploy/objects/"
    status_role = f"projects/{P}/roles/edgefleetDeviceStatusWriter"
    writes = [s for s in steps if s.role == status_role]
    assert {s.member: gcp_plan._flag(s.argv, "--condition") for s in writes} == {
        device(d): f'expression=resource.name == "{objects}status/{d}.json",title=status-{d}'
        for d in DEVICES
    }
    [read] = [s for s in steps if s.member == ALL_DEVICES and "storage" in s.argv]
    assert read.role == "roles/storage.objectViewer"
    assert f'startsWith("{objects}sets/")' in (gcp_plan._flag(read.argv, "--condition") or "")
    role = next(s for s in steps if "roles" in s.argv and "create" in s.argv)
    assert gcp_plan._flag(role.argv, "--permissions") == (
        "storage.objects.create,storage.objects.delete"
    )
    provider = next(s for s in steps if "create-x509" in s.argv)
    assert "--attribute-mapping=google.subject=assertion.subject.dn.cn" in provider.argv
    assert not any(s.argv[1:4] == ("iam", "service-accounts", "keys") for s in steps)


def test_cloud_build_step_images_are_pinned_by_digest(steps: list[Step]) -> None:
    captured = {s.capture: s.argv for s in steps if s.capture}
    for _, digest_var, image in gcp_plan.STEP_IMAGES:
        assert captured[digest_var][1:5] == ("artifacts", "docker", "images", "describe")
        assert captured[digest_var][5] == f"${{UPSTREAM}}/{image}"
    upstream = next(s for s in steps if "edgefleet-upstream" in s.argv and "create" in s.argv)
    assert "--mode=remote-repository" in upstream.argv
    deploys = {s.argv[3]: s.argv for s in steps if s.argv[1:3] == ("functions", "deploy")}
    watcher = deploys["model-done-watcher"]
    value = gcp_plan._flag(watcher, "--set-env-vars") or ""
    env = dict(kv.split("=", 1) for kv in value[3:].split(";"))
    assert env["CLOUDBUILD_PYTHON_IMAGE"] == "${UPSTREAM}/library/python@${PYTHON_DIGEST}"
    # As the script expands them, CloudBuildBuilder accepts them (and only pinned refs).
    from edgefleet.packaging.cloudbuild import CloudBuildConfig

    expanded = {
        k: v.replace("${UPSTREAM}", "registry.example.internal/p/up")
        .replace("${IMAGE_REPOSITORY}", "registry.example.internal/p/r")
        .replace("${PYTHON_DIGEST}", "sha256:" + "1" * 64)
        .replace("${DOCKER_DIGEST}", "sha256:" + "2" * 64)
        .replace("${BINFMT_DIGEST}", "sha256:" + "3" * 64)
        for k, v in env.items()
    }
    config = CloudBuildConfig.from_env(expanded)
    assert config.docker_image == "registry.example.internal/p/up/library/docker@sha256:" + "2" * 64


def test_functions_are_gen2_with_eventarc_triggers(steps: list[Step]) -> None:
    deploys = {s.argv[3]: s.argv for s in steps if s.argv[1:3] == ("functions", "deploy")}
    rollouts = deploys.pop("rollout-controller")
    assert (
        "--entry-point=rollout_controller" in rollouts
        and "--trigger-topic=rollout-tick" in rollouts
    )
    assert f"--service-account=edgefleet-rollouts@{P}.iam.gserviceaccount.com" in rollouts
    assert any(s.argv[1:4] == ("scheduler", "jobs", "create") and "--topic=rollout-tick" in s.argv
               for s in steps)  # fmt: skip
    resign = deploys.pop("resign-sets")
    assert "--entry-point=resign_sets" in resign and "--trigger-topic=resign-tick" in resign
    assert f"--service-account=edgefleet-tag-monitor@{P}.iam.gserviceaccount.com" in resign
    assert any(s.argv[1:4] == ("scheduler", "jobs", "create") and "--topic=resign-tick" in s.argv
               for s in steps)  # fmt: skip
    assert set(deploys) == {"tag-monitor", "model-done-watcher"}
    for argv in deploys.values():
        for flag in (
            "--gen2",
            "--retry",
            "--no-allow-unauthenticated",
            "--ingress-settings=internal-only",
            "--runtime=python311",
            f"--trigger-service-account=edgefleet-trigger@{P}.iam.gserviceaccount.com",
        ):
            assert flag in argv
    tag = deploys["tag-monitor"]
    assert "--entry-point=tag_monitor" in tag and "--trigger-topic=gcr" in tag
    watcher = deploys["model-done-watcher"]
    assert "--entry-point=model_done_watcher" in watcher
    assert "--trigger-event-filters=type=google.cloud.storage.object.v1.finalized" in watcher
    assert f"--trigger-event-filters=bucket={P}-edgefleet-models" in watcher

    def env(argv: tuple[str, ...]) -> dict[str, str]:
        value = gcp_plan._flag(argv, "--set-env-vars") or ""
        assert value.startswith("^;^")
        return dict(kv.split("=", 1) for kv in value[3:].split(";"))

    assert env(tag) == {
        "DEPLOY_BUCKET": f"{P}-edgefleet-deploy",
        "CHANNELS": "latest,alpha,beta,stable",
        "ARCHES": "x86_64,aarch64,armv7l",
        "SIGNING_KEY": f"projects/{P}/secrets/edgefleet-signing-key/versions/latest",
        "ALLOWED_REGISTRIES": "${IMAGE_REPOSITORY}",
    }
    wenv = env(watcher)
    assert wenv["BUILDER"] == "cloudbuild" and wenv["IMAGE_REPOSITORY"] == "${IMAGE_REPOSITORY}"
    assert wenv["CLOUDBUILD_SERVICE_ACCOUNT"] == f"edgefleet-builder@{P}.iam.gserviceaccount.com"
    assert wenv["CLOUDBUILD_SOURCE"] == f"gs://{P}-edgefleet-build/source/edgefleet-src.tar.gz"


def _ca_and_device_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A real CA and a device certificate it issued (CN = device id), as PEM files."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def cert(subject: str, issuer: str, key, signer, ca: bool):  # type: ignore[no-untyped-def]
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )

    ca_key, dev_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = cert("edgefleet device CA", "edgefleet device CA", ca_key, ca_key, True)
    dev = cert("pi-0001", "edgefleet device CA", dev_key, ca_key, False)
    paths = tmp_path / "ca.pem", tmp_path / "pi-0001.pem"
    for path, c in zip(paths, (ca, dev), strict=True):
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    return paths


def test_trust_store_trusts_only_the_device_ca(tmp_path: Path) -> None:
    import yaml
    from cryptography import x509

    ca, device_cert = _ca_and_device_cert(tmp_path)
    out = tmp_path / "store.yaml"
    assert gcp_plan.main(["trust-store", f"--ca={ca}", f"--out={out}"], env={}) == 0
    [anchor] = yaml.safe_load(out.read_text())["trustStore"]["trustAnchors"]
    assert x509.load_pem_x509_certificate(anchor["pemCertificate"].encode()) == (
        x509.load_pem_x509_certificate(ca.read_bytes())
    )
    with pytest.raises(ConfigError, match="not a CA certificate"):
        gcp_plan.trust_store(device_cert)
    with pytest.raises(ConfigError, match="no device CA"):
        gcp_plan.trust_store(tmp_path / "missing.pem")


def test_devices_come_from_flags_and_a_file_and_are_validated(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.txt"
    fleet.write_text("# line comments\npi-0003\n\npi-0004  # the lab one\n")
    assert gcp_plan.read_devices("pi-0001, pi-0002", str(fleet)) == (
        "pi-0001",
        "pi-0002",
        "pi-0003",
        "pi-0004",
    )
    with pytest.raises(InvalidInput):
        gcp_plan.plan(GcpConfig(project=P, devices=("pi 1",)))
    with pytest.raises(ConfigError, match="twice"):
        gcp_plan.plan(GcpConfig(project=P, devices=("pi-1", "pi-1")))


def test_resources_and_idempotent_creates(steps: list[Step]) -> None:
    for step in steps:
        if "create" in step.argv or "generate" in step.argv:
            assert step.unless, f"not idempotent: {' '.join(step.argv)}"
    created = {" ".join(s.argv[1:5]) for s in steps if "create" in s.argv}
    for expected in (
        f"storage buckets create gs://{P}-edgefleet-deploy",
        f"storage buckets create gs://{P}-edgefleet-models",
        "pubsub topics create gcr",
        "artifacts repositories create edgefleet",
        "secrets create edgefleet-signing-key --replication-policy=automatic",
    ):
        assert expected in created
    bucket_creates = [s for s in steps if s.argv[1:4] == ("storage", "buckets", "create")]
    for step in bucket_creates:
        assert "--uniform-bucket-level-access" in step.argv  # needed for IAM conditions
        assert "--public-access-prevention" in step.argv


def test_dry_run_prints_a_valid_script_and_calls_nothing(tmp_path: Path) -> None:
    """A gcloud on PATH that records calls: the dry run must not invoke it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "gcloud").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "gcloud").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PROJECT": P}
    done = subprocess.run(
        [str(SCRIPT), "--dry-run", "--region", "us-central1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not calls.exists()
    script = done.stdout
    assert script.startswith("#!/usr/bin/env bash")
    assert "--location=us-central1" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    for host in ("gcr.io", "docker.io", "quay.io", "ghcr.io", "pkg.dev"):
        assert host not in script


def test_bad_settings_fail_in_one_line() -> None:
    done = subprocess.run(
        [str(SCRIPT), "--dry-run", "--project", "Bad_Project"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "edgefleet: invalid project id 'Bad_Project': set --project / PROJECT"
    )
    with pytest.raises(InvalidInput):
        gcp_plan.plan(GcpConfig(project=P, channels=("all",)))
    with pytest.raises(ConfigError):
        gcp_plan.plan(GcpConfig(project=P, region="mars"))


def test_stage_packs_function_source_and_build_source(tmp_path: Path) -> None:
    gcp_plan.stage(REPO, tmp_path)
    fn = tmp_path / "functions"
    wheels = list(fn.glob("edgefleet-*.whl"))
    assert len(wheels) == 1
    assert (fn / "main.py").read_text() == (REPO / "functions" / "main.py").read_text()
    assert (fn / "requirements.txt").read_text().splitlines()[-1] == f"./{wheels[0].name}"
    # The dashboard's Cloud Run source: the same wheel with its extra, templates inside.
    dash = tmp_path / "dashboard"
    assert (dash / "requirements.txt").read_text() == f"./{wheels[0].name}[dashboard]\n"
    assert "edgefleet dashboard" in (dash / "Procfile").read_text()
    with zipfile.ZipFile(dash / wheels[0].name) as whl:
        packed = set(whl.namelist())
    for asset in ("templates/fleet.html", "static/dashboard.js", "static/dashboard.css"):
        assert f"edgefleet/operator/dashboard/{asset}" in packed
    with tarfile.open(tmp_path / "edgefleet-src.tar.gz") as tar:
        names = set(tar.getnames())
    for member in (
        "pyproject.toml",
        "model_server/Containerfile",
        "edgefleet/packaging/context.py",
        "functions/main.py",
    ):
        assert member in names
    assert not any("__pycache__" in n for n in names)

"""scripts/deploy-gcp.sh cannot run here: the generated commands are checked instead."""

from __future__ import annotations

import os
import subprocess
import tarfile
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


@pytest.fixture(scope="module")
def steps() -> list[Step]:
    return gcp_plan.plan(GcpConfig(project=P, region="europe-west1"))


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
    expected = {
        ("storage buckets", deploy, sa("edgefleet-fn"), "roles/storage.objectAdmin"),
        ("storage buckets", deploy, sa("edgefleet-device"), "roles/storage.objectViewer"),
        (
            "storage buckets",
            deploy,
            sa("edgefleet-device"),
            f"projects/{P}/roles/edgefleetDeviceStatusWriter",
        ),
        ("storage buckets", models, sa("edgefleet-builder"), "roles/storage.objectViewer"),
        ("storage buckets", build, sa("edgefleet-builder"), "roles/storage.objectViewer"),
        (
            "artifacts repositories",
            "edgefleet",
            sa("edgefleet-fn"),
            "roles/artifactregistry.reader",
        ),
        (
            "artifacts repositories",
            "edgefleet",
            sa("edgefleet-builder"),
            "roles/artifactregistry.writer",
        ),
        (
            "artifacts repositories",
            "edgefleet",
            sa("edgefleet-device"),
            "roles/artifactregistry.reader",
        ),
        (
            "pubsub topics",
            "edge-inference-results",
            sa("edgefleet-device"),
            "roles/pubsub.publisher",
        ),
        (
            "iam service-accounts",
            f"edgefleet-builder@{P}.iam.gserviceaccount.com",
            sa("edgefleet-fn"),
            "roles/iam.serviceAccountUser",
        ),
        ("projects", P, sa("edgefleet-fn"), "roles/cloudbuild.builds.editor"),
        ("projects", P, sa("edgefleet-builder"), "roles/logging.logWriter"),
        ("projects", P, sa("edgefleet-trigger"), "roles/eventarc.eventReceiver"),
        ("projects", P, "serviceAccount:${GCS_AGENT}", "roles/pubsub.publisher"),
        (
            "secrets",
            "edgefleet-signing-key",
            sa("edgefleet-fn"),
            "roles/secretmanager.secretAccessor",
        ),
        ("run services", "tag-monitor", sa("edgefleet-trigger"), "roles/run.invoker"),
        ("run services", "model-done-watcher", sa("edgefleet-trigger"), "roles/run.invoker"),
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
    }
    assert bindings(steps) == expected


def test_devices_read_only_sets_and_write_only_status(steps: list[Step]) -> None:
    device = [s for s in steps if s.member == sa("edgefleet-device") and "storage" in s.argv]
    assert len(device) == 2
    conditions = {s.role: gcp_plan._flag(s.argv, "--condition") for s in device}
    bucket = f"projects/_/buckets/{P}-edgefleet-deploy/objects/"
    assert f'startsWith("{bucket}sets/")' in conditions["roles/storage.objectViewer"]
    status_role = f"projects/{P}/roles/edgefleetDeviceStatusWriter"
    assert f'startsWith("{bucket}status/")' in conditions[status_role]
    role = next(s for s in steps if "roles" in s.argv and "create" in s.argv)
    assert gcp_plan._flag(role.argv, "--permissions") == (
        "storage.objects.create,storage.objects.delete"
    )


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
    assert set(deploys) == {"tag-monitor", "model-done-watcher"}
    for argv in deploys.values():
        for flag in (
            "--gen2",
            "--retry",
            "--no-allow-unauthenticated",
            "--ingress-settings=internal-only",
            "--runtime=python311",
            f"--service-account=edgefleet-fn@{P}.iam.gserviceaccount.com",
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
    # The watcher's env is what CloudBuildBuilder reads: it must accept it.
    from edgefleet.packaging.cloudbuild import CloudBuildConfig

    CloudBuildConfig.from_env({**wenv, "IMAGE_REPOSITORY": "registry.example.internal/p/r"})


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

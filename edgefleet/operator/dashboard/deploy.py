"""The dashboard on GCP: Cloud Run behind Identity-Aware Proxy, as a read-only identity.

Called from :func:`edgefleet.operator.gcp_plan.plan` (the deployment's commands) and
:func:`edgefleet.operator.gcp_plan.stage` (its sources). The service runs as its own
service account with read access to the deploy bucket and the image repository only
(``roles/storage.objectViewer``, ``roles/artifactregistry.reader``): it can show the fleet,
never change it. Cloud Run's own IAP (``--iap``) lets in only ``${DASHBOARD_MEMBERS}``
(e.g. ``group:fleet-operators@example.com``), and only IAP's service agent may invoke the
service, so the URL is useless without a Google identity on that list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SERVICE = "edgefleet-dashboard"
DASHBOARD_SA = "edgefleet-dashboard"
ENTRYPOINT = "web: edgefleet dashboard --host 0.0.0.0 --port $PORT --refresh-seconds 15\n"


def stage(functions_dir: Path, wheel_name: str, out: Path) -> None:
    """``OUT/dashboard``: the edgefleet wheel with its dashboard extra and a Procfile, for
    ``gcloud run deploy --source`` (buildpacks)."""
    dashboard = out / "dashboard"
    dashboard.mkdir(parents=True, exist_ok=True)
    (dashboard / wheel_name).write_bytes((functions_dir / wheel_name).read_bytes())
    (dashboard / "requirements.txt").write_text(f"./{wheel_name}[dashboard]\n")
    (dashboard / "Procfile").write_text(ENTRYPOINT)


def plan(p: Any, c: Any) -> None:
    """Append the dashboard's steps to the plan ``p`` for config ``c``."""
    sa = p.service_account(DASHBOARD_SA, "edgefleet dashboard (read-only)")
    p.bucket_binding(
        c.deploy_bucket, f"serviceAccount:{sa}", "roles/storage.objectViewer",
        comment="the dashboard reads status/ and rollouts/; it writes nothing",
    )  # fmt: skip
    p.repository_binding(
        c.repository, c.region, f"serviceAccount:{sa}", "roles/artifactregistry.reader",
        comment="the dashboard reads image version labels from this repository only",
    )  # fmt: skip
    env = f"DEPLOY_BUCKET={c.deploy_bucket},EDGEFLEET_REGISTRY=${{IMAGE_REPOSITORY}}"
    p.gcloud(
        "beta", "run", "deploy", SERVICE, f"--source={c.stage_dir}/dashboard",
        f"--region={c.region}", f"--service-account={sa}", "--no-allow-unauthenticated",
        "--iap", "--min-instances=0", "--max-instances=2", "--memory=512Mi",
        f"--set-env-vars={env}",
        comment="the dashboard on Cloud Run, behind Identity-Aware Proxy",
    )  # fmt: skip
    p.gcloud(
        "run", "services", "add-iam-policy-binding", SERVICE, f"--region={c.region}",
        "--member=serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-iap.iam.gserviceaccount.com",
        "--role=roles/run.invoker",
        comment="only IAP may invoke the dashboard",
    )  # fmt: skip
    p.gcloud(
        "iap", "web", "add-iam-policy-binding", "--resource-type=cloud-run",
        f"--service={SERVICE}", f"--region={c.region}",
        "--member=${DASHBOARD_MEMBERS:?set DASHBOARD_MEMBERS, e.g. group:ops@example.com}",
        "--role=roles/iap.httpsResourceAccessor",
        comment="who may open the dashboard (through IAP)",
    )  # fmt: skip

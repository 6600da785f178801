"""Stand-in for the Cloud Build REST API's ``projects.locations.builds.create``.

Cloud Build cannot run here. This loopback HTTP server accepts what the real endpoint
accepts and answers what it answers, following the API reference
(cloud.google.com/build/docs/api/reference/rest/v1/projects.locations.builds/create and
the ``Build`` resource): ``POST /v1/projects/P/locations/R/builds`` with a JSON ``Build``
returns a long-running ``Operation`` whose metadata holds the queued build; a build
without steps, a step without ``name``, a ``waitFor`` naming an unknown step id, or a
user-specified ``serviceAccount`` without ``options.logging`` CLOUD_LOGGING_ONLY/NONE
(or a ``logsBucket``) is refused with 400 ``INVALID_ARGUMENT``, as the service does.
It records every request (path, headers, body) so a test can see what was submitted;
it runs no build.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_CREATE = re.compile(r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/builds$")


@dataclass
class Submitted:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def _problem(build: Any) -> str:
    """Why the real service would refuse ``build`` with INVALID_ARGUMENT ("" = accepted)."""
    if not isinstance(build, dict):
        return "request body must be a Build object"
    steps = build.get("steps")
    if not isinstance(steps, list) or not steps:
        return "invalid build: no steps"
    ids = [s.get("id") for s in steps if isinstance(s, dict) and s.get("id")]
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or not step.get("name"):
            return f"invalid .steps[{i}]: name is required"
        for dep in step.get("waitFor", []):
            if dep != "-" and dep not in ids:
                return f"invalid .steps[{i}]: step depends on unknown step {dep!r}"
    if build.get("serviceAccount"):
        logging = (build.get("options") or {}).get("logging")
        if logging not in ("CLOUD_LOGGING_ONLY", "NONE") and not build.get("logsBucket"):
            return "build.service_account requires logs_bucket or CLOUD_LOGGING_ONLY / NONE"
    return ""


@dataclass
class CloudBuildApi:
    """``with CloudBuildApi() as api: …`` serves on ``api.host`` (127.0.0.1:PORT)."""

    submitted: list[Submitted] = field(default_factory=list)

    def __post_init__(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                match = _CREATE.match(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    build = json.loads(raw)
                except ValueError:
                    build = None
                if match is None:
                    return self._answer(404, _status(404, "NOT_FOUND", "no such method"))
                api.submitted.append(Submitted(self.path, dict(self.headers), build))
                problem = _problem(build)
                if problem:
                    return self._answer(400, _status(400, "INVALID_ARGUMENT", problem))
                build_id = str(uuid.uuid4())
                project, region = match["project"], match["region"]
                return self._answer(
                    200,
                    {
                        "name": f"projects/{project}/locations/{region}/operations/{build_id}",
                        "metadata": {
                            "@type": "type.googleapis.com/"
                            "google.devtools.cloudbuild.v1.BuildOperationMetadata",
                            "build": {
                                **build,
                                "id": build_id,
                                "projectId": project,
                                "status": "QUEUED",
                            },
                        },
                    },
                )

            def _answer(self, status: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> CloudBuildApi:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _status(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}

"""The Flask app: a factory, three blueprints (pages, ``/api``, ``/charts``), strict
security headers. Read-only: every route is a GET and nothing reaches the bucket from a
request (the service's background refresh does).

Device reports are untrusted: pages never put report text into HTML on the server (the
page script renders API answers with ``textContent``), the Content-Security-Policy allows
only this app's own script and styles (no inline script), and device ids in URLs are
checked against the id rule before use.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app, jsonify, render_template, request

from edgefleet.core import layout
from edgefleet.core.errors import InvalidInput
from edgefleet.operator.dashboard import data, svg
from edgefleet.operator.dashboard.service import FleetService

VIEWS = (
    ("fleet", "Fleet", "/"),
    ("channels", "Channels", "/channels"),
    ("rollouts", "Rollouts", "/rollouts"),
    ("models", "Models", "/models"),
)
CHARTS = {
    "requestRate": ("Requests per second", "req/s"),
    "errorRate": ("Error rate", "ratio"),
    "latencyP50Ms": ("Latency p50", "ms"),
    "latencyP95Ms": ("Latency p95", "ms"),
    "confidenceMean": ("Mean top-1 score", "score"),
    "drift": ("Drift score", "score"),
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

pages = Blueprint("pages", __name__)
api = Blueprint("api", __name__)
charts = Blueprint("charts", __name__)


def create_app(
    service: FleetService,
    *,
    refresh_seconds: float = 5.0,
    allowed_hosts: frozenset[str] | None = None,
) -> Flask:
    """The dashboard over ``service`` (the caller starts its refresh); the page polls the
    API every ``refresh_seconds``. ``allowed_hosts``: host names the ``Host`` header may
    name (None: any), so a page elsewhere cannot read a loopback dashboard through DNS
    rebinding."""
    app = Flask(__name__)
    app.config.update(
        FLEET=service,
        REFRESH_SECONDS=refresh_seconds,
        ALLOWED_HOSTS=allowed_hosts,
        JSON_SORT_KEYS=False,
    )
    app.before_request(_check_host)
    app.register_blueprint(pages)
    app.register_blueprint(api, url_prefix="/api")
    app.register_blueprint(charts, url_prefix="/charts")
    app.after_request(_headers)
    app.register_error_handler(404, _not_found)
    return app


def _fleet() -> FleetService:
    return current_app.config["FLEET"]


def _check_host() -> Any:
    allowed = current_app.config["ALLOWED_HOSTS"]
    if allowed is not None and _hostname(request.host or "") not in allowed:
        return jsonify(error="unknown Host: open the dashboard by its own address"), 421
    return None


def _hostname(host: str) -> str:
    """``name:port`` or ``[v6]:port`` -> the name (lower case), without the port."""
    if host.startswith("["):
        return host.split("]", 1)[0].lower() + "]"
    return host.split(":", 1)[0].lower()


def _headers(resp: Response) -> Response:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Frame-Options"] = "DENY"
    if request.path.startswith(("/api/", "/charts/")):
        resp.headers["Cache-Control"] = "no-store"
    return resp


def _not_found(exc: Exception) -> Any:
    if request.path.startswith("/api/"):
        return jsonify(error="not found", path=request.path[:200]), 404
    return render_template("error.html", view="", views=VIEWS, title="Not found"), 404


def _device_id(device_id: str) -> str:
    try:
        return layout.check_device_id(device_id)
    except InvalidInput:
        abort(404)


# -- pages: shells the script fills from /api -------------------------------------------


def _page(view: str, title: str, api_path: str, **extra: Any) -> str:
    return render_template(
        f"{view}.html",
        view=view,
        views=VIEWS,
        title=title,
        api=api_path,
        refresh_ms=int(current_app.config["REFRESH_SECONDS"] * 1000),
        **extra,
    )


@pages.get("/")
def fleet_view() -> str:
    return _page("fleet", "Fleet", "/api/devices")


@pages.get("/devices/<device_id>")
def device_view(device_id: str) -> str:
    device_id = _device_id(device_id)
    return _page("device", f"Device {device_id}", f"/api/devices/{device_id}", device=device_id)


@pages.get("/channels")
def channels_view() -> str:
    return _page("channels", "Channels", "/api/channels")


@pages.get("/rollouts")
def rollouts_view() -> str:
    return _page("rollouts", "Rollouts", "/api/rollouts")


@pages.get("/models")
def models_view() -> str:
    return _page("models", "Models", "/api/models", charts=CHARTS)


# -- /api: JSON ----------------------------------------------------------------------------


def _answer(**body: Any) -> Response:
    return jsonify(status=_fleet().status(), **body)


@api.get("/status")
def api_status() -> Response:
    return _answer()


@api.get("/devices")
def api_devices() -> Response:
    service = _fleet()
    query = data.Query.from_args(request.args)
    page = data.fleet_page(service.rows(), query, service.now(), service.stale_after)
    return _answer(**page)


@api.get("/devices/<device_id>")
def api_device(device_id: str) -> Any:
    service = _fleet()
    device_id = _device_id(device_id)
    row = next((r for r in service.rows() if r.device_id == device_id), None)
    if row is None:
        return jsonify(error=f"no report from device {device_id}"), 404
    history = service.index.history.get(device_id, ())
    return _answer(device=data.device_detail(row, history, service.now(), service.stale_after))


@api.get("/channels")
def api_channels() -> Response:
    service = _fleet()
    return _answer(**data.channels(service.rows(), service.versions()))


@api.get("/rollouts")
def api_rollouts() -> Response:
    service = _fleet()
    rollouts = sorted(service.rollouts.values(), key=lambda r: (r["arch"], r["channel"]))
    return _answer(rollouts=rollouts, unreadable=sorted(service.rollouts.errors().values()))


@api.get("/models")
def api_models() -> Response:
    service = _fleet()
    return _answer(
        models=service.models(),
        charts=[{"metric": k, "title": t, "unit": u} for k, (t, u) in CHARTS.items()],
        samples=len(service.series),
    )


# -- /charts: server-rendered SVG ----------------------------------------------------------


@charts.get("/models/<metric>.svg")
def model_chart(metric: str) -> Response:
    if metric not in CHARTS:
        abort(404)
    title, unit = CHARTS[metric]
    lines: dict[str, list[tuple[float, float]]] = {}
    for sample in list(_fleet().series):
        at = datetime.fromisoformat(sample["at"]).timestamp()
        for m in sample["models"]:
            if m.get(metric) is not None:
                label = f"{m['version'] or m['short']} ({m['short']})"
                lines.setdefault(label, []).append((at, float(m[metric])))
    body = svg.line_chart(f"{title} per version", unit, sorted(lines.items()))
    return Response(body, mimetype="image/svg+xml")

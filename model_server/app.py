"""The HTTP app: ``create_app(config)`` builds a :class:`ModelServer` and returns its Flask app.

Nothing happens at import time. ``ModelServer(config)`` loads the model (failing with one
line when it cannot run here); ``start()`` runs the golden self-test and the telemetry
publisher in background threads; ``close()`` stops them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from edgefleet.core.logs import fields
from model_server.config import ServerConfig
from model_server.drift import DriftMonitor, Reference
from model_server.errors import RequestError
from model_server.metrics import Metrics
from model_server.outbox import Outbox
from model_server.package import ModelPackage, from_dir, from_files
from model_server.predictor import Prediction, Predictor
from model_server.publisher import Publisher, PubsubSender
from model_server.runtime import cpu_count, load_model

log = logging.getLogger(__name__)

IMAGE_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/bmp",
        "image/x-ms-bmp",
        "image/gif",
        "image/webp",
        "application/octet-stream",
    }
)
MAX_TOP_K = 100
_HTTP_KINDS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_package(config: ServerConfig) -> ModelPackage:
    if config.model_dir is not None:
        return from_dir(config.model_dir, config.metadata)
    assert config.model is not None
    return from_files(config.model, config.labels, config.metadata)


def _json(doc: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(doc, ensure_ascii=False), status, mimetype="application/json")


def _error(status: int, kind: str, message: str) -> Response:
    return _json({"error": kind, "message": message}, status)


class SelfTest:
    """Golden inputs from the package's metadata must give their expected top-1 here."""

    def __init__(self) -> None:
        self.state = "pending"
        self.results: list[dict[str, Any]] = []
        self.error = ""

    @property
    def passed(self) -> bool:
        return self.state in ("passed", "skipped")

    def run(self, predictor: Predictor, package: ModelPackage, max_bytes: int) -> None:
        golden = package.metadata.golden
        if not golden:
            self.state = "skipped"
            return
        results, failures = [], []
        for item in golden:
            entry: dict[str, Any] = {"input": item.input, "expected": item.top1}
            try:
                data = package.read_golden(item, max_bytes)
                top = predictor.predict_bytes(data, 1).top1
                entry.update(got=top.index, label=top.label, score=round(top.score, 4))
                entry["ok"] = top.index == item.top1
            except Exception as exc:  # any failure means "not ready"
                entry.update(ok=False, error=str(exc))
            results.append(entry)
            if not entry["ok"]:
                failures.append(entry)
        self.results = results
        if failures:
            self.state = "failed"
            first = failures[0]
            self.error = (
                f"golden {first['input']}: expected top-1 {first['expected']}, "
                f"got {first.get('got', first.get('error'))}"
            )
        else:
            self.state = "passed"

    def report(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"state": self.state, "results": self.results}
        if self.error:
            doc["error"] = self.error
        return doc


class ModelServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.package = resolve_package(config)
        workers = config.workers or cpu_count()
        loaded = load_model(self.package, workers=workers, threads=config.interpreter_threads)
        self.predictor = Predictor(
            loaded, self.package, max_pixels=config.max_pixels, decode_slots=workers
        )
        backend = self.predictor.backend
        self.workers = getattr(backend, "pool_size", workers)
        self.model_sha256 = _sha256(backend.model_path)
        self.metrics = Metrics()
        self.drift = DriftMonitor(
            Reference.parse(self.package.metadata.reference),
            window=config.drift_window,
            min_samples=config.drift_min_samples,
            alpha=config.drift_alpha,
        )
        self.selftest = SelfTest()
        self.outbox: Outbox | None = None
        self.publisher: Publisher | None = None
        if config.telemetry_enabled:
            self.outbox = Outbox(config.outbox_dir, config.outbox_max_messages)
            sender = PubsubSender(
                config.pubsub_project,
                config.pubsub_topic,
                emulator_host=config.pubsub_emulator_host,
                timeout=config.publish_timeout,
                attributes={"device_id": config.device_id, "model": self.package.name},
            )
            self.publisher = Publisher(
                self.outbox,
                sender,
                batch=config.publish_batch,
                interval=config.publish_interval,
                backoff_max=config.backoff_max,
                on_published=self._published,
                on_failure=lambda kind: self.metrics.telemetry_failures.labels(kind).inc(),
            )
        self.version_info = {
            "version": config.container_digest or "unknown",
            "model": self.package.name,
            "model_version": self.package.metadata.version or "unknown",
            "model_file": backend.model_path.name,
            "sha256": self.model_sha256,
            "runtime": backend.runtime,
            "runtime_version": backend.runtime_version,
            "delegate": backend.delegate,
            # absent | broken | no-device | loaded; "not probed" without an Edge TPU model.
            "edgetpu": loaded.edgetpu or "not probed",
            "selected": self.predictor.choice,
            "task": self.predictor.task,
            "labels": len(self.package.labels),
            "device_id": config.device_id,
        }
        self.metrics.model.info({k: str(v) for k, v in self.version_info.items()})
        self.app = self._build_app()
        self._selftest_thread: threading.Thread | None = None

    def _published(self, messages: int) -> None:
        """One acknowledged publish request (a batch) carrying ``messages``."""
        self.metrics.telemetry_batches.inc()
        self.metrics.telemetry_published.inc(messages)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> ModelServer:
        log.info("model loaded", extra=fields(workers=self.workers, **self.version_info))
        if self.outbox is not None:
            log.info(
                "telemetry on",
                extra=fields(
                    outbox=str(self.outbox.path),
                    queued=len(self.outbox),
                    topic=self.config.pubsub_topic,
                    project=self.config.pubsub_project,
                ),
            )
        else:
            log.info("telemetry off: no Pub/Sub project configured (PUBSUB_PROJECT)")
        self._selftest_thread = threading.Thread(
            target=self._run_selftest, name="self-test", daemon=True
        )
        self._selftest_thread.start()
        if self.publisher is not None:
            self.publisher.start()
        return self

    def _run_selftest(self) -> None:
        self.selftest.run(self.predictor, self.package, self.config.max_body_bytes)
        report = self.selftest.report()
        if self.selftest.passed:
            self.metrics.ready.set(1)
            log.info("self-test " + self.selftest.state, extra=fields(self_test=report))
        else:
            log.error("self-test failed: not ready", extra=fields(self_test=report))

    def wait_selftest(self, timeout: float = 30.0) -> str:
        if self._selftest_thread is not None:
            self._selftest_thread.join(timeout)
        return self.selftest.state

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()
        if self.outbox is not None:
            self.outbox.close()
        self.predictor.backend.close()

    # -- request handling --------------------------------------------------------------

    def _top_k(self) -> int:
        raw = request.args.get("top_k")
        if raw is None:
            k = self.config.default_top_k
        else:
            try:
                k = int(raw)
            except ValueError:
                raise RequestError(400, "bad_top_k", "top_k must be an integer") from None
            if k < 1 or k > MAX_TOP_K:
                raise RequestError(400, "bad_top_k", f"top_k must be between 1 and {MAX_TOP_K}")
        n = self.predictor.n_classes
        return min(k, n) if n else k

    def _predict(self) -> Prediction:
        k = self._top_k()
        ctype = request.mimetype
        if ctype == "multipart/form-data":
            upload = request.files.get("image")
            if upload is None:
                raise RequestError(400, "missing_image", "multipart body needs a field 'image'")
            return self.predictor.predict_image(upload.read(), k)
        if ctype in IMAGE_TYPES:
            return self.predictor.predict_image(request.get_data(cache=False), k)
        if ctype == "application/json":
            return self.predictor.predict_features(self._json_body(), k)
        raise RequestError(
            415,
            "unsupported_media_type",
            f"Content-Type {ctype or '(none)'} not accepted: send an image as multipart field "
            "'image' (curl -F image=@x.jpg), a raw body with Content-Type image/jpeg|png|bmp|"
            'gif|webp, or JSON {"features": [...]} for tabular models',
        )

    def _json_body(self) -> bytes:
        """The JSON body, refused with a 413 beyond ``max_json_bytes`` BEFORE it is read
        into memory or parsed (from Content-Length, or while reading a chunked body)."""
        limit = self.config.max_json_bytes
        too_large = RequestError(
            413, "too_large", f"JSON body larger than {limit} bytes: send one feature row"
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        body = request.stream.read(limit + 1)
        if len(body) > limit:
            raise too_large
        return body

    def _record(self, pred: Prediction, total_s: float) -> str:
        top = pred.top1
        self.metrics.predictions.labels(top.label).inc()
        self.metrics.preprocess_latency.observe(pred.preprocess_s)
        self.metrics.inference_latency.observe(pred.inference_s)
        self.drift.observe(top.index, top.score)
        event_id = uuid.uuid4().hex
        if self.outbox is not None:
            body = json.dumps(
                {
                    "id": event_id,
                    "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "device_id": self.config.device_id,
                    "container_digest": self.config.container_digest,
                    "model": self.package.name,
                    "model_version": self.package.metadata.version,
                    "model_sha256": self.model_sha256,
                    "runtime": self.predictor.backend.runtime,
                    "delegate": self.predictor.backend.delegate,
                    "label": top.label,
                    "index": top.index,
                    "score": round(top.score, 6),
                    "latency_ms": round(total_s * 1000, 3),
                    "inference_ms": round(pred.inference_s * 1000, 3),
                },
                ensure_ascii=False,
            ).encode()
            try:
                dropped = self.outbox.put(event_id, body)
            except Exception as exc:  # telemetry must never fail inference
                self.metrics.errors.labels("telemetry_write").inc()
                log.error("telemetry outbox write failed", extra=fields(error=str(exc)))
            else:
                if dropped:
                    self.metrics.telemetry_dropped.inc(dropped)
        return event_id

    def _update_gauges(self) -> dict[str, Any]:
        report = self.drift.snapshot(self.package.labels.get)
        self.metrics.drift_samples.set(report["samples"])
        for test in ("chi2", "ks"):
            if report[test] is not None:
                self.metrics.drift_p_value.labels(test).set(report[test]["p_value"])
        self.metrics.drift_detected.set(1 if report["drift"] else 0)
        if self.outbox is not None:
            self.metrics.outbox_messages.set(len(self.outbox))
        return report

    def _build_app(self) -> Flask:
        # Explicit paths: Flask's package lookup trips over editable-install namespace paths.
        here = str(Path(__file__).parent)
        app = Flask("model_server", root_path=here, instance_path=here)
        app.config["MAX_CONTENT_LENGTH"] = self.config.max_body_bytes
        app.config["MAX_FORM_PARTS"] = 16
        app.url_map.strict_slashes = False
        metrics = self.metrics

        @app.before_request
        def _start_timer() -> None:
            g.start = time.perf_counter()

        @app.after_request
        def _observe(response: Response) -> Response:
            endpoint = request.url_rule.rule if request.url_rule else "unmatched"
            elapsed = time.perf_counter() - g.get("start", time.perf_counter())
            metrics.request_latency.labels(endpoint).observe(elapsed)
            metrics.requests.labels(endpoint, str(response.status_code)).inc()
            return response

        @app.errorhandler(RequestError)
        def _request_error(exc: RequestError) -> Response:
            metrics.errors.labels(exc.kind).inc()
            log.info("request refused", extra=fields(kind=exc.kind, status=exc.status))
            return _error(exc.status, exc.kind, exc.message)

        @app.errorhandler(HTTPException)
        def _http_error(exc: HTTPException) -> Response:
            status = exc.code or 400
            kind = _HTTP_KINDS.get(status, "bad_request" if status < 500 else "internal")
            metrics.errors.labels(kind).inc()
            message = exc.description or exc.name
            if status == 413:
                message = f"request body larger than {self.config.max_body_bytes} bytes"
            return _error(status, kind, message)

        @app.errorhandler(Exception)
        def _internal(exc: Exception) -> Response:
            metrics.errors.labels("internal").inc()
            log.error("internal error", exc_info=exc, extra=fields(path=request.path))
            return _error(500, "internal", "internal error; see the server log")

        @app.get("/version/")
        def version() -> Response:
            return _json(self.version_info)

        @app.get("/healthz")
        def healthz() -> Response:
            return _json({"status": "ok"})

        @app.get("/readyz")
        def readyz() -> Response:
            ok = self.selftest.passed
            return _json({"ready": ok, "self_test": self.selftest.report()}, 200 if ok else 503)

        @app.post("/predict/")
        def predict() -> Response:
            start = g.get("start", time.perf_counter())
            if not self.selftest.passed:
                raise RequestError(
                    503, "not_ready", f"model not ready: self-test {self.selftest.state}"
                )
            pred = self._predict()
            total = time.perf_counter() - start
            event_id = self._record(pred, total)
            top = pred.top1
            return _json(
                {
                    "id": event_id,
                    "label": top.label,
                    "index": top.index,
                    "score": top.score,
                    "predictions": [
                        {"index": c.index, "label": c.label, "score": c.score} for c in pred.classes
                    ],
                    "model": self.package.name,
                    "model_version": self.version_info["model_version"],
                    "timing_ms": {
                        "preprocess": round(pred.preprocess_s * 1000, 3),
                        "inference": round(pred.inference_s * 1000, 3),
                        "total": round(total * 1000, 3),
                    },
                }
            )

        @app.get("/drift")
        def drift() -> Response:
            return _json(self._update_gauges())

        @app.get("/metrics")
        def prometheus() -> Response:
            self._update_gauges()
            return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

        return app


def create_app(config: ServerConfig) -> Flask:
    """App factory: load the model, start self-test and telemetry, return the WSGI app.

    The :class:`ModelServer` stays reachable as ``app.extensions["model_server"]``.
    """
    server = ModelServer(config).start()
    server.app.extensions["model_server"] = server
    return server.app

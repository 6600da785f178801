"""Prometheus metrics of one server instance, in its own registry (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.model = Info("edgefleet_model", "The model being served.", registry=r)
        self.requests = Counter(
            "edgefleet_http_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "edgefleet_http_request_duration_seconds",
            "Time from request start to response, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess_latency = Histogram(
            "edgefleet_preprocess_duration_seconds",
            "Decode + resize (or feature parsing) time per prediction.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_latency = Histogram(
            "edgefleet_inference_duration_seconds",
            "Model invoke time per prediction (includes waiting for a free interpreter).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "edgefleet_predictions", "Predictions by top-1 label.", ["label"], registry=r
        )
        self.errors = Counter(
            "edgefleet_errors", "Refused or failed requests by kind.", ["kind"], registry=r
        )
        self.ready = Gauge("edgefleet_ready", "1 when the self-test passed.", registry=r)
        self.outbox_messages = Gauge(
            "edgefleet_telemetry_outbox_messages", "Telemetry messages waiting on disk.", registry=r
        )
        self.telemetry_published = Counter(
            "edgefleet_telemetry_published",
            "Telemetry messages acknowledged by Pub/Sub.",
            registry=r,
        )
        self.telemetry_batches = Counter(
            "edgefleet_telemetry_publish_requests",
            "Publish requests (one batch each) acknowledged by Pub/Sub.",
            registry=r,
        )
        self.telemetry_dropped = Counter(
            "edgefleet_telemetry_dropped",
            "Oldest telemetry messages dropped because the outbox was full.",
            registry=r,
        )
        self.telemetry_failures = Counter(
            "edgefleet_telemetry_publish_failures",
            "Failed publish attempts by error type.",
            ["error"],
            registry=r,
        )
        self.drift_p_value = Gauge(
            "edgefleet_drift_p_value",
            "p-value of the drift test over the rolling window (absent until judged).",
            ["test"],
            registry=r,
        )
        self.drift_detected = Gauge(
            "edgefleet_drift_detected", "1 when a drift test is below alpha.", registry=r
        )
        self.drift_samples = Gauge(
            "edgefleet_drift_window_samples", "Predictions in the drift window.", registry=r
        )

"""Model-quality signals: read each model server's ``/metrics`` and summarise a window.

Progressive rollouts are judged by the model itself (docs/rollouts.md): every device puts,
per running model version, a summary of the last window into its status report::

    "models": [{"digest": "sha256:…", "image": "REPO@sha256:…", "name": "mobilenet",
                "window": {"start": "RFC3339", "end": "RFC3339", "seconds": 60.0},
                "requests": 120, "errors": 1, "errorRate": 0.0083,
                "latencyP50Ms": 12.5, "latencyP95Ms": 30.1, "confidenceMean": 0.87,
                "drift": 0.02, "accelerator": "cpu"}]

Requests are ``/predict/`` answers except the 503s of a server not ready yet (the
device's readiness gate judges those); errors are the other 5xx. Counters are
cumulative, so a window is the difference of two scrapes of the same server process
(``edgefleet_start_time_seconds`` tells a restarted server apart). A server's first
stretch -- from its start to the first scrape: model load, self-test, the first slow
invocations -- is not reported: start-up is what the readiness gate judges, and a new
version must not be compared with warm servers on its cold start. Latency percentiles
are interpolated inside the histogram buckets (as Prometheus' ``histogram_quantile``).
The Prometheus text parser is a few lines here instead of a library: the agent's memory
budget is small and only a handful of series is read. Everything a server sends is
bounded and validated; a server that does not answer is simply left out of the window.
"""

from __future__ import annotations

import http.client
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MAX_METRICS_BYTES = 512 * 1024
MAX_SERIES = 5000
PREDICT = "/predict/"
SCRAPE_TIMEOUT = 2.0
# The model server answers /predict/ 503 only while its self-test has not passed
# (model_server.app: "not_ready"); a starting version is judged by readiness, not by these.
NOT_READY = "503"

_LINE = re.compile(
    r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(-?[0-9.eE+-]+|[+-]?Inf|NaN)(?:\s+\S+)?$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class Target:
    """A model pod to scrape: its name, image and the port its server listens on."""

    name: str
    image: str
    port: int

    @property
    def digest(self) -> str:
        return self.image.rpartition("@")[2] if "@" in self.image else ""


@dataclass(frozen=True, slots=True)
class Scrape:
    """The counters of one server at one moment."""

    at: float
    started: float
    requests: float
    errors: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count)
    score_sum: float
    score_count: float
    drift: float
    accelerator: str


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition (name, labels, value); bad lines skipped."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line.strip())
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, value))
        if len(out) >= MAX_SERIES:
            break
    return out


def scrape_of(text: str, at: float) -> Scrape | None:
    """The signals of one ``/metrics`` answer, or None when it is not a model server's."""
    requests = errors = score_sum = score_count = drift = 0.0
    started: float | None = None
    accelerator = "cpu"
    buckets: dict[float, float] = {}
    for name, labels, value in parse(text):
        if not math.isfinite(value) and name != "edgefleet_http_request_duration_seconds_bucket":
            continue
        if name == "edgefleet_http_requests_total" and labels.get("endpoint") == PREDICT:
            status = labels.get("status", "")
            if status == NOT_READY:
                continue  # refused before the self-test passed: readiness, not quality
            requests += value
            if status.startswith("5"):
                errors += value
        elif (
            name == "edgefleet_http_request_duration_seconds_bucket"
            and labels.get("endpoint") == PREDICT
        ):
            le = labels.get("le", "")
            bound = math.inf if le in ("+Inf", "Inf") else _float(le)
            if bound is not None:
                buckets[bound] = value
        elif name == "edgefleet_top1_score_sum":
            score_sum = value
        elif name == "edgefleet_top1_score_count":
            score_count = value
        elif name == "edgefleet_drift_score":
            drift = value
        elif name == "edgefleet_start_time_seconds":
            started = value
        elif name == "edgefleet_model_info":
            accelerator = (labels.get("accelerator") or accelerator)[:32]
    if started is None:
        return None
    return Scrape(
        at, started, requests, errors, tuple(sorted(buckets.items())), score_sum, score_count,
        drift, accelerator,
    )  # fmt: skip


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram (linear inside a bucket; the +Inf
    bucket answers its lower bound), None without observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            inside = count - lower_count
            if inside <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / inside
        lower_bound, lower_count = bound, count
    return lower_bound


def summary(target: Target, before: Scrape | None, now: Scrape) -> dict[str, Any] | None:
    """The window from ``before`` to ``now``; None unless both are scrapes of the same
    server process (its first stretch is start-up, see the module docstring)."""
    if before is None or before.started != now.started or before.at >= now.at:
        return None
    base = before
    start = base.at
    requests = max(0.0, now.requests - base.requests)
    errors = max(0.0, now.errors - base.errors)
    prior = dict(base.buckets)
    buckets = [(b, max(0.0, c - prior.get(b, 0.0))) for b, c in now.buckets]
    count = now.score_count - base.score_count
    total = now.score_sum - base.score_sum
    p50, p95 = quantile(0.5, buckets), quantile(0.95, buckets)
    return {
        "digest": target.digest,
        "image": target.image,
        "name": target.name,
        "window": {
            "start": _iso(start),
            "end": _iso(now.at),
            "seconds": round(max(0.0, now.at - start), 3),
        },
        "requests": int(requests),
        "errors": int(errors),
        "errorRate": round(errors / requests, 6) if requests else 0.0,
        "latencyP50Ms": None if p50 is None else round(p50 * 1000, 3),
        "latencyP95Ms": None if p95 is None else round(p95 * 1000, 3),
        "confidenceMean": round(total / count, 6) if count > 0 else None,
        "drift": round(now.drift, 6),
        "accelerator": now.accelerator,
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def targets_of(pods: Mapping[str, Mapping[str, Any]]) -> list[Target]:
    """Model pods of an applied set: containers with a port named ``http``."""
    out = []
    for name, pod in sorted(pods.items()):
        spec = pod.get("spec") if isinstance(pod, Mapping) else None
        containers = spec.get("containers") if isinstance(spec, Mapping) else None
        for c in containers if isinstance(containers, list) else []:
            if not isinstance(c, Mapping):
                continue
            for port in c.get("ports") or []:
                if not isinstance(port, Mapping) or port.get("name") != "http":
                    continue
                number = port.get("hostPort") or port.get("containerPort")
                if isinstance(number, int) and 0 < number < 65536:
                    out.append(Target(name, str(c.get("image") or ""), number))
                    break
    return out


def fetch_metrics(port: int, timeout: float = SCRAPE_TIMEOUT) -> str | None:
    """``GET http://127.0.0.1:PORT/metrics`` (bounded), or None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        data = resp.read(MAX_METRICS_BYTES + 1)
        if resp.status != 200 or len(data) > MAX_METRICS_BYTES:
            return None
        return data.decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@dataclass
class ModelSampler:
    """Summaries per model pod, one window every ``window_seconds``."""

    window_seconds: float
    clock: Callable[[], float]
    fetch: Callable[[int], str | None] = fetch_metrics
    last: dict[str, Scrape] = field(default_factory=dict)
    last_at: float = 0.0
    summaries: list[dict[str, Any]] = field(default_factory=list)

    def due(self) -> bool:
        return self.clock() - self.last_at >= self.window_seconds

    def sample(self, targets: Iterable[Target]) -> list[dict[str, Any]]:
        """Scrape every target now and return the new window's summaries."""
        now = self.clock()
        self.last_at = now
        seen: dict[str, Scrape] = {}
        out = []
        for target in targets:
            text = self.fetch(target.port)
            current = scrape_of(text, now) if text is not None else None
            if current is None:
                continue
            key = f"{target.name}@{target.digest}"
            window = summary(target, self.last.get(key), current)
            if window is not None:
                out.append(window)
            seen[key] = current
        self.last = seen
        self.summaries = out
        return out

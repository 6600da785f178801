"""Server configuration: flags, then ``EDGEFLEET_*`` env, then the SPEC's env names.

Parsed once, in ``__main__`` (or by a test), into a frozen :class:`ServerConfig` that is
passed down explicitly; nothing below reads the environment.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgefleet.core.errors import ConfigError

DEFAULT_TOPIC = "edge-inference-results"
DEFAULT_OUTBOX_DIR = "/var/spool/edgefleet/outbox"


@dataclass(frozen=True)
class ServerConfig:
    model: Path | None = None
    labels: Path | None = None
    model_dir: Path | None = None
    metadata: Path | None = None
    # Loopback unless told otherwise: a pod with its own network namespace sets 0.0.0.0
    # (its template does); on a host network nothing but the device itself may connect.
    host: str = "127.0.0.1"
    port: int = 5000
    container_digest: str = ""
    device_id: str = ""
    # Telemetry: "auto" publishes when a Pub/Sub project is configured.
    telemetry: str = "auto"
    pubsub_project: str = ""
    pubsub_topic: str = DEFAULT_TOPIC
    pubsub_emulator_host: str = ""
    outbox_dir: Path = Path(DEFAULT_OUTBOX_DIR)
    outbox_max_messages: int = 50_000
    publish_batch: int = 100
    publish_interval: float = 1.0
    publish_timeout: float = 10.0
    backoff_max: float = 60.0
    # Limits on what clients send.
    max_body_bytes: int = 10 * 1024 * 1024
    # JSON bodies (feature rows) are refused beyond this many bytes before being read.
    max_json_bytes: int = 64 * 1024
    max_pixels: int = 4096 * 4096
    default_top_k: int = 5
    # Concurrency: a pool of ``workers`` interpreters with ``interpreter_threads`` each.
    workers: int = 0  # 0 = one per CPU (1 on the Edge TPU)
    interpreter_threads: int = 1
    http_threads: int = 0  # 0 = 2 x workers, at least 4
    # Drift.
    drift_window: int = 500
    drift_min_samples: int = 100
    drift_alpha: float = 0.01
    log_level: str = "INFO"

    @property
    def telemetry_enabled(self) -> bool:
        return self.telemetry == "on" or (self.telemetry == "auto" and bool(self.pubsub_project))


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise ValueError("must be >= 1")
    return n


def _publish_batch(value: str) -> int:
    n = _positive_int(value)
    if n > 1000:
        raise ValueError("must be <= 1000 (Pub/Sub takes at most 1,000 messages per publish)")
    return n


def _non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError("must be >= 0")
    return n


def _positive_float(value: str) -> float:
    x = float(value)
    if not x > 0:
        raise ValueError("must be > 0")
    return x


def _port(value: str) -> int:
    n = int(value)
    if not 0 <= n <= 65535:
        raise ValueError("must be 0..65535")
    return n


def _probability(value: str) -> float:
    x = float(value)
    if not 0 < x < 1:
        raise ValueError("must be between 0 and 1")
    return x


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        v = value.strip().lower()
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return v

    return parse


def _log_level(value: str) -> str:
    v = value.strip().upper()
    if v not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return v


@dataclass(frozen=True)
class _Option:
    field: str
    parse: Callable[[str], Any]
    help: str
    aliases: tuple[str, ...] = ()  # env names besides EDGEFLEET_<FIELD>


_OPTIONS: tuple[_Option, ...] = (
    _Option("model", Path, "model file (.tflite or .onnx)"),
    _Option("labels", Path, "labels file: one label per line, or 'N label' per line"),
    _Option("model_dir", Path, "model package directory (model.tflite|model.onnx, ...)"),
    _Option("metadata", Path, "metadata.json (name, version, golden inputs, drift reference)"),
    _Option("host", str, "address to listen on (default 127.0.0.1; 0.0.0.0 in a pod netns)"),
    _Option("port", _port, "TCP port to listen on"),
    _Option("container_digest", str, "image digest reported by /version/", ("CONTAINER_DIGEST",)),
    _Option("device_id", str, "device id sent with telemetry", ("DEVICE_ID",)),
    _Option("telemetry", _choice("auto", "on", "off"), "publish predictions: auto|on|off"),
    _Option(
        "pubsub_project",
        str,
        "Google Cloud project of the telemetry topic",
        ("PUBSUB_PROJECT", "PUBSUB_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"),
    ),
    _Option("pubsub_topic", str, "telemetry topic", ("PUBSUB_TOPIC",)),
    _Option("pubsub_emulator_host", str, "Pub/Sub emulator host:port", ("PUBSUB_EMULATOR_HOST",)),
    _Option("outbox_dir", Path, "telemetry outbox directory", ("OUTBOX_DIR",)),
    _Option("outbox_max_messages", _positive_int, "outbox bound; the oldest are dropped beyond"),
    _Option("publish_batch", _publish_batch, "messages per Pub/Sub publish request"),
    _Option("publish_interval", _positive_float, "seconds between publish rounds"),
    _Option("publish_timeout", _positive_float, "seconds one publish request may take"),
    _Option("backoff_max", _positive_float, "longest wait between failed publishes"),
    _Option("max_body_bytes", _positive_int, "largest request body accepted"),
    _Option("max_json_bytes", _positive_int, "largest JSON (feature row) body accepted"),
    _Option("max_pixels", _positive_int, "largest image (width x height) decoded"),
    _Option("default_top_k", _positive_int, "top_k when the request gives none"),
    _Option("workers", _non_negative_int, "interpreters in the pool (0 = one per CPU)"),
    _Option("interpreter_threads", _positive_int, "CPU threads per interpreter"),
    _Option("http_threads", _non_negative_int, "WSGI worker threads (0 = 2 x workers, >= 4)"),
    _Option("drift_window", _positive_int, "predictions in the drift window"),
    _Option("drift_min_samples", _positive_int, "predictions needed before drift is judged"),
    _Option("drift_alpha", _probability, "p-value below which drift is reported"),
    _Option("log_level", _log_level, "DEBUG|INFO|WARNING|ERROR"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_server",
        description="Edge inference server (LiteRT / Edge TPU / ONNX). Every flag can also "
        "be set by env EDGEFLEET_<FLAG> (upper case, '_' for '-').",
    )
    for opt in _OPTIONS:
        flag = "--" + opt.field.replace("_", "-")
        env = ", ".join((f"EDGEFLEET_{opt.field.upper()}", *opt.aliases))
        parser.add_argument(flag, dest=opt.field, default=None, help=f"{opt.help} [env {env}]")
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Flags win over ``EDGEFLEET_*`` env, which wins over the SPEC's plain env names."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for opt in _OPTIONS:
        raw: str | None = getattr(args, opt.field)
        source = "--" + opt.field.replace("_", "-")
        if raw is None:
            for name in (f"EDGEFLEET_{opt.field.upper()}", *opt.aliases):
                if env.get(name, "") != "":
                    raw, source = env[name], name
                    break
        if raw is None:
            continue
        try:
            values[opt.field] = opt.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}={raw!r} is invalid: {exc}") from None
    return validate(ServerConfig(**values))


def validate(config: ServerConfig) -> ServerConfig:
    """Cross-field checks, so a bad combination fails at start-up with one line."""
    if config.model_dir is None and config.model is None:
        raise ConfigError("no model: pass --model FILE (with --labels FILE) or --model-dir DIR")
    if config.model_dir is not None and config.model is not None:
        raise ConfigError("pass either --model or --model-dir, not both")
    if config.telemetry == "on" and not config.pubsub_project:
        raise ConfigError("--telemetry on needs a Pub/Sub project: set PUBSUB_PROJECT")
    if config.pubsub_topic and "/" in config.pubsub_topic:
        raise ConfigError(f"PUBSUB_TOPIC={config.pubsub_topic!r}: give the topic id, not a path")
    if not config.device_id:
        # A manifest set is shared by a channel's devices, so the pod carries no device id;
        # with hostNetwork the host name is the device's own.
        config = replace(config, device_id=socket.gethostname())
    return config

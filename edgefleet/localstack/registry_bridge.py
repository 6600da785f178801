"""Registry bridge: distribution notification webhooks -> Pub/Sub topic ``gcr`` in GCR's
message format, the way Artifact Registry / Container Registry publish in the cloud.

distribution POSTs envelopes (``application/vnd.docker.distribution.events.v1+json``,
``{"events": [...]}``). :func:`translate` (pure) maps them:

* manifest push with a tag  -> ``{"action": "INSERT", "digest": "H/R@sha256:…", "tag": "H/R:T"}``
* manifest push by digest   -> ``{"action": "INSERT", "digest": "H/R@sha256:…"}``
* manifest delete           -> ``{"action": "DELETE", "digest": "H/R@sha256:…"}``
* tag delete (distribution sends one per tag that pointed at a deleted manifest)
                            -> ``{"action": "DELETE", "tag": "H/R:T"}``
* blob pushes, pulls, mounts -> nothing.

The server publishes every message and waits for Pub/Sub to accept it before answering
200; on failure it answers 503, so distribution retries (at-least-once, like GCR).
Run it as ``python -m edgefleet.localstack.registry_bridge`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgefleet.core import logs, refs
from edgefleet.core.errors import InvalidInput

log = logging.getLogger("edgefleet.registry_bridge")

ENVELOPE_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
MANIFEST_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
MAX_BODY = 4 * 1024 * 1024


def _is_manifest(target: Mapping[str, Any]) -> bool:
    media = target.get("mediaType")
    if media in MANIFEST_MEDIA_TYPES:
        return True
    return "/manifests/" in str(target.get("url") or "")


def translate_event(event: Any, registry_host: str) -> dict[str, str] | None:
    """One distribution event -> one GCR-format message, or None when it is not one.

    Raises InvalidInput for an event that claims to be a manifest push or delete but has a
    malformed repository, tag or digest (distribution itself never sends those).
    """
    if not isinstance(event, Mapping):
        raise InvalidInput("registry event is not an object")
    action = event.get("action")
    target = event.get("target")
    if action not in ("push", "delete") or not isinstance(target, Mapping):
        return None  # pull, mount, anything else
    repository = target.get("repository")
    digest = target.get("digest") or None
    tag = target.get("tag") or None
    if action == "push" and not _is_manifest(target):
        return None  # blob upload
    if not isinstance(repository, str) or not repository:
        raise InvalidInput(f"registry {action} event without a repository")
    name = f"{registry_host}/{repository}"
    message: dict[str, str] = {"action": "INSERT" if action == "push" else "DELETE"}
    if digest is not None:
        if not isinstance(digest, str):
            raise InvalidInput("registry event digest is not a string")
        message["digest"] = str(refs.parse(f"{name}@{digest}"))
    if tag is not None:
        if not isinstance(tag, str):
            raise InvalidInput("registry event tag is not a string")
        message["tag"] = str(refs.parse(f"{name}:{tag}"))
    if "digest" not in message and "tag" not in message:
        raise InvalidInput(f"registry {action} event for {repository} has neither digest nor tag")
    if action == "push" and "digest" not in message:
        raise InvalidInput(f"registry push event for {repository} has no digest")
    return message


def translate(envelope: Any, registry_host: str) -> list[dict[str, str]]:
    """A notification envelope -> GCR-format messages, in event order."""
    if not isinstance(envelope, Mapping) or not isinstance(envelope.get("events"), list):
        raise InvalidInput('registry notification is not an envelope {"events": [...]}')
    out = []
    for event in envelope["events"]:
        message = translate_event(event, registry_host)
        if message is not None:
            out.append(message)
    return out


Publish = Callable[[bytes], None]


def make_handler(registry_host: str, publish: Publish) -> type[BaseHTTPRequestHandler]:
    """The webhook handler: validate, translate, publish, answer."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, status: int, body: Mapping[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._reply(200 if self.path == "/healthz" else 404, {"ok": self.path == "/healthz"})

        def do_POST(self) -> None:
            media = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            try:
                length = int(self.headers.get("Content-Length") or "0")
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self._reply(413, {"error": "missing or too large Content-Length"})
                return
            body = self.rfile.read(length)
            if media != ENVELOPE_MEDIA_TYPE:
                log.error("rejected notification", extra=logs.fields(media_type=media))
                self._reply(415, {"error": f"expected {ENVELOPE_MEDIA_TYPE}"})
                return
            try:
                messages = translate(json.loads(body), registry_host)
            except (ValueError, InvalidInput) as exc:
                log.error("invalid notification", extra=logs.fields(error=str(exc)))
                self._reply(400, {"error": str(exc)})
                return
            try:
                for message in messages:
                    publish(json.dumps(message, separators=(",", ":")).encode())
                    log.info("published", extra=logs.fields(**message))
            except Exception as exc:  # a retry by distribution may succeed
                log.error("publish failed", extra=logs.fields(error=str(exc)))
                self._reply(503, {"error": "publish failed, retry"})
                return
            self._reply(200, {"published": len(messages)})

        def log_message(self, format: str, *args: Any) -> None:
            pass  # structured logs only

    return Handler


def pubsub_publisher(pubsub_host: str, project: str, topic: str) -> Publish:
    """Publish to ``topic`` on the emulator, waiting until each message is accepted."""
    from edgefleet.localstack.pubsub import publisher

    client = publisher(pubsub_host)
    path = f"projects/{project}/topics/{topic}"

    def publish(data: bytes) -> None:
        client.publish(path, data).result(timeout=30)

    return publish


def serve(
    registry_host: str, publish: Publish, *, host: str = "127.0.0.1", port: int = 0
) -> ThreadingHTTPServer:
    """A bound server (not yet serving): call ``serve_forever`` or run it in a thread."""
    server = ThreadingHTTPServer((host, port), make_handler(registry_host, publish))
    server.daemon_threads = True
    return server


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="registry_bridge", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--registry-host", required=True, help="HOST:PORT used in messages")
    parser.add_argument("--pubsub-host", required=True, help="Pub/Sub emulator HOST:PORT")
    parser.add_argument("--project", required=True)
    parser.add_argument("--topic", default="gcr")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logs.configure("registry-bridge")
    server = serve(
        args.registry_host,
        pubsub_publisher(args.pubsub_host, args.project, args.topic),
        port=args.port,
    )
    log.info("listening", extra=logs.fields(port=args.port, topic=args.topic))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())


class RegistryBridge:
    """The bridge as a child process (``python -m edgefleet.localstack.registry_bridge``)."""

    def __init__(
        self,
        workdir: str,
        *,
        registry_host: str,
        pubsub_host: str,
        project: str,
        topic: str = "gcr",
        port: int | None = None,
        name: str = "registry-bridge",
    ) -> None:
        from edgefleet.localstack.process import ManagedProcess, free_port

        self.port = port or free_port()
        argv = [
            sys.executable, "-m", "edgefleet.localstack.registry_bridge",
            "--port", str(self.port),
            "--registry-host", registry_host,
            "--pubsub-host", pubsub_host,
            "--project", project,
            "--topic", topic,
        ]  # fmt: skip
        self.process = ManagedProcess(name, argv, workdir=workdir)

    @property
    def url(self) -> str:
        """Where the registry sends notifications."""
        return f"http://127.0.0.1:{self.port}/events"

    def start(self, timeout: float = 20.0) -> RegistryBridge:
        from edgefleet.localstack.process import http_ready

        self.process.start()
        self.process.wait_ready(
            lambda: http_ready(f"http://127.0.0.1:{self.port}/healthz"),
            timeout=timeout,
            what="registry bridge",
        )
        return self

    def stop(self) -> None:
        self.process.stop()

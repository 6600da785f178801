"""Serving the app with waitress, a production WSGI server.

Waitress reads each request completely on its I/O thread (slow or huge uploads never tie
up a worker) and runs the app on a pool of worker threads. There are more worker threads
than interpreters, so one request can decode its image while others run inference.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from model_server.config import ServerConfig


def http_threads(config: ServerConfig, workers: int) -> int:
    return config.http_threads or max(4, 2 * workers)


def make_server(app: Any, config: ServerConfig, workers: int) -> Any:
    """A bound waitress server (``.run()`` serves, ``.close()`` stops, ``.effective_port``)."""
    from waitress import create_server

    return create_server(
        app,
        host=config.host,
        port=config.port,
        threads=http_threads(config, workers),
        # Waitress refuses a body beyond twice the app's limit from its Content-Length,
        # before buffering a byte (a plain-text 413); the app answers a JSON 413 for bodies
        # between the two limits, and for chunked bodies.
        max_request_body_size=2 * config.max_body_bytes + 64 * 1024,
        max_request_header_size=64 * 1024,
        channel_timeout=30,
        connection_limit=256,
        clear_untrusted_proxy_headers=True,
        asyncore_use_poll=True,
        expose_tracebacks=False,
        ident="edgefleet-model-server",
    )


class BackgroundServer:
    """The real waitress server on a loopback port, run in a thread (tests, benchmarks)."""

    def __init__(self, app: Any, config: ServerConfig, workers: int) -> None:
        self.http = make_server(app, replace(config, host="127.0.0.1", port=0), workers)
        self.url = f"http://127.0.0.1:{self.http.effective_port}"
        self._thread = threading.Thread(target=self.http.run, name="waitress", daemon=True)

    def start(self) -> BackgroundServer:
        self._thread.start()
        return self

    def close(self) -> None:
        from waitress.channel import HTTPChannel

        # Running requests finish first (they wake the I/O loop when done), then every
        # dispatcher closes, which empties waitress's socket map and ends its loop.
        self.http.task_dispatcher.shutdown(cancel_pending=True, timeout=10)
        while self.http._map:
            for dispatcher in list(self.http._map.values()):
                if isinstance(dispatcher, HTTPChannel):
                    dispatcher.handle_close()  # also frees the channel's buffers
                else:
                    dispatcher.close()  # the listening socket and the wake-up trigger
        self._thread.join(10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def serve_in_background(config: ServerConfig) -> Iterator[tuple[Any, str]]:
    """Load, start and serve ``config`` in this process; yields (ModelServer, base URL)."""
    from model_server.app import ModelServer

    server = ModelServer(config).start()
    try:
        with BackgroundServer(server.app, config, server.workers) as http:
            yield server, http.url
    finally:
        server.close()

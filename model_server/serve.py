"""Serving the app with waitress, a production WSGI server.

Waitress reads each request completely on its I/O thread (slow or huge uploads never tie
up a worker) and runs the app on a pool of worker threads. There are more worker threads
than interpreters, so one request can decode its image while others run inference.
"""

from __future__ import annotations

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
        # Waitress refuses larger bodies before buffering them; the app's own (JSON) 413
        # covers bodies between the app limit and this one.
        max_request_body_size=config.max_body_bytes + 1024 * 1024,
        max_request_header_size=64 * 1024,
        channel_timeout=30,
        connection_limit=256,
        clear_untrusted_proxy_headers=True,
        asyncore_use_poll=True,
        expose_tracebacks=False,
        ident="edgefleet-model-server",
    )

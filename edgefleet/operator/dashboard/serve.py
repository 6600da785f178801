"""Run the dashboard: build its service over a deploy bucket and serve it with waitress
(a production WSGI server, pure Python, already a dependency of the model server).

:class:`Running` serves on a background thread, for ``edgefleet demo --keep``, tests and
the bench; ``edgefleet dashboard`` serves in the foreground.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.core.errors import ConfigError
from edgefleet.operator import fleet, fleet_index
from edgefleet.operator.dashboard.service import FleetService
from edgefleet.operator.versions import VersionLookup

DEFAULT_PORT = 8080
DEFAULT_REFRESH_SECONDS = 5.0


def service_for(
    bucket: str,
    *,
    env: Mapping[str, str] | None = None,
    stale_after: float = fleet.DEFAULT_STALE_SECONDS,
    cache: bool = True,
) -> FleetService:
    env = os.environ if env is None else env
    index = fleet_index.open_index(bucket, env=env, cache=cache)
    return FleetService(index, version_of=VersionLookup.from_env(env), stale_after=stale_after)


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})


def _app(service: FleetService, refresh_seconds: float, host: str) -> Any:
    """The app; bound to loopback it answers only to loopback names (DNS rebinding)."""
    try:
        from edgefleet.operator.dashboard.app import create_app
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the dashboard needs {exc.name}: pip install 'edgefleet[dashboard]'"
        ) from exc
    loopback = host in ("127.0.0.1", "localhost", "::1")
    allowed = LOOPBACK_NAMES if loopback else None
    return create_app(service, refresh_seconds=refresh_seconds, allowed_hosts=allowed)


@dataclass
class Running:
    """A dashboard served on a background thread; :meth:`stop` ends it and its refresh."""

    service: FleetService
    server: Any
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.effective_host, self.server.effective_port
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        self.server.close()
        self.thread.join(timeout=10)
        self.service.stop()


def start(
    service: FleetService,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
) -> Running:
    """Serve on ``host:port`` (0: any free port) from a thread; refresh every
    ``refresh_seconds``."""
    import waitress

    server = waitress.create_server(
        _app(service, refresh_seconds, host), host=host, port=port, threads=8
    )
    service.start(refresh_seconds)
    thread = threading.Thread(target=server.run, name="dashboard-http", daemon=True)
    thread.start()
    return Running(service, server, thread)


def serve_forever(
    service: FleetService, *, host: str, port: int, refresh_seconds: float, say: Any = print
) -> None:
    """``edgefleet dashboard``: serve until interrupted."""
    import waitress

    app = _app(service, refresh_seconds, host)
    server = waitress.create_server(app, host=host, port=port, threads=8)
    service.start(refresh_seconds)
    say(
        f"edgefleet dashboard for gs://{service.index.source.name}: "
        f"http://{server.effective_host}:{server.effective_port}/ (Ctrl-C to stop)"
    )
    try:
        server.run()
    finally:
        server.close()
        service.stop()


def for_demo(
    stack_env: Mapping[str, str], *, port: int = DEFAULT_PORT, say: Any = print
) -> Running:
    """The dashboard over a local stack (``edgefleet demo``): on 127.0.0.1:``port``, or on
    a free port when that one is taken; says where."""
    env = {**os.environ, **stack_env}
    service = service_for(env["DEPLOY_BUCKET"], env=env)
    try:
        running = start(service, port=port, refresh_seconds=2.0)
    except OSError:
        running = start(service, port=0, refresh_seconds=2.0)
    say(f"  dashboard: {running.url} (watch the rollout there)")
    return running


def hold(running: Running, keep: bool, say: Any = print) -> None:
    """End of the demo: print the dashboard's address; with ``keep``, serve until Ctrl-C
    (the stack stays up meanwhile), else say how to keep it."""
    if not keep:
        say(f"\ndashboard was at {running.url}; `edgefleet demo --keep` keeps it open")
        return
    say(f"\ndashboard: {running.url} (kept open with --keep; Ctrl-C stops it and the stack)")
    stop = threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        say("stopping the dashboard")

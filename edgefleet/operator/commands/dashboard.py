"""``edgefleet dashboard``: serve the fleet's web view (see docs/dashboard.md)."""

from __future__ import annotations

import argparse

from edgefleet.core.errors import ConfigError
from edgefleet.operator import context
from edgefleet.operator.commands import fleet as fleet_commands


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve a web view of the fleet, its channels, rollouts and models",
        description="Serves a read-only dashboard over the deploy bucket's status reports "
        "and rollout states, with a JSON API under /api/. The bucket is chosen as for "
        "`edgefleet status`.",
    )
    fleet_commands._bucket_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port (default %(default)s)")
    p.add_argument(
        "--refresh-seconds",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how often to re-read the bucket and the page to update (default %(default)s)",
    )
    fleet_commands.stale_after_arg(p)
    p.set_defaults(handler=_dashboard)


def _dashboard(args: argparse.Namespace) -> int:
    from edgefleet.operator.dashboard import serve

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: choose 0 to 65535")
    if not 0.5 <= args.refresh_seconds <= 3600:
        raise ConfigError(f"--refresh-seconds {args.refresh_seconds}: choose 0.5 to 3600")
    context.apply_defaults()
    service = serve.service_for(
        fleet_commands.deploy_bucket_name(args.bucket), stale_after=args.stale_after
    )
    serve.serve_forever(
        service, host=args.host, port=args.port, refresh_seconds=args.refresh_seconds
    )
    return 0

"""``edgefleet demo``: the whole story on this machine (see edgefleet.operator.demo)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from edgefleet.core.errors import ConfigError

DEFAULT_WORKDIR = ".edgefleet/demo"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the local demo: build, roll out, roll back on 3 simulated devices",
        description="Starts a local stack with 3 devices (latest, beta, stable), trains "
        "two model versions, promotes and rolls back, then tears everything down.",
    )
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="state and logs (kept)")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="device poll interval")
    p.add_argument(
        "--keep",
        action="store_true",
        help="at the end, keep the stack and its dashboard (http://127.0.0.1:8080/) up "
        "until Ctrl-C",
    )
    p.set_defaults(handler=_demo)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _demo(args: argparse.Namespace) -> int:
    from edgefleet.operator import demo

    if not 0.1 <= args.poll_seconds <= 60:
        raise ConfigError(f"--poll-seconds {args.poll_seconds}: choose 0.1 to 60")
    signal.signal(signal.SIGTERM, _interrupt)  # tear down as on Ctrl-C
    out = lambda line: print(line, flush=True)  # noqa: E731
    try:
        return demo.run(Path(args.workdir), poll_seconds=args.poll_seconds, say=out, keep=args.keep)
    except KeyboardInterrupt:
        print("edgefleet: demo interrupted; everything it started was stopped", file=sys.stderr)
        return 130

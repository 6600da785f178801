"""The ``edgefleet`` console command.

Each sub-command lives in a module of :mod:`edgefleet.operator.commands` that exposes
``register(subparsers)``; the module's handler receives the parsed arguments and returns
an exit code. Errors edgefleet raises on purpose print as one line, ``edgefleet: …``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edgefleet import __version__
from edgefleet.core.errors import EdgefleetError

# Modules of edgefleet.operator.commands, each registering one or more sub-commands.
COMMAND_MODULES: tuple[str, ...] = (
    "keys",
    "bootstrap",
    "provision",
    "stack",
    "fleet",
    "demo",
    "dashboard",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet",
        description="Ship ML model versions to fleets of edge devices by moving channel tags.",
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"edgefleet.operator.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"edgefleet.operator.commands.{module}":
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except EdgefleetError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgefleet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``edgefleet up`` / ``edgefleet down``: the local stack (emulators, registry, functions,
simulated devices) in the background, recorded in WORKDIR/stack.json."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from edgefleet.errors import ConfigError

DEFAULT_WORKDIR = ".edgefleet/stack"


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start the local stack in the background")
    up.add_argument("--workdir", default=DEFAULT_WORKDIR, help="state, logs and data")
    up.add_argument("--devices", type=int, default=0, help="simulated devices (namespaces)")
    up.add_argument(
        "--no-functions", action="store_true", help="do not start tag_monitor/model_done_watcher"
    )
    up.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra env for the functions (e.g. SIGNING_KEY=...); repeatable",
    )
    up.set_defaults(handler=_up)

    down = sub.add_parser("down", help="stop what 'edgefleet up' started")
    down.add_argument("--workdir", default=DEFAULT_WORKDIR)
    down.set_defaults(handler=_down)


def _progress(message: str) -> None:
    print(f"edgefleet: {message}", file=sys.stderr, flush=True)


def _up(args: argparse.Namespace) -> int:
    from edgefleet.localstack.stack import FUNCTIONS, LocalStack, StackConfig

    if not 0 <= args.devices <= 64:
        raise ConfigError(f"--devices {args.devices}: choose 0 to 64")
    extra: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE")
        extra[key] = value
    config = StackConfig(
        workdir=Path(args.workdir),
        functions=() if args.no_functions else FUNCTIONS,
        function_env=extra,
    )
    stack = LocalStack(config)
    _progress(f"starting the local stack in {stack.workdir} (logs in {stack.workdir}/logs)")
    stack.start()
    try:
        if args.devices:
            _progress(f"creating {args.devices} simulated device network(s)")
            stack.add_devices(args.devices)
    except BaseException:
        stack.stop()
        raise
    state = stack.state()
    print(f"local stack up in {stack.workdir}")
    for name, port in state["ports"].items():
        print(f"  {name:28} 127.0.0.1:{port}")
    for device in state["devices"]:
        print(f"  device {device['id']:21} netns {device['name']} ({device['ns_addr']})")
    print("# for your shell:")
    for key, value in state["env"].items():
        print(f"export {key}={shlex.quote(value)}")
    print(f"# stop with: edgefleet down --workdir {shlex.quote(str(stack.workdir))}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from edgefleet.localstack.stack import down

    stopped = down(args.workdir)
    if not stopped:
        print(f"nothing running in {Path(args.workdir).resolve()}")
    for item in stopped:
        print(f"stopped {item}")
    return 0

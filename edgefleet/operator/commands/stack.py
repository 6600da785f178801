"""``edgefleet up`` / ``edgefleet down``: the local stack (emulators, registry, functions,
simulated devices) in the background, recorded in WORKDIR/stack.json."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from edgefleet.core.errors import ConfigError

DEFAULT_WORKDIR = ".edgefleet/stack"


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start the local stack in the background")
    up.add_argument("--workdir", default=DEFAULT_WORKDIR, help="state, logs and data")
    up.add_argument("--devices", type=int, default=0, help="simulated devices (namespaces)")
    up.add_argument(
        "--arm64-devices",
        type=int,
        default=0,
        help="emulated arm64 devices (ARCH=aarch64, images under qemu; ids arm1..N)",
    )
    up.add_argument(
        "--arm64-channels",
        default="beta",
        help="channels of the arm64 devices, round-robin (default %(default)s)",
    )
    up.add_argument(
        "--channels",
        default="latest,beta,stable",
        help="channels assigned to the devices round-robin (default %(default)s)",
    )
    up.add_argument(
        "--poll-seconds", type=float, default=2.0, help="device poll interval (default 2)"
    )
    up.add_argument(
        "--no-signing",
        action="store_true",
        help="do not sign manifest sets (default: a key in WORKDIR/keys, devices trust it)",
    )
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
    from edgefleet.core import layout
    from edgefleet.core.errors import InvalidInput
    from edgefleet.localstack.devices import launch

    if not 0 <= args.devices <= 64:
        raise ConfigError(f"--devices {args.devices}: choose 0 to 64")
    if not 0 <= args.arm64_devices <= 8:
        raise ConfigError(f"--arm64-devices {args.arm64_devices}: choose 0 to 8 (emulated)")
    if not 0.05 <= args.poll_seconds <= 3600:
        raise ConfigError(f"--poll-seconds {args.poll_seconds}: choose 0.05 to 3600")
    try:
        channels = layout.parse_channels(args.channels)
        arm64_channels = layout.parse_channels(args.arm64_channels)
    except InvalidInput as exc:
        raise ConfigError(f"--channels/--arm64-channels: {exc}") from exc
    extra: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE")
        extra[key] = value
    stack = launch(
        Path(args.workdir),
        devices=args.devices,
        arm64_devices=args.arm64_devices,
        arm64_channels=arm64_channels,
        channels=channels,
        poll_seconds=args.poll_seconds,
        signing_on=not args.no_signing,
        functions=not args.no_functions,
        function_env=extra,
        progress=_progress,
    )
    state = stack.state()
    print(f"local stack up in {stack.workdir}")
    for name, port in state["ports"].items():
        print(f"  {name:28} 127.0.0.1:{port}")
    for device in state["devices"]:
        print(
            f"  device {device['id']:21} netns {device['name']} ({device['ns_addr']})"
            f" {device.get('arch', '-')} channel {device.get('channel', '-')}"
        )
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

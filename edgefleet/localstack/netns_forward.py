"""TCP forwarder that gives a device network namespace the host's loopback services.

It listens INSIDE the namespace on ``127.0.0.1:PORT`` (the sockets are created after
``setns`` into it) and connects, from the host namespace, to ``127.0.0.1:PORT``. So code
in the namespace uses exactly the same addresses as code on the host (the emulator
endpoint, the registry host in digest-pinned image references), while the host services
keep listening on loopback only.

The device's veth link is the on/off switch: while the host side of the link is down
(``ip link set efh-ID down``, see :func:`edgefleet.localstack.netns.set_online`), new
connections are refused and open ones are cut, like a device losing its network.

Run as ``python -m edgefleet.localstack.netns_forward --netns NAME --link IF --port P …``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import socket
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from edgefleet.core import logs

log = logging.getLogger("edgefleet.netns_forward")
CLONE_NEWNET = 0x40000000


def setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listen_in_netns(netns_path: str, ports: Sequence[int]) -> list[socket.socket]:
    """Listening sockets bound to 127.0.0.1:PORT inside the namespace at ``netns_path``."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    socks = []
    try:
        setns(target)
        try:
            for port in ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                s.listen(128)
                s.setblocking(False)
                socks.append(s)
        finally:
            setns(own)
    finally:
        os.close(own)
        os.close(target)
    return socks


def link_up(link: str | None) -> bool:
    if not link:
        return True
    try:
        state = Path(f"/sys/class/net/{link}/operstate").read_text().strip()
        flags = int(Path(f"/sys/class/net/{link}/flags").read_text().strip(), 16)
    except OSError:
        return False
    return bool(flags & 0x1) and state != "down"  # IFF_UP and not operationally down


class Forwarder:
    def __init__(self, link: str | None) -> None:
        self.link = link
        self.conns: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def handler(self, port: int):  # type: ignore[no-untyped-def]
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not link_up(self.link):
                writer.close()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                writer.close()
                return
            self.conns.update((writer, up_writer))
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                self.conns.difference_update((writer, up_writer))

        return handle

    async def watch_link(self) -> None:
        """Cut open connections while the link is down."""
        while True:
            await asyncio.sleep(0.2)
            if not link_up(self.link):
                for writer in list(self.conns):
                    with contextlib.suppress(Exception):
                        writer.transport.abort()
                self.conns.clear()


async def run(netns_path: str, ports: Sequence[int], link: str | None) -> None:
    socks = listen_in_netns(netns_path, ports)
    fwd = Forwarder(link)
    servers = [
        await asyncio.start_server(fwd.handler(port), sock=sock)
        for port, sock in zip(ports, socks, strict=True)
    ]
    log.info("forwarding", extra=logs.fields(netns=netns_path, ports=list(ports), link=link))
    print("ready", flush=True)
    await asyncio.gather(fwd.watch_link(), *(s.serve_forever() for s in servers))


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netns_forward")
    parser.add_argument("--netns", required=True, help="namespace name (under /run/netns)")
    parser.add_argument("--link", default=None, help="host-side veth whose state gates traffic")
    parser.add_argument("--port", type=int, action="append", required=True)
    args = parser.parse_args(list(argv) if argv is not None else None)
    logs.configure("netns-forward")
    asyncio.run(run(f"/run/netns/{args.netns}", args.port, args.link))
    return 0


if __name__ == "__main__":
    sys.exit(main())

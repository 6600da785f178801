"""Child processes of the local stack: started in their own process group, logged to a
file, waited on until ready, and stopped with the whole group.

A separate ``edgefleet down`` has no Popen object, only what ``up`` recorded; it stops a
group through :func:`stop_recorded`, which first checks that the pid still belongs to the
process that was started (same kernel start time), so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgefleet.core.errors import EdgefleetError


class StackError(EdgefleetError):
    """A local-stack component failed to start, answer or stop."""


class MissingTool(StackError):
    """A binary the local stack needs is not installed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NotReady(Exception):
    """A readiness check's "not yet", with the reason (shown if it never becomes ready)."""


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def wait_for(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    on_timeout: Callable[[], str] | None = None,
) -> None:
    """Poll ``check`` until it returns true; raise StackError naming ``what`` on timeout.

    A check that raises :class:`NotReady` or an ``OSError`` (connection refused, a file not
    there yet) means "not yet": the last such reason is part of the timeout message, so a
    component that answers 503 or refuses connections for the whole wait says so instead
    of timing out silently. Any other exception is a broken check: it fails at once.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            if check():
                return
            last = ""
        except StackError:
            raise
        except NotReady as exc:
            last = str(exc)
        except OSError as exc:
            last = _reason(exc)
        except Exception as exc:
            raise StackError(f"{what}: the readiness check failed: {_reason(exc)}") from exc
        if time.monotonic() >= deadline:
            why = f" (last check: {last})" if last else ""
            extra = on_timeout() if on_timeout else ""
            raise StackError(f"{what} not ready after {timeout:.0f}s{why}{extra}")
        time.sleep(interval)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def http_ready(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers with an HTTP status below 500; otherwise raises
    :class:`NotReady` naming the status or the connection error (for :func:`wait_for`)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        raise NotReady(f"{url}: {_reason(getattr(exc, 'reason', exc) or exc)}") from exc
    if status >= 500:
        raise NotReady(f"{url} answered HTTP {status}")
    return True


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers with any HTTP status below 500."""
    try:
        return http_ready(url, timeout)
    except NotReady:
        return False


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces; fields after the closing paren are fixed.
    rest = stat.rsplit(")", 1)[1].split()
    return int(rest[19])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return rest[0] not in ("Z", "X")


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            rest = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):  # zombies are already dead
            members.append(int(entry.name))
    return members


def stop_group(pgid: int, *, timeout: float = 5.0) -> None:
    """SIGTERM the process group, wait up to ``timeout``, then SIGKILL what is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_members(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _group_members(pgid)
    if left:  # e.g. stuck in uninterruptible I/O: say so rather than report it stopped
        raise StackError(
            f"process group {pgid} survived SIGKILL (pids {', '.join(map(str, left))}); "
            f"see 'pgrep -a -g {pgid}' and stop them by hand"
        )


def stop_recorded(record: Mapping[str, Any], *, timeout: float = 5.0) -> bool:
    """Stop a process group recorded by :meth:`ManagedProcess.record`.

    Signals only when the leader pid still has the recorded start time, or, when the
    leader already exited, when members of its group remain (a group id is not reused
    while any member lives). Returns True when something was signalled.
    """
    pid, pgid, started = int(record["pid"]), int(record["pgid"]), record.get("start_time")
    now = process_start_time(pid)
    if now is not None and started is not None and now != int(started):
        return False  # the pid was recycled by an unrelated process
    if now is None and not _group_members(pgid):
        return False
    stop_group(pgid, timeout=timeout)
    return True


class ManagedProcess:
    """One child process in its own session/process group, logging to ``WORKDIR/logs``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        workdir: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.workdir = Path(workdir)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.log_path = self.workdir / "logs" / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.start_time: int | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise StackError(f"{self.name} was not started")
        return self._proc.pid

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise MissingTool(
                    f"{self.name}: {self.argv[0]} not found; run 'make install'"
                ) from exc
        self.start_time = process_start_time(self._proc.pid)
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _failure_detail(self) -> str:
        state = (
            "" if self.alive() else f" (exited with {self._proc.returncode if self._proc else '?'})"
        )
        return f"{state}; log {self.log_path}, last lines:\n{self.log_tail()}"

    def wait_ready(self, check: Callable[[], bool], *, timeout: float, what: str = "") -> None:
        """Wait until ``check()``; fail early when the process exits, showing the log tail."""
        label = what or self.name

        def ready() -> bool:
            if not self.alive():
                raise StackError(f"{label} exited before it was ready{self._failure_detail()}")
            return check()

        wait_for(ready, timeout=timeout, what=label, on_timeout=self._failure_detail)

    def stop(self, timeout: float = 5.0) -> None:
        if self._proc is None:
            return
        stop_group(self._proc.pid, timeout=timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=1)

    def record(self) -> dict[str, Any]:
        """What ``edgefleet down`` needs to stop this group later, from another process."""
        return {
            "name": self.name,
            "pid": self.pid,
            "pgid": self.pid,
            "start_time": self.start_time,
            "argv": self.argv,
            "log": str(self.log_path),
        }

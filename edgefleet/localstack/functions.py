"""Cloud Functions locally: one ``functions-framework`` process per function.

Pub/Sub push subscriptions POST the raw push format (``{"message": …, "subscription": …}``)
to ``.url``; functions-framework turns it into a ``messagePublished`` CloudEvent, as
Eventarc does in the cloud.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgefleet.localstack.process import ManagedProcess, MissingTool, free_port, port_open

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_ROOT / "functions" / "main.py"


def _functions_framework() -> str:
    here = Path(sys.executable).parent / "functions-framework"
    if here.is_file():
        return str(here)
    found = shutil.which("functions-framework")
    if found is None:
        raise MissingTool("functions-framework is missing (pip extra 'local'); run 'make install'")
    return found


class FunctionProcess:
    """``functions-framework --source SRC --target T --signature-type cloudevent``."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        target: str,
        *,
        source: str | os.PathLike[str] = DEFAULT_SOURCE,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        signature_type: str = "cloudevent",
        name: str | None = None,
    ) -> None:
        source = Path(source)
        if not source.is_file():
            raise MissingTool(f"function source {source} does not exist")
        self.target = target
        self.port = port or free_port()
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        argv = [
            _functions_framework(),
            "--source", str(source),
            "--target", target,
            "--signature-type", signature_type,
            "--host", "127.0.0.1",
            "--port", str(self.port),
        ]  # fmt: skip
        self.process = ManagedProcess(
            name or f"function-{target}", argv, workdir=workdir, env=full_env, cwd=source.parent
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def log_entries(self) -> list[dict[str, Any]]:
        """The function's structured (JSON-line) log entries so far; other lines skipped."""
        out = []
        for line in self.process.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def start(self, timeout: float = 30.0) -> FunctionProcess:
        self.process.start()
        self.process.wait_ready(
            lambda: port_open("127.0.0.1", self.port),
            timeout=timeout,
            what=f"function {self.target}",
        )
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> FunctionProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

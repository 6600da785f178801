"""``python -m device.podcheck``: the kubernetes V1Pod model check in a child process.

The kubernetes client's models keep ~40 MiB resident once imported, more than a device's
whole sync-agent budget. The agent therefore runs this check once per NEW manifest set
in a short-lived child: stdin ``{"manifests": {KEY: YAML text}}``, stdout
``{"results": {KEY: null | "why it is not a valid v1 Pod"}}``, exit 0. Anything else
(no interpreter, a crash, a timeout, a garbled answer) is a :class:`TransientError` for
the caller: the set is not accepted unchecked, it is retried on the next poll.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from edgefleet.core.errors import TransientError
from edgefleet.core.fsutil import atomic_write

DEFAULT_TIMEOUT = 60.0  # a cold import of the kubernetes client on a small ARM board


class ChildModelCheck:
    """A :data:`edgefleet.core.policy.ModelCheck` that runs the check in a child process."""

    def __init__(
        self, *, timeout: float = DEFAULT_TIMEOUT, command: Sequence[str] | None = None
    ) -> None:
        self.timeout = timeout
        self.command = list(command or (sys.executable, "-m", "device.podcheck"))

    def __call__(self, manifests: Mapping[str, str]) -> dict[str, str | None]:
        request = json.dumps({"manifests": dict(manifests)}).encode()
        try:
            proc = subprocess.run(
                self.command,
                input=request,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise TransientError(f"pod model check timed out after {self.timeout:g} s") from exc
        except OSError as exc:
            raise TransientError(f"pod model check could not start: {exc}") from exc
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.decode("utf-8", "replace").split()[-30:])
            raise TransientError(f"pod model check exited with {proc.returncode}: {tail}")
        try:
            results = json.loads(proc.stdout)["results"]
            answer = {key: results[key] for key in manifests}
        except (ValueError, KeyError, TypeError) as exc:
            raise TransientError(
                f"pod model check gave no answer for every manifest: {exc}"
            ) from exc
        if not all(v is None or isinstance(v, str) for v in answer.values()):
            raise TransientError("pod model check answered with something other than text")
        return answer


class CachedModelCheck:
    """Remembers verdicts of a model check by manifest SHA-256 (pure in the text, so a
    verdict never goes stale); only manifests never judged reach ``inner``.

    Why: the child costs ~0.75 s of CPU per new set on this class of machine, and a device
    sees the same manifests again and again: a channel flipping between two versions, a
    rollback, a set re-signed or re-issued with one manifest changed. Checks run one at a
    time, so callers sharing one cache (the fleet simulator's agents, bench/bench_fleet.py)
    wait for the first and then find its verdicts. A failed check caches nothing.
    Bounded: the ``capacity`` most recently used verdicts.

    ``shared``: a directory through which several PROCESSES share verdicts (one file per
    manifest SHA-256, written atomically; the first process to miss runs the child under
    a file lock, the others wait and read). Only the fleet simulator uses it, so that its
    worker processes pay one child per new set, as one device does; a device keeps its
    verdicts in memory.
    """

    def __init__(self, inner: Callable[[Mapping[str, str]], dict[str, str | None]], *,
                 capacity: int = 256, shared: Path | None = None) -> None:  # fmt: skip
        self.inner = inner
        self.capacity = capacity
        self.shared = shared
        self.hits = 0
        self.misses = 0
        self._verdicts: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, manifests: Mapping[str, str]) -> dict[str, str | None]:
        keys = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in manifests.items()}
        with self._lock:
            missing = {n: t for n, t in manifests.items() if keys[n] not in self._verdicts}
            self.hits += len(manifests) - len(missing)
            self.misses += len(missing)
            if missing:
                for name, verdict in self._judge(missing, keys).items():
                    self._verdicts[keys[name]] = verdict
            answer = {}
            for name in manifests:
                self._verdicts.move_to_end(keys[name])
                answer[name] = self._verdicts[keys[name]]
            while len(self._verdicts) > self.capacity:
                self._verdicts.popitem(last=False)
        return answer

    def _judge(
        self, manifests: Mapping[str, str], keys: Mapping[str, str]
    ) -> dict[str, str | None]:
        if self.shared is None:
            return self.inner(manifests)
        self.shared.mkdir(parents=True, exist_ok=True)
        with open(self.shared / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            known = {n: _read_verdict(self.shared / keys[n]) for n in manifests}
            missing = {n: t for n, t in manifests.items() if known[n] is _NONE}
            fresh = self.inner(missing) if missing else {}
            for name, verdict in fresh.items():
                atomic_write(self.shared / keys[name], json.dumps({"v": verdict}).encode())
        return {n: fresh[n] if n in fresh else known[n] for n in manifests}  # type: ignore[misc]


_NONE = object()  # no shared verdict (None is a verdict: the manifest is valid)


def _read_verdict(path: Path) -> object:
    try:
        value = json.loads(path.read_bytes()).get("v", _NONE)
    except (OSError, ValueError, AttributeError):
        return _NONE
    return value if value is None or isinstance(value, str) else _NONE


def skip_kubernetes_package_init() -> None:
    """Let ``kubernetes.client`` import without running ``kubernetes/__init__``.

    That ``__init__`` imports every kube-config loader (google-auth, requests-oauthlib,
    websocket, ...) which the model check never uses: more than half of this child's run
    time, paid on every new set. The package is registered unexecuted; its subpackages
    load normally from its path. Only for this single-purpose child process.
    """
    if "kubernetes" in sys.modules:
        return
    spec = importlib.util.find_spec("kubernetes")
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: the import in the check fails with its own message
    sys.modules["kubernetes"] = importlib.util.module_from_spec(spec)


def main() -> int:
    skip_kubernetes_package_init()
    from edgefleet.core.policy import model_errors

    try:
        manifests = json.load(sys.stdin)["manifests"]
        if not isinstance(manifests, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in manifests.items()
        ):
            raise TypeError("manifests must map names to YAML text")
    except (ValueError, KeyError, TypeError) as exc:
        print(f"edgefleet: podcheck expects {{'manifests': {{NAME: YAML}}}} on stdin: {exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    json.dump({"results": model_errors(manifests)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

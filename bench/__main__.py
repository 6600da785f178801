"""``python -m bench`` (``make bench``): run every benchmark and print each one's table.

Each ``bench/bench_*.py`` runs as its own process (as ``python bench/bench_X.py``), one
after the other, its output streamed as it comes; a summary (exit code, wall time per
benchmark) closes the run, and the exit code is non-zero when any benchmark failed.

By default each runs with QUICK arguments: fewer repetitions, the same measurements and
tables, so the whole run fits in minutes on a shared 2-core machine; its numbers are
noisier than a full run's. ``--full`` uses each benchmark's own defaults (the numbers
docs/benchmarks.md reports). A benchmark added later runs with its own defaults unless
it is listed in QUICK.

    python -m bench                      # every benchmark, quick
    python -m bench model_server rollout # only these (names without bench_ / .py)
    python -m bench --full               # each benchmark's own defaults
    python -m bench --list
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

# Quick arguments per benchmark (same tables, fewer repetitions).
QUICK: dict[str, tuple[str, ...]] = {
    "model_server": ("--requests", "30", "--rounds", "1"),
    "sync_poll": ("--polls", "15", "--idle-seconds", "5"),
    "tag_to_manifest": ("--retags", "20", "--cost-retags", "5", "--baseline", "5"),
    "rollout": ("--promotions", "4", "--cold", "3", "--first", "1"),
}


def discover(bench_dir: Path = BENCH_DIR) -> dict[str, Path]:
    """``{name: path}`` of every ``bench_NAME.py``, sorted by name."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(bench_dir.glob("bench_*.py"))}


def command(path: Path, name: str, *, full: bool) -> list[str]:
    return [sys.executable, str(path), *(() if full else QUICK.get(name, ()))]


def shown(argv: Sequence[str]) -> str:
    """The command as a reader would type it from the repository root."""
    return " ".join(
        str(Path(a).relative_to(REPO)) if a.startswith(str(REPO)) else a for a in argv[1:]
    )


def run_one(argv: Sequence[str]) -> tuple[int, float]:
    """Run one benchmark with its output going straight to ours; (exit code, seconds)."""
    started = time.monotonic()
    child = subprocess.Popen(argv, cwd=REPO)
    try:
        code = child.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the benchmark too: let it tear down its stack (subprocess.run
        # would kill it at once and leave its namespaces and emulators behind).
        child.wait()
        code = 130
    return code, time.monotonic() - started


def main(argv: Sequence[str] | None = None) -> int:
    benches = discover()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(benches)}")
    parser.add_argument("--full", action="store_true", help="each benchmark's own defaults")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in benches]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(benches)}")
    if args.list:
        for name, path in benches.items():
            print(f"{name:18} {shown(command(path, name, full=args.full))}")
        return 0
    results: list[tuple[str, int, float]] = []
    for name in args.names or list(benches):
        argv_one = command(benches[name], name, full=args.full)
        print(f"\n=== bench {name}: {shown(argv_one)}", flush=True)
        code, seconds = run_one(argv_one)
        results.append((name, code, seconds))
        if code == 130:
            break
    print("\n=== summary")
    for name, code, seconds in results:
        print(f"  {name:18} {'ok' if code == 0 else f'FAILED (exit {code})':18} {seconds:7.1f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m model_server --model M.tflite --labels L.txt --port 5000`` (or ``--model-dir``).

Configuration problems and models that cannot run on this device end the process at
start-up with one line, ``edgefleet: <what is wrong and the fix>``, and exit code 1 (2 for
bad flags or env).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from collections.abc import Mapping, Sequence
from types import FrameType

from edgefleet.core import logs
from edgefleet.core.errors import ConfigError, EdgefleetError, one_line
from edgefleet.core.logs import fields

log = logging.getLogger("model_server")


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before any thread starts.

    glibc gives each thread its own arena (up to 8 per core); with a dozen request,
    interpreter and telemetry threads the freed image buffers then sit fragmented in many
    arenas, and the resident size of the server grows by tens of MB. Same effect as
    ``MALLOC_ARENA_MAX``; a no-op on other C libraries.
    """
    import ctypes
    import ctypes.util

    m_arena_max = -8  # from glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(m_arena_max, arenas)
    except (OSError, AttributeError):
        pass


def limit_blas_threads() -> None:
    """One OpenBLAS thread unless the operator chose otherwise; call before numpy loads.

    numpy's OpenBLAS starts a thread per core when it loads, and those threads spin
    before they sleep: ~0.1 s of CPU per start here (a quarter of the server's start-up,
    on a device where the previous version still serves and other work waits). The
    server never calls BLAS (inference runs in LiteRT's own threads; numpy only converts
    and ranks arrays), so the threads buy nothing. ``OPENBLAS_NUM_THREADS`` set by the
    operator wins.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    limit_blas_threads()
    from model_server.config import load_config

    try:
        config = load_config(argv, environ)
    except ConfigError as exc:
        print(f"edgefleet: {one_line(exc)}", file=sys.stderr)
        return 2
    logs.configure("model_server", config.log_level)
    limit_malloc_arenas()

    from PIL import Image

    from model_server.app import ModelServer
    from model_server.serve import http_threads, make_server

    # Oversized images are refused by our own pixel check; Pillow's warning is noise.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
        server = ModelServer(config)
        http = make_server(server.app, config, server.workers)
    except EdgefleetError as exc:
        print(f"edgefleet: {one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the port is taken
        print(
            f"edgefleet: {one_line(f'cannot listen on {config.host}:{config.port}: {exc}')}",
            file=sys.stderr,
        )
        return 1

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    server.start()
    log.info(
        "serving",
        extra=fields(
            host=config.host,
            port=http.effective_port,
            http_threads=http_threads(config, server.workers),
        ),
    )
    try:
        http.run()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        http.close()
        server.close()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

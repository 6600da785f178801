"""Inference runtimes: LiteRT on the CPU (XNNPACK), LiteRT + Edge TPU delegate, ONNX Runtime.

A LiteRT interpreter is not thread-safe, so the LiteRT backend keeps a pool of them, one
per concurrent inference; ``invoke()`` releases the GIL, so two requests on two cores
really run in parallel. ONNX Runtime sessions are thread-safe and shared.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgefleet.core.errors import one_line
from edgefleet.core.logs import fields
from model_server.errors import ModelLoadError
from model_server.package import ModelPackage
from model_server.preprocess import TensorSpec

log = logging.getLogger(__name__)

EDGETPU_LIB = "libedgetpu.so.1"


# Why the Edge TPU delegate did not load. "absent" is normal on a CPU-only device; the
# others mean an Edge TPU install that is there but does not work, and are logged as errors.
ABSENT = "absent"  # no libedgetpu.so.1 on the loader's path (and no Coral pycoral)
BROKEN = "broken"  # libedgetpu (or pycoral) present but failed to load
NO_DEVICE = "no-device"  # the delegate loaded but no Edge TPU answered
DETAIL_CHARS = 300  # how much of a loader's error a delegate state carries


class DelegateUnavailable(Exception):
    """The Edge TPU delegate did not load; ``state`` says whether it is absent, broken or
    present without a device, so a broken install never passes for a missing one."""

    def __init__(self, state: str, detail: str) -> None:
        super().__init__(f"{state}: {detail}")
        self.state = state
        self.detail = detail


class Backend(Protocol):
    runtime: str
    runtime_version: str
    delegate: str
    model_path: Path
    input: TensorSpec
    output: TensorSpec

    def run(self, x: np.ndarray) -> np.ndarray:
        """One inference; returns the raw output tensor of the single example."""
        ...

    def close(self) -> None: ...


def _version(dist: str) -> str:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _spec(detail: dict[str, Any]) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


class LiteRTBackend:
    """A pool of interpreters of one model; each call borrows one for its inference."""

    runtime = "litert"

    def __init__(
        self,
        model_path: Path,
        make_interpreter: Callable[[], Any],
        *,
        pool_size: int,
        delegate: str,
        runtime_version: str,
    ) -> None:
        self.model_path = model_path
        self.delegate = delegate
        self.runtime_version = runtime_version
        self._pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        first = None
        for _ in range(pool_size):
            interpreter = make_interpreter()
            interpreter.allocate_tensors()
            first = first or interpreter
            self._pool.put(interpreter)
        assert first is not None
        inputs, outputs = first.get_input_details(), first.get_output_details()
        if len(inputs) != 1:
            raise ModelLoadError(f"{model_path.name}: expected 1 input tensor, has {len(inputs)}")
        self.input = _spec(inputs[0])
        self.output = _spec(outputs[0])
        self._in_index = int(inputs[0]["index"])
        self._out_index = int(outputs[0]["index"])
        self.pool_size = pool_size
        # Warm every interpreter up once: the first invoke allocates and packs weights,
        # which would otherwise land on the first client requests.
        zeros = np.zeros(self.input.shape, dtype=self.input.dtype)
        for _ in range(pool_size):
            self.run(zeros)

    @contextlib.contextmanager
    def _borrow(self) -> Iterator[Any]:
        interpreter = self._pool.get()
        try:
            yield interpreter
        finally:
            self._pool.put(interpreter)

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._borrow() as interpreter:
            interpreter.set_tensor(self._in_index, x)
            interpreter.invoke()
            return interpreter.get_tensor(self._out_index)  # a copy, safe after release

    def close(self) -> None:
        while not self._pool.empty():
            self._pool.get_nowait()


class OnnxBackend:
    """ONNX Runtime on the CPU (scikit-learn models exported by skl2onnx, zipmap off)."""

    runtime = "onnxruntime"
    delegate = "CPUExecutionProvider"

    _DTYPES = {
        "tensor(float)": np.float32,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
    }

    def __init__(self, model_path: Path, threads: int) -> None:
        import onnxruntime as ort  # imported only when an ONNX model is served

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types
            raise ModelLoadError(f"{model_path}: ONNX Runtime cannot load it: {exc}") from None
        self.model_path = model_path
        self.runtime_version = ort.__version__
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{model_path.name}: expected 1 input, has {len(inputs)}")
        inp = inputs[0]
        if inp.type not in self._DTYPES:
            raise ModelLoadError(f"{model_path.name}: input type {inp.type} is not supported")
        shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in inp.shape)
        if len(shape) != 2:
            raise ModelLoadError(
                f"{model_path.name}: ONNX models must take a [batch, features] input "
                f"(got shape {list(inp.shape)}); export image models as TFLite"
            )
        self._in_name = inp.name
        self.input = TensorSpec(shape=shape, dtype=np.dtype(self._DTYPES[inp.type]))
        candidates = [
            o
            for o in self._session.get_outputs()
            if o.type in ("tensor(float)", "tensor(double)") and len(o.shape) == 2
        ]
        named = [o for o in candidates if o.name == "probabilities"]
        if not (named or candidates):
            raise ModelLoadError(
                f"{model_path.name}: no [batch, classes] probability output; export with "
                "skl2onnx options {'zipmap': False}"
            )
        out = (named or candidates)[0]
        self._out_name = out.name
        n = out.shape[1] if isinstance(out.shape[1], int) else -1
        self.output = TensorSpec(shape=(1, n), dtype=np.dtype(np.float32))

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self._session.run([self._out_name], {self._in_name: x.astype(self.input.dtype)})
        return np.asarray(out[0])[0]

    def close(self) -> None:
        pass


def _litert_interpreter_factory(
    path: Path, threads: int, delegates: list[Any] | None = None
) -> Callable[[], Any]:
    from ai_edge_litert.interpreter import Interpreter

    def make() -> Any:
        return Interpreter(
            model_path=str(path), num_threads=threads, experimental_delegates=delegates
        )

    return make


def _coral_pycoral() -> Any:
    """Coral's pycoral.utils.edgetpu when it is installed; None when it is not (or the
    name belongs to PyPI's unrelated package). Raises DelegateUnavailable(BROKEN) when
    Coral's package is there but fails to import."""
    try:
        from pycoral.utils import edgetpu as coral
    except ModuleNotFoundError as exc:
        if exc.name in ("pycoral", "pycoral.utils", "pycoral.utils.edgetpu"):
            return None  # absent, or PyPI's "pycoral" (no utils.edgetpu)
        raise DelegateUnavailable(BROKEN, f"pycoral is installed but its import failed: "
                                          f"{one_line(exc, DETAIL_CHARS)}") from None  # fmt: skip
    except Exception as exc:  # e.g. its native module fails to load
        raise DelegateUnavailable(
            BROKEN, f"pycoral is installed but its import failed: {one_line(exc, DETAIL_CHARS)}"
        ) from None
    return coral if hasattr(coral, "make_interpreter") else None


# The external-delegate entry points LiteRT's load_delegate calls.
DELEGATE_SYMBOLS = ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate")


def _open_edgetpu_library() -> None:
    """dlopen libedgetpu.so.1: absent (the loader found no such file) vs broken (found, but
    the file or one of its dependencies did not load, e.g. a wrong architecture, a
    truncated file, libusb missing; or it is no delegate library). The symbols are checked
    here because LiteRT's Delegate object fails again in its finaliser when they lack."""
    try:
        library = ctypes.CDLL(EDGETPU_LIB)
    except OSError as exc:
        message = one_line(exc, DETAIL_CHARS)
        if message == f"{EDGETPU_LIB}: cannot open shared object file: No such file or directory":
            raise DelegateUnavailable(ABSENT, f"{EDGETPU_LIB} is not installed") from None
        raise DelegateUnavailable(
            BROKEN, f"{EDGETPU_LIB} is installed but failed to load: {message}"
        ) from None
    missing = [name for name in DELEGATE_SYMBOLS if not hasattr(library, name)]
    if missing:
        raise DelegateUnavailable(
            BROKEN,
            f"{EDGETPU_LIB} is installed but is not a working delegate: "
            f"{library._name} lacks {', '.join(missing)}",
        )


def edgetpu_interpreter_factory(path: Path) -> Callable[[], Any]:
    """What pycoral's ``make_interpreter`` does; pycoral itself when it is installed.

    The delegate is created here, once, so that every failure is classified up front
    (:class:`DelegateUnavailable` with ``state`` absent, broken or no-device).
    """
    coral = _coral_pycoral()
    if coral is not None:
        try:
            first = coral.make_interpreter(str(path))
        except ValueError as exc:  # its load_delegate: the library loaded, no device
            raise DelegateUnavailable(NO_DEVICE, one_line(exc, DETAIL_CHARS)) from None
        except Exception as exc:
            detail = f"pycoral make_interpreter: {one_line(exc, DETAIL_CHARS)}"
            raise DelegateUnavailable(BROKEN, detail) from None
        made = [first]
        return lambda: made.pop() if made else coral.make_interpreter(str(path))
    _open_edgetpu_library()
    from ai_edge_litert.interpreter import load_delegate

    try:
        delegate = load_delegate(EDGETPU_LIB)
    except ValueError as exc:  # tflite_plugin_create_delegate returned no delegate
        raise DelegateUnavailable(
            NO_DEVICE,
            f"{EDGETPU_LIB} loaded but no Edge TPU answered: {one_line(exc, DETAIL_CHARS)}",
        ) from None
    except (AttributeError, OSError, RuntimeError) as exc:  # e.g. not a delegate library
        detail = one_line(exc, DETAIL_CHARS)
        raise DelegateUnavailable(
            BROKEN, f"{EDGETPU_LIB} is installed but is not a working delegate: {detail}"
        ) from None
    return _litert_interpreter_factory(path, 1, [delegate])


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class LoadedModel:
    backend: Backend
    choice: str  # why this file was picked, for /version/ and the start-up log
    # The Edge TPU probe: "" (not probed: the package has no Edge TPU model), "loaded",
    # or a DelegateUnavailable state (absent, broken, no-device).
    edgetpu: str = ""


def _edgetpu_failure(path: Path, reason: str) -> ModelLoadError:
    return ModelLoadError(
        f"{path} is compiled for the Edge TPU (unresolved custom op: edgetpu-custom-op on "
        f"the CPU) but the Edge TPU delegate did not load ({reason}); run it on a device "
        "with a Coral Edge TPU, or ship the CPU model (model.tflite) in the package"
    )


def load_model(
    package: ModelPackage,
    *,
    workers: int,
    threads: int,
    edgetpu_factory: Callable[[Path], Callable[[], Any]] = edgetpu_interpreter_factory,
) -> LoadedModel:
    """Pick the Edge TPU variant when its delegate loads, else the CPU model."""
    if package.edgetpu_model is not None:
        try:
            make = edgetpu_factory(package.edgetpu_model)
        except DelegateUnavailable as exc:
            if package.cpu_model is None:
                raise _edgetpu_failure(package.edgetpu_model, str(exc)) from None
            # An install that is there but broken is an operator's problem to fix: an
            # error, not the routine "no Edge TPU on this device".
            level = logging.INFO if exc.state == ABSENT else logging.ERROR
            log.log(
                level,
                f"Edge TPU delegate {exc.state}; serving the CPU model",
                extra=fields(edgetpu=exc.state, reason=exc.detail, model=str(package.cpu_model)),
            )
            reason = f"Edge TPU unavailable ({exc}); CPU model"
            edgetpu = exc.state
        else:
            # One interpreter: the Edge TPU runs one inference at a time anyway.
            backend = _build(
                lambda: LiteRTBackend(
                    package.edgetpu_model,  # type: ignore[arg-type]
                    make,
                    pool_size=1,
                    delegate="edgetpu",
                    runtime_version=_version("ai-edge-litert"),
                ),
                package.edgetpu_model,
            )
            return LoadedModel(backend, "Edge TPU delegate loaded; Edge TPU model", "loaded")
    else:
        reason, edgetpu = "CPU model", ""
    path = package.cpu_model
    assert path is not None
    if path.suffix == ".onnx":
        return LoadedModel(OnnxBackend(path, threads), reason, edgetpu)
    make = _litert_interpreter_factory(path, threads)
    backend = _build(
        lambda: LiteRTBackend(
            path,
            make,
            pool_size=workers,
            delegate="xnnpack",
            runtime_version=_version("ai-edge-litert"),
        ),
        path,
    )
    return LoadedModel(backend, reason, edgetpu)


def _build(construct: Callable[[], LiteRTBackend], path: Path) -> LiteRTBackend:
    try:
        return construct()
    except ModelLoadError:
        raise
    except (RuntimeError, ValueError) as exc:
        message = " ".join(str(exc).split())
        if "edgetpu-custom-op" in message:
            raise _edgetpu_failure(path, "the model was loaded on the CPU") from None
        raise ModelLoadError(f"{path}: LiteRT cannot load it: {message[:300]}") from None

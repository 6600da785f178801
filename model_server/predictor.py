"""The inference core: bytes in, ranked labels out. No HTTP, no telemetry.

Shared by the HTTP app, the golden self-test and the benchmark's in-process baseline, so
all three measure and check exactly the same pipeline.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from edgefleet.core.logs import fields
from model_server.errors import ModelLoadError, RequestError
from model_server.package import ModelPackage
from model_server.preprocess import (
    ImageInput,
    decode_image,
    decode_output,
    encode,
    image_to_tensor,
    parse_features,
    top_k,
)
from model_server.runtime import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranked:
    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Prediction:
    classes: tuple[Ranked, ...]  # best first
    preprocess_s: float
    inference_s: float

    @property
    def top1(self) -> Ranked:
        return self.classes[0]


class Predictor:
    def __init__(
        self,
        loaded: LoadedModel,
        package: ModelPackage,
        *,
        max_pixels: int,
        decode_slots: int = 2,
    ) -> None:
        self.backend = loaded.backend
        self.choice = loaded.choice
        self.package = package
        self.labels = package.labels
        self.max_pixels = max_pixels
        # Full-size decoded frames are the server's largest allocations: at most this many
        # exist at once, whatever the number of HTTP threads.
        self._decode_slots = threading.BoundedSemaphore(decode_slots)
        spec = self.backend.input
        self.task = package.metadata.task or {4: "image", 2: "tabular"}.get(len(spec.shape), "")
        if not self.task:
            raise ModelLoadError(
                f"{self.backend.model_path.name}: cannot tell the task from input shape "
                f'{list(spec.shape)}; set "task" in metadata.json'
            )
        self.image_input: ImageInput | None = None
        self.n_features: int | None = None
        if self.task == "image":
            try:
                self.image_input = ImageInput.from_spec(
                    spec, package.metadata.input_mean, package.metadata.input_std
                )
            except ValueError as exc:
                raise ModelLoadError(f"{self.backend.model_path.name}: {exc}") from None
        else:
            if len(spec.shape) != 2:
                raise ModelLoadError(
                    f"{self.backend.model_path.name}: a tabular model needs a [batch, features] "
                    f"input, has {list(spec.shape)}"
                )
            self.n_features = spec.shape[1] if spec.shape[1] > 0 else None
        out_shape = self.backend.output.shape
        self.n_classes = math.prod(out_shape) if all(d > 0 for d in out_shape) else None
        if self.n_classes and len(self.labels) and len(self.labels) != self.n_classes:
            log.warning(
                "labels do not match the model's classes",
                extra=fields(labels=len(self.labels), classes=self.n_classes),
            )

    def _rank(self, raw: np.ndarray, k: int) -> tuple[Ranked, ...]:
        scores = decode_output(raw, self.backend.output)
        return tuple(Ranked(i, self.labels.get(i), s) for i, s in top_k(scores, k))

    def image_tensor(self, data: bytes) -> np.ndarray:
        if self.image_input is None:
            raise RequestError(
                415, "unsupported_media_type", 'this model takes JSON {"features": [...]}'
            )
        with self._decode_slots:
            return image_to_tensor(decode_image(data, self.max_pixels), self.image_input)

    def features_tensor(self, body: bytes) -> np.ndarray:
        if self.task != "tabular":
            raise RequestError(415, "unsupported_media_type", "this model takes images")
        row = parse_features(body, self.n_features)
        spec = self.backend.input
        if np.issubdtype(spec.dtype, np.integer) and not spec.quantized:
            return row.astype(spec.dtype)
        return encode(row, spec)

    def infer(self, tensor: np.ndarray, k: int, preprocess_s: float = 0.0) -> Prediction:
        start = time.perf_counter()
        try:
            raw = self.backend.run(tensor)
        except (ValueError, RuntimeError) as exc:  # e.g. ONNX rejects a feature value
            message = f"model rejected the input: {exc}"
            raise RequestError(400, "rejected_by_model", message) from None
        inference_s = time.perf_counter() - start
        return Prediction(self._rank(raw, k), preprocess_s, inference_s)

    def predict_image(self, data: bytes, k: int) -> Prediction:
        start = time.perf_counter()
        tensor = self.image_tensor(data)
        return self.infer(tensor, k, time.perf_counter() - start)

    def predict_features(self, body: bytes, k: int) -> Prediction:
        start = time.perf_counter()
        tensor = self.features_tensor(body)
        return self.infer(tensor, k, time.perf_counter() - start)

    def predict_bytes(self, data: bytes, k: int) -> Prediction:
        """Golden inputs: image files for image models, JSON features for tabular ones."""
        if self.task == "image":
            return self.predict_image(data, k)
        return self.predict_features(data, k)

"""Client bytes -> input tensor, and output tensor -> ranked classes. Pure functions.

Everything is derived from the model's own tensors: input size and dtype, quantization
scale/zero-point; images are decoded by Pillow, converted to RGB and resized with LANCZOS
(the pipeline under which the reference results in the test data were observed).
Every malformed input ends as a :class:`RequestError` (4xx), never as an exception that
escapes as a 500.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from model_server.errors import RequestError

# Decoders we accept: common photo formats only, to keep the parser attack surface small.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and affine quantization of one model tensor (scale 0 = not quantized)."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale > 0 and np.issubdtype(self.dtype, np.integer)


@dataclass(frozen=True)
class ImageInput:
    """How images become this model's input: NHWC size plus the pixel normalization."""

    height: int
    width: int
    channels: int
    spec: TensorSpec
    mean: float = 128.0
    std: float = 128.0

    @classmethod
    def from_spec(cls, spec: TensorSpec, mean: float | None, std: float | None) -> ImageInput:
        if len(spec.shape) != 4 or spec.shape[3] not in (1, 3) or min(spec.shape[1:3]) < 1:
            raise ValueError(f"image input must be NHWC with 1 or 3 channels, got {spec.shape}")
        return cls(
            height=int(spec.shape[1]),
            width=int(spec.shape[2]),
            channels=int(spec.shape[3]),
            spec=spec,
            mean=128.0 if mean is None else mean,
            std=128.0 if std is None else std,
        )

    @property
    def raw_pixels(self) -> bool:
        """True when the quantization already maps raw uint8 pixels to (p - mean) / std."""
        s = self.spec
        return (
            s.dtype == np.uint8
            and s.quantized
            and abs(s.scale * self.std - 1.0) < 1e-5
            and abs(self.mean - s.zero_point) < 1e-5
        )


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode to RGB with the pixel count checked from the header, before any decoding."""
    if not data:
        raise RequestError(400, "empty_body", "empty image: send the image bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise RequestError(413, "too_many_pixels", f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise RequestError(
            400, "not_an_image", f"not a decodable image; send one of {', '.join(IMAGE_FORMATS)}"
        ) from None
    except Exception as exc:  # any parser failure is the client's bad input
        raise RequestError(400, "invalid_image", f"invalid image header: {exc}") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise RequestError(400, "invalid_image", f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise RequestError(
            413,
            "too_many_pixels",
            f"image is {width}x{height} pixels, more than the limit of {max_pixels}",
        )
    try:
        img.load()
        # convert() of an RGB image would copy it: a full-size frame per request saved.
        return img if img.mode == "RGB" else img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise RequestError(413, "too_many_pixels", f"image too large: {exc}") from None
    except Exception as exc:  # truncated/corrupt data raise OSError, ValueError…
        raise RequestError(400, "invalid_image", f"truncated or corrupt image: {exc}") from None


def image_to_tensor(img: Image.Image, inp: ImageInput) -> np.ndarray:
    """Resize an RGB image to the model input and encode it in the input tensor's dtype."""
    if inp.channels == 1:
        img = img.convert("L")
    resized = img.resize((inp.width, inp.height), Image.Resampling.LANCZOS)
    pixels = np.asarray(resized, dtype=np.uint8).reshape(inp.height, inp.width, inp.channels)
    if inp.raw_pixels:
        return pixels[np.newaxis]
    real = (pixels.astype(np.float32) - inp.mean) / inp.std
    return encode(real[np.newaxis], inp.spec)


def encode(real: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Real values -> the tensor's dtype (quantized with its scale/zero-point when it is)."""
    if spec.quantized:
        info = np.iinfo(spec.dtype)
        q = np.round(real / spec.scale + spec.zero_point)
        return np.clip(q, info.min, info.max).astype(spec.dtype)
    return real.astype(spec.dtype)


def decode_output(raw: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Output tensor -> 1-D float32 scores, dequantized when the tensor is quantized."""
    flat = np.asarray(raw).reshape(-1)
    if spec.quantized:
        return (flat.astype(np.float32) - spec.zero_point) * np.float32(spec.scale)
    return flat.astype(np.float32)


def top_k(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Highest scores first; equal scores rank the higher class index first.

    Quantized outputs tie often. The tie rule is fixed (not left to the sort algorithm) and
    is the one of TensorFlow Lite's reference ``label_image`` (``argsort()[-k:][::-1]``).
    """
    order = np.lexsort((np.arange(scores.size), scores))[::-1][:k]
    return [(int(i), float(scores[i])) for i in order]


# ``{"features": [...]}`` nests 2 deep; a little slack for clients that wrap it.
MAX_JSON_DEPTH = 4
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(body: bytes, limit: int) -> int:
    """The deepest nesting of ``[``/``{`` in ``body`` outside strings, counted without
    parsing (stops once past ``limit``), so a hostile ``[[[[…`` is refused before
    ``json.loads`` can recurse on it. Unbalanced input is left to the parser."""
    brackets = _JSON_STRING.sub(b'""', body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for c in brackets:
        if c in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


def parse_features(
    body: bytes, n_features: int | None, max_depth: int = MAX_JSON_DEPTH
) -> np.ndarray:
    """JSON ``{"features": [numbers]}`` -> a float64 row vector, validated.

    The caller bounds the body's size; the nesting depth is checked here before parsing.
    """
    if json_depth(body, max_depth) > max_depth:
        raise RequestError(
            400, "invalid_json", f"JSON nested deeper than {max_depth} levels: not a feature row"
        )
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = "too deeply nested" if isinstance(exc, RecursionError) else str(exc)
        raise RequestError(400, "invalid_json", f"body is not valid JSON: {reason}") from None
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list) or not features:
        raise RequestError(
            400, "bad_features", 'send a JSON object {"features": [number, ...]}'
        ) from None
    if n_features is not None and len(features) != n_features:
        raise RequestError(
            400, "bad_features", f"expected {n_features} features, got {len(features)}"
        )
    for i, x in enumerate(features):
        if not _finite_number(x):
            raise RequestError(400, "bad_features", f"features[{i}] must be a finite number")
    return np.asarray(features, dtype=np.float64)[np.newaxis]


def _finite_number(x: object) -> bool:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:  # an int beyond float range
        return False

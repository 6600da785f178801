"""The model server over real HTTP: waitress on a loopback port, real LiteRT on the real
Coral models of ../shared/testdata, ONNX Runtime on a scikit-learn model built here."""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image
from support.model_server_proc import ServerProcess

from edgefleet.localstack.process import free_port
from model_server.config import ServerConfig
from model_server.serve import serve_in_background

REPO = Path(__file__).resolve().parent.parent
CORAL = REPO.parent / "shared" / "testdata" / "coral"
V1 = "mobilenet_v1_0.25_128_quant.tflite"
V2 = "mobilenet_v2_1.0_224_quant.tflite"
V1_TPU = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
LABELS = "imagenet_labels.txt"
IMAGES = ("grace_hopper.bmp", "cat_720p.jpg", "hot_dog.jpg")

# The table of ../shared/testdata/README.md: (model, image) -> (index, label, score).
EXPECTED = {
    (V2, "grace_hopper.bmp"): (653, "military uniform", 0.918),
    (V2, "cat_720p.jpg"): (286, "Egyptian cat", 0.801),
    (V2, "hot_dog.jpg"): (935, "hotdog, hot dog, red hot", 0.934),
    (V1, "grace_hopper.bmp"): (401, "academic gown", 0.328),
    (V1, "cat_720p.jpg"): (283, "tiger cat", 0.281),
    (V1, "hot_dog.jpg"): (113, "conch", 0.312),
}
MIME = {".bmp": "image/bmp", ".jpg": "image/jpeg", ".png": "image/png"}


@pytest.fixture(scope="module")
def coral() -> Path:
    if not (CORAL / V2).is_file():
        pytest.fail(
            f"test models missing: {CORAL} must hold the Coral test data "
            "(see ../shared/testdata/README.md)",
            pytrace=False,
        )
    return CORAL


def config(coral: Path, model: str = V2, **overrides: Any) -> ServerConfig:
    values: dict[str, Any] = {
        "model": coral / model,
        "labels": coral / LABELS,
        "telemetry": "off",
        "workers": 2,
    }
    values.update(overrides)
    return ServerConfig(**values)


@pytest.fixture(scope="module")
def v2(coral: Path) -> Iterator[tuple[Any, str]]:
    with serve_in_background(
        config(coral, V2, container_digest="sha256:" + "ab" * 32, max_body_bytes=2 * 1024 * 1024)
    ) as served:
        served[0].wait_selftest()
        yield served


@pytest.fixture(scope="module")
def v1(coral: Path) -> Iterator[tuple[Any, str]]:
    with serve_in_background(config(coral, V1)) as served:
        served[0].wait_selftest()
        yield served


def post_image(url: str, path: Path, *, multipart: bool, top_k: int | None = None) -> Any:
    params = {"top_k": top_k} if top_k else None
    data = path.read_bytes()
    if multipart:
        r = requests.post(f"{url}/predict/", files={"image": (path.name, data)}, params=params)
    else:
        headers = {"Content-Type": MIME[path.suffix]}
        r = requests.post(f"{url}/predict/", data=data, headers=headers, params=params)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(("model", "image"), sorted(EXPECTED))
def test_top1_matches_the_testdata_table(
    coral: Path, v1: tuple[Any, str], v2: tuple[Any, str], model: str, image: str
) -> None:
    url = (v2 if model == V2 else v1)[1]
    index, label, score = EXPECTED[(model, image)]
    for multipart in (True, False):
        result = post_image(url, coral / image, multipart=multipart, top_k=3)
        assert result["index"] == index
        assert result["label"].startswith(label)
        assert round(result["score"], 3) == score
        assert len(result["predictions"]) == 3
        assert result["predictions"][0]["index"] == index
        scores = [p["score"] for p in result["predictions"]]
        assert scores == sorted(scores, reverse=True)


def test_version_reports_digest_model_and_runtime(coral: Path, v2: tuple[Any, str]) -> None:
    doc = requests.get(f"{v2[1]}/version/").json()
    assert doc["version"] == "sha256:" + "ab" * 32
    assert doc["model"] == "mobilenet_v2_1.0_224_quant"
    assert doc["sha256"] == hashlib.sha256((coral / V2).read_bytes()).hexdigest()
    assert doc["runtime"] == "litert"
    assert doc["delegate"] == "xnnpack"
    assert doc["task"] == "image"
    assert doc["labels"] == 1001


def test_version_without_digest_says_unknown(v1: tuple[Any, str]) -> None:
    assert requests.get(f"{v1[1]}/version").json()["version"] == "unknown"


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` over a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _real_bomb() -> bytes:
    """A valid 8000x8000 PNG: 64 Mpx that compress to ~60 kB."""
    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, "PNG")
    return buf.getvalue()


def test_bad_uploads_get_4xx_json_errors(coral: Path, v2: tuple[Any, str]) -> None:
    url = v2[1]
    jpg = (coral / "hot_dog.jpg").read_bytes()
    bmp = (coral / "grace_hopper.bmp").read_bytes()
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("empty raw", {"data": b"", "headers": {"Content-Type": "image/jpeg"}}, 400, "empty_body"),
        ("empty multipart", {"files": {"image": ("x.jpg", b"")}}, 400, "empty_body"),
        (
            "truncated jpeg",
            {"data": jpg[: len(jpg) // 3], "headers": {"Content-Type": "image/jpeg"}},
            400,
            "invalid_image",
        ),
        (
            "truncated bmp",
            {"files": {"image": ("x.bmp", bmp[: len(bmp) // 2])}},
            400,
            "invalid_image",
        ),
        (
            "not an image",
            {"data": b"#!/bin/sh\nrm -rf /\n" * 20, "headers": {"Content-Type": "image/png"}},
            400,
            "not_an_image",
        ),
        (
            "svg",
            {"files": {"image": ("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>')}},
            400,
            "not_an_image",
        ),
        (
            "huge body",
            {"data": b"\xff" * (3 * 1024 * 1024), "headers": {"Content-Type": "image/jpeg"}},
            413,
            "too_large",
        ),
        (
            "huge multipart",
            {"files": {"image": ("x.jpg", b"\xff" * (2 * 1024 * 1024 + 1))}},
            413,
            "too_large",
        ),
        (
            "bomb header",
            {"data": _png_with_size(50_000, 50_000), "headers": {"Content-Type": "image/png"}},
            413,
            "too_many_pixels",
        ),
        (
            "header over the pixel limit",
            {"files": {"image": ("x.png", _png_with_size(5000, 5000))}},
            413,
            "too_many_pixels",
        ),
        (
            "real decompression bomb",
            {"data": _real_bomb(), "headers": {"Content-Type": "image/png"}},
            413,
            "too_many_pixels",
        ),
        (
            "form-encoded",
            {"data": jpg, "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
            415,
            "unsupported_media_type",
        ),
        ("no content type", {"data": jpg, "headers": {"Content-Type": ""}}, 415, None),
        (
            "JSON to an image model",
            {"json": {"features": [1, 2, 3]}},
            415,
            "unsupported_media_type",
        ),
        ("multipart without image", {"files": {"file": ("x.jpg", jpg)}}, 400, "missing_image"),
    ]
    for name, kwargs, status, kind in cases:
        r = requests.post(f"{url}/predict/", **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.headers["Content-Type"] == "application/json", name
        body = r.json()
        if kind:
            assert body["error"] == kind, (name, body)
        assert body["message"], name
    # Far beyond the limit: waitress refuses it from the Content-Length, without reading it.
    r = requests.post(
        f"{url}/predict/",
        data=b"\xff" * (5 * 1024 * 1024),
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == 413
    for params in ({"top_k": "x"}, {"top_k": "0"}, {"top_k": "101"}):
        r = requests.post(f"{url}/predict/", params=params, files={"image": ("a.jpg", jpg)})
        assert (r.status_code, r.json()["error"]) == (400, "bad_top_k")
    assert requests.get(f"{url}/predict/").status_code == 405
    assert requests.get(f"{url}/etc/passwd").json()["error"] == "not_found"
    # Still healthy and correct after all of that; every refusal was counted by kind.
    assert post_image(url, coral / "hot_dog.jpg", multipart=True)["index"] == 935
    metrics = requests.get(f"{url}/metrics").text
    assert 'edgefleet_errors_total{kind="too_many_pixels"} 3.0' in metrics
    assert 'edgefleet_errors_total{kind="empty_body"} 2.0' in metrics


def test_parallel_clients_get_the_sequential_answers(coral: Path, v2: tuple[Any, str]) -> None:
    url = v2[1]
    sequential = {
        image: post_image(url, coral / image, multipart=True)["predictions"] for image in IMAGES
    }
    jobs = [IMAGES[i % 3] for i in range(64)]

    def call(image: str) -> tuple[str, Any]:
        return image, post_image(url, coral / image, multipart=bool(len(image) % 2))["predictions"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, jobs))
    assert len(results) == 64
    for image, predictions in results:
        assert predictions == sequential[image]


def test_metrics_count_predictions_and_latency(coral: Path, v1: tuple[Any, str]) -> None:
    url = v1[1]
    before = requests.get(f"{url}/metrics").text
    for _ in range(2):
        post_image(url, coral / "grace_hopper.bmp", multipart=True)

    def value(text: str, line_start: str) -> float:
        for line in text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[-1])
        return 0.0

    after = requests.get(f"{url}/metrics").text
    label = 'edgefleet_predictions_total{label="academic gown, academic robe, judge\'s robe"}'
    assert value(after, label) == value(before, label) + 2
    count = "edgefleet_inference_duration_seconds_count"
    assert value(after, count) == value(before, count) + 2
    http = 'edgefleet_http_request_duration_seconds_count{endpoint="/predict/"}'
    assert value(after, http) == value(before, http) + 2
    assert value(after, "edgefleet_ready") == 1.0


def _package(tmp_path: Path, coral: Path, *, golden_top1: int | None, **meta: Any) -> Path:
    pkg = tmp_path / "model"
    (pkg / "golden").mkdir(parents=True)
    shutil.copy(coral / V1, pkg / "model.tflite")
    shutil.copy(coral / LABELS, pkg / "labels.txt")
    shutil.copy(coral / "grace_hopper.bmp", pkg / "golden" / "grace_hopper.bmp")
    doc: dict[str, Any] = {"name": "mobilenet", "version": "mobilenet_1_1764000000", **meta}
    if golden_top1 is not None:
        doc["golden"] = [{"input": "golden/grace_hopper.bmp", "top1": golden_top1}]
    (pkg / "metadata.json").write_text(json.dumps(doc))
    return pkg


def test_golden_self_test_passes_then_ready(tmp_path: Path, coral: Path) -> None:
    pkg = _package(tmp_path, coral, golden_top1=401)
    with serve_in_background(ServerConfig(model_dir=pkg, telemetry="off", workers=1)) as (
        server,
        url,
    ):
        assert server.wait_selftest() == "passed"
        r = requests.get(f"{url}/readyz")
        assert r.status_code == 200
        assert r.json()["self_test"]["results"][0]["got"] == 401
        version = requests.get(f"{url}/version/").json()
        assert (version["model"], version["model_version"]) == (
            "mobilenet",
            "mobilenet_1_1764000000",
        )
        assert version["model_file"] == "model.tflite"


def test_wrong_golden_answer_keeps_readyz_failing(tmp_path: Path, coral: Path) -> None:
    pkg = _package(tmp_path, coral, golden_top1=653)  # v2's answer, not this v1 model's
    with serve_in_background(ServerConfig(model_dir=pkg, telemetry="off", workers=1)) as (
        server,
        url,
    ):
        assert server.wait_selftest() == "failed"
        for _ in range(3):
            r = requests.get(f"{url}/readyz")
            assert r.status_code == 503
            assert "expected top-1 653, got 401" in r.json()["self_test"]["error"]
            time.sleep(0.1)
        assert requests.get(f"{url}/healthz").status_code == 200
        r = requests.post(f"{url}/predict/", files={"image": ("a.bmp", b"BM")})
        assert (r.status_code, r.json()["error"]) == (503, "not_ready")
        metrics = requests.get(f"{url}/metrics").text
        assert "edgefleet_ready 0.0" in metrics


def test_model_dir_without_tpu_picks_the_cpu_model_and_says_so(tmp_path: Path, coral: Path) -> None:
    pkg = _package(tmp_path, coral, golden_top1=401)
    shutil.copy(coral / V1_TPU, pkg / "model_edgetpu.tflite")
    with serve_in_background(ServerConfig(model_dir=pkg, telemetry="off", workers=1)) as (
        server,
        url,
    ):
        assert server.wait_selftest() == "passed"
        version = requests.get(f"{url}/version/").json()
        assert version["model_file"] == "model.tflite"
        assert version["delegate"] == "xnnpack"
        assert "Edge TPU unavailable" in version["selected"]
        assert "libedgetpu.so.1" in version["selected"]
        assert version["edgetpu"] == "absent"  # this machine has no libedgetpu at all


def _loaded_library(soname: str) -> Path:
    """The file the dynamic loader opens for ``soname`` here (from /proc/self/maps)."""
    ctypes.CDLL(soname)
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.rstrip().endswith(soname) or f"/{soname}" in line:
            return Path(line.split()[-1]).resolve()
    raise AssertionError(f"{soname} not found in /proc/self/maps")


def _broken_edgetpu_dirs(tmp_path: Path) -> dict[str, Path]:
    """Two real broken installs of libedgetpu.so.1, each in its own LD_LIBRARY_PATH dir:
    a file the loader rejects (no ELF header) and a real shared library that loads but is
    no delegate (libz under the name), as a wrong or half-finished install would be."""
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "libedgetpu.so.1").write_bytes(b"\x7fELF but not really" + bytes(64))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    shutil.copy(_loaded_library("libz.so.1"), wrong / "libedgetpu.so.1")
    return {"garbage": garbage, "wrong": wrong}


def test_broken_edgetpu_install_is_reported_as_broken_not_absent(
    tmp_path: Path, coral: Path
) -> None:
    """A libedgetpu.so.1 that is present but does not load: the server still serves the
    CPU model, and /version/ and an ERROR log line say the install is broken (and why)."""
    pkg = _package(tmp_path, coral, golden_top1=401)
    shutil.copy(coral / V1_TPU, pkg / "model_edgetpu.tflite")
    for kind, libdir in _broken_edgetpu_dirs(tmp_path).items():
        log = tmp_path / f"{kind}.log"
        env = {"LD_LIBRARY_PATH": str(libdir), "EDGEFLEET_TELEMETRY": "off"}
        with ServerProcess(["--model-dir", str(pkg), "--host", "127.0.0.1"], env, log) as srv:
            version = requests.get(f"{srv.url}/version/").json()
        assert (version["edgetpu"], version["delegate"]) == ("broken", "xnnpack"), kind
        assert "is installed but" in version["selected"], version["selected"]
        entries = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        [error] = [e for e in entries if e["severity"] == "ERROR"]
        assert error["edgetpu"] == "broken" and "libedgetpu.so.1" in error["reason"]


def test_broken_edgetpu_install_without_cpu_model_fails_startup_saying_broken(
    tmp_path: Path, coral: Path
) -> None:
    libdir = _broken_edgetpu_dirs(tmp_path)["wrong"]
    proc = _run_cli(
        ["--model", str(coral / V1_TPU), "--labels", str(coral / LABELS), "--port", "0"],
        {"LD_LIBRARY_PATH": str(libdir), "EDGEFLEET_TELEMETRY": "off"},
    )
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert "broken: libedgetpu.so.1 is installed but is not a working delegate" in line


def test_drift_is_reported_when_predictions_leave_the_reference(
    tmp_path: Path, coral: Path
) -> None:
    pkg = _package(
        tmp_path,
        coral,
        golden_top1=None,
        reference={"classes": {"401": 0.5, "283": 0.5}},
    )
    cfg = ServerConfig(
        model_dir=pkg, telemetry="off", workers=1, drift_window=10, drift_min_samples=10
    )
    with serve_in_background(cfg) as (server, url):
        server.wait_selftest()
        assert requests.get(f"{url}/drift").json()["status"] == "insufficient_samples"
        for _ in range(5):
            post_image(url, coral / "grace_hopper.bmp", multipart=True)  # 401
            post_image(url, coral / "cat_720p.jpg", multipart=True)  # 283
        report = requests.get(f"{url}/drift").json()
        assert (report["status"], report["drift"]) == ("ok", False)
        assert report["chi2"]["p_value"] > 0.5
        for _ in range(10):
            post_image(url, coral / "hot_dog.jpg", multipart=True)  # 113: not in the reference
        report = requests.get(f"{url}/drift").json()
        assert (report["status"], report["drift"]) == ("drift", True)
        assert report["chi2"]["p_value"] < 0.01
        assert report["top_classes"][0] == {"index": 113, "label": "conch", "count": 10}
        metrics = requests.get(f"{url}/metrics").text
        assert "edgefleet_drift_detected 1.0" in metrics
        assert 'edgefleet_drift_p_value{test="chi2"}' in metrics


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    """A scikit-learn classifier exported with skl2onnx (zipmap off), built at test time."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = x.astype("float32")
    clf = LogisticRegression(max_iter=500).fit(x, y)
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}})
    pkg = tmp_path_factory.mktemp("iris")
    (pkg / "model.onnx").write_bytes(onx.SerializeToString())
    (pkg / "labels.txt").write_text("0 setosa\n1 versicolor\n2 virginica\n")
    (pkg / "golden").mkdir()
    (pkg / "golden" / "row.json").write_text(json.dumps({"features": x[120].tolist()}))
    (pkg / "metadata.json").write_text(
        json.dumps(
            {
                "name": "iris",
                "version": "iris_1_1764000000",
                "task": "tabular",
                "golden": [{"input": "golden/row.json", "top1": int(clf.predict(x[120:121])[0])}],
            }
        )
    )
    return pkg, clf, x


def test_onnx_tabular_predictions_match_scikit_learn(iris_model: tuple[Path, Any, Any]) -> None:
    pkg, clf, x = iris_model
    with serve_in_background(ServerConfig(model_dir=pkg, telemetry="off", workers=2)) as (
        server,
        url,
    ):
        assert server.wait_selftest() == "passed"
        version = requests.get(f"{url}/version/").json()
        assert (version["runtime"], version["task"]) == ("onnxruntime", "tabular")
        for row in (0, 60, 149):
            r = requests.post(f"{url}/predict/", json={"features": x[row].tolist()})
            assert r.status_code == 200, r.text
            doc = r.json()
            expected = int(clf.predict(x[row : row + 1])[0])
            assert doc["index"] == expected
            assert doc["label"] == ["setosa", "versicolor", "virginica"][expected]
            proba = clf.predict_proba(x[row : row + 1])[0]
            by_index = {p["index"]: p["score"] for p in doc["predictions"]}
            for i, p in enumerate(proba):
                assert abs(by_index[i] - p) < 1e-4
        for body, status, kind in (
            ({"features": [1.0, 2.0]}, 400, "bad_features"),
            ({"features": [1.0, "2", 3.0, 4.0]}, 400, "bad_features"),
            ({"features": [1.0, 10**400, 3.0, 4.0]}, 400, "bad_features"),
            ({"rows": [[1, 2, 3, 4]]}, 400, "bad_features"),
        ):
            r = requests.post(f"{url}/predict/", json=body)
            assert (r.status_code, r.json()["error"]) == (status, kind), body
        raw = [
            ('{"features": [NaN, 1, 2, 3]}', 400, "bad_features"),
            ("{not json", 400, "invalid_json"),
        ]
        for text, status, kind in raw:
            r = requests.post(
                f"{url}/predict/", data=text, headers={"Content-Type": "application/json"}
            )
            assert (r.status_code, r.json()["error"]) == (status, kind), text
        r = requests.post(f"{url}/predict/", files={"image": ("a.jpg", b"\xff\xd8")})
        assert (r.status_code, r.json()["error"]) == (415, "unsupported_media_type")


def _run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "model_server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def test_edgetpu_model_without_tpu_fails_startup_with_one_line(coral: Path) -> None:
    proc = _run_cli(
        ["--model", str(coral / V1_TPU), "--labels", str(coral / LABELS), "--port", "0"]
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgefleet: ")
    assert "edgetpu-custom-op" in lines[0]
    assert "libedgetpu.so.1" in lines[0]
    assert proc.stdout == ""


def test_edgetpu_detected_by_content_even_when_renamed(tmp_path: Path, coral: Path) -> None:
    """Content check: a package holding only an Edge TPU model as model_edgetpu.tflite,
    or an Edge TPU model under a CPU name, fails the same way."""
    renamed = tmp_path / "model.tflite"
    shutil.copy(coral / V1_TPU, renamed)
    proc = _run_cli(["--model", str(renamed), "--port", "0"])
    assert proc.returncode == 1
    assert "edgetpu-custom-op" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    only_tpu = tmp_path / "pkg"
    only_tpu.mkdir()
    shutil.copy(coral / V1_TPU, only_tpu / "model_edgetpu.tflite")
    proc = _run_cli(["--model-dir", str(only_tpu), "--port", "0"])
    assert proc.returncode == 1
    assert "edgetpu-custom-op" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_configuration_fails_with_one_line(tmp_path: Path, coral: Path) -> None:
    for args, env, needle in (
        ([], {}, "no model"),
        (["--model", str(tmp_path / "nope.tflite")], {}, "does not exist"),
        (["--model", str(coral / V1), "--port", "http"], {}, "--port='http' is invalid"),
        (["--model", str(coral / V1)], {"EDGEFLEET_MAX_PIXELS": "-1"}, "EDGEFLEET_MAX_PIXELS"),
    ):
        proc = _run_cli(args, {"EDGEFLEET_TELEMETRY": "off", **env})
        assert proc.returncode in (1, 2), (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgefleet: "), proc.stderr
        assert needle in lines[0]


def test_cli_serves_version_and_stops_on_sigterm(tmp_path: Path, coral: Path) -> None:
    """The SPEC invocation: python -m model_server --model M --labels L --port P."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "model_server",
            "--model",
            str(coral / V1),
            "--labels",
            str(coral / LABELS),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        cwd=REPO,
        env={**os.environ, "CONTAINER_DIGEST": "sha256:" + "cd" * 32, "EDGEFLEET_TELEMETRY": "off"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "server not ready after 30 s"
            time.sleep(0.1)
        assert requests.get(f"{url}/version/").json()["version"] == "sha256:" + "cd" * 32
        assert post_image(url, coral / "grace_hopper.bmp", multipart=False)["index"] == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0
    entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [e["message"] for e in entries]
    assert "model loaded" in messages and "serving" in messages and "stopped" in messages
    assert all(e["component"] == "model_server" for e in entries)


def test_create_app_factory_serves_under_waitress(coral: Path) -> None:
    from model_server.app import create_app
    from model_server.serve import BackgroundServer

    cfg = config(coral, V1, workers=1)
    app = create_app(cfg)
    server = app.extensions["model_server"]
    try:
        with BackgroundServer(app, cfg, server.workers) as http:
            server.wait_selftest()
            assert requests.get(f"{http.url}/healthz").json() == {"status": "ok"}
            assert requests.get(f"{http.url}/readyz").status_code == 200
            assert post_image(http.url, coral / "cat_720p.jpg", multipart=True)["index"] == 283
    finally:
        server.close()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (IPv4, dotted) with a socket LISTENing on ``port``, from the kernel."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, hexport = fields[1].split(":")
        if int(hexport, 16) == port and fields[3] == "0A":  # 0A = TCP_LISTEN
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def test_server_listens_on_loopback_by_default_and_host_is_configurable(
    tmp_path: Path, coral: Path
) -> None:
    args = ["--model", str(coral / V1), "--labels", str(coral / LABELS)]
    env = {"EDGEFLEET_TELEMETRY": "off"}
    with ServerProcess(args, env, tmp_path / "default.log") as srv:
        assert _listening_addresses(srv.port) == {"127.0.0.1"}
    with ServerProcess(args, {**env, "EDGEFLEET_HOST": "0.0.0.0"}, tmp_path / "all.log") as srv:
        assert _listening_addresses(srv.port) == {"0.0.0.0"}


def _vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_json_bodies_are_bounded_in_size_and_depth_before_parsing(
    iris_model: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    """A 10 MiB JSON feature list (which used to cost ~87 MiB and seconds before its 400)
    gets a JSON 413 without being read into memory or parsed, also when sent chunked; deep
    nesting gets a JSON 400, never a 500; the server keeps serving."""
    pkg, _, x = iris_model
    env = {"EDGEFLEET_TELEMETRY": "off"}
    with ServerProcess(["--model-dir", str(pkg)], env, tmp_path / "server.log") as srv:
        assert srv.proc is not None
        url, json_type = f"{srv.url}/predict/", {"Content-Type": "application/json"}
        big = b'{"features": [' + b"1.5, " * (10 * 2**20 // 5) + b"1.5]}"
        assert len(big) > 10 * 2**20 - 1000
        peak_before = _vm_hwm_mib(srv.proc.pid)
        for _ in range(4):
            r = requests.post(url, data=big, headers=json_type)
            assert (r.status_code, r.json()["error"]) == (413, "too_large")
        chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
        r = requests.post(url, data=chunks, headers=json_type)  # no Content-Length
        assert (r.status_code, r.json()["error"]) == (413, "too_large")
        assert _vm_hwm_mib(srv.proc.pid) - peak_before < 16, "the body was held in memory"

        deep = b'{"features": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"  # under the size bound
        r = requests.post(url, data=deep, headers=json_type)
        assert (r.status_code, r.json()["error"]) == (400, "invalid_json")
        assert "nested deeper" in r.json()["message"]
        tricky = {"features": x[0].tolist(), "note": "[[[[[[[[{{{{{{ in a string"}
        assert requests.post(url, json=tricky).status_code == 200
        metrics = requests.get(f"{srv.url}/metrics").text
        assert 'edgefleet_errors_total{kind="internal"}' not in metrics


def test_depth_is_bounded_even_when_the_size_bound_is_raised(
    iris_model: tuple[Path, Any, Any],
) -> None:
    pkg, _, _ = iris_model
    cfg = ServerConfig(model_dir=pkg, telemetry="off", workers=1, max_json_bytes=2_000_000)
    with serve_in_background(cfg) as (server, url):
        assert server.wait_selftest() == "passed"
        objects = b'{"features": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001
        for deep in (b"[" * 200_000, objects):
            r = requests.post(
                f"{url}/predict/", data=deep, headers={"Content-Type": "application/json"}
            )
            assert (r.status_code, r.json()["error"]) == (400, "invalid_json")


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_server_starts_numpy_with_one_openblas_thread_unless_told(
    tmp_path: Path, coral: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numpy's OpenBLAS would start a spinning thread per core (CPU spent at every version
    switch, for BLAS the server never calls): ``python -m model_server`` starts it with
    one, and an operator's ``OPENBLAS_NUM_THREADS`` still wins."""
    assert (os.cpu_count() or 1) >= 2, "needs 2 cores to tell 1 OpenBLAS thread from 2"
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    args = ["--model", str(coral / V1), "--labels", str(coral / LABELS)]
    counts = {}
    for told in ("", "2"):
        env = {"EDGEFLEET_TELEMETRY": "off", **({"OPENBLAS_NUM_THREADS": told} if told else {})}
        with ServerProcess(args, env, tmp_path / f"blas{told}.log") as srv:
            assert srv.proc is not None
            time.sleep(0.5)  # the self-test's thread has ended
            counts[told or "default"] = _threads(srv.proc.pid)
    # With 2, OpenBLAS runs one thread of its own beside the calling one.
    assert counts["2"] - counts["default"] == 1, counts

"""Pure logic of the model server: labels, metadata, tensors, ranking, drift statistics,
the outbox and the configuration."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from edgefleet.core.errors import ConfigError
from model_server.config import load_config
from model_server.drift import (
    DriftMonitor,
    Reference,
    chi2_classes,
    chi2_sf,
    kolmogorov_sf,
    ks_2samp,
)
from model_server.errors import RequestError
from model_server.outbox import FILENAME, Outbox
from model_server.package import PackageError, parse_labels, parse_metadata
from model_server.preprocess import (
    ImageInput,
    TensorSpec,
    decode_output,
    encode,
    parse_features,
    top_k,
)

# --- labels and metadata ----------------------------------------------------------------


def test_labels_one_per_line_keep_line_numbers() -> None:
    labels = parse_labels("background\ntench, Tinca tinca\n\ngoldfish\n\n")
    assert [labels.get(i) for i in range(4)] == ["background", "tench, Tinca tinca", "", "goldfish"]
    assert len(labels) == 4
    assert labels.get(99) == "99"


def test_labels_numbered_format() -> None:
    labels = parse_labels("0  person\n1  bicycle\n  7: truck\n")
    assert (labels.get(0), labels.get(1), labels.get(7), labels.get(2)) == (
        "person",
        "bicycle",
        "truck",
        "2",
    )


def test_labels_that_merely_start_with_digits_stay_one_per_line() -> None:
    labels = parse_labels("background\n3 toed sloth\n")
    assert labels.get(1) == "3 toed sloth"
    duplicate_numbers = parse_labels("1 a\n1 b\n")
    assert duplicate_numbers.get(0) == "1 a"


def test_metadata_contract() -> None:
    meta = parse_metadata(
        json.dumps(
            {
                "name": "mobilenet",
                "version": "mobilenet_2_1764000000",
                "golden": [{"input": "golden/grace_hopper.bmp", "top1": 653}],
                "reference": {"classes": {"653": 1}},
                "task": "image",
            }
        ).encode()
    )
    assert meta.name == "mobilenet" and meta.golden[0].top1 == 653 and meta.task == "image"


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"golden": [{"input": "../../etc/passwd", "top1": 1}]},
        {"golden": [{"input": "/etc/passwd", "top1": 1}]},
        {"golden": [{"input": "a.bmp", "top1": -1}]},
        {"golden": [{"input": "a.bmp", "top1": True}]},
        {"golden": "a.bmp"},
        {"task": "audio"},
        {"name": 3},
        {"input_std": 0},
    ],
)
def test_bad_metadata_is_refused(doc: object) -> None:
    with pytest.raises(PackageError):
        parse_metadata(json.dumps(doc).encode())


def test_metadata_that_is_not_json_is_refused() -> None:
    with pytest.raises(PackageError, match="not valid JSON"):
        parse_metadata(b"{nope")


# --- tensors and ranking ----------------------------------------------------------------


def test_raw_pixels_only_when_quantization_matches_the_normalization() -> None:
    coral = TensorSpec((1, 224, 224, 3), np.dtype(np.uint8), 0.0078125, 128)
    assert ImageInput.from_spec(coral, None, None).raw_pixels
    assert not ImageInput.from_spec(coral, 0.0, 255.0).raw_pixels
    floats = TensorSpec((1, 224, 224, 3), np.dtype(np.float32))
    assert not ImageInput.from_spec(floats, None, None).raw_pixels


def test_encode_quantizes_with_scale_and_zero_point_and_clips() -> None:
    int8 = TensorSpec((1, 3), np.dtype(np.int8), 0.5, -10)
    assert encode(np.array([0.0, 1.0, 1000.0]), int8).tolist() == [-10, -8, 127]
    assert encode(np.array([0.25]), TensorSpec((1,), np.dtype(np.float32))).dtype == np.float32


def test_decode_output_dequantizes() -> None:
    spec = TensorSpec((1, 3), np.dtype(np.uint8), 0.00390625, 0)
    assert decode_output(np.array([[0, 128, 255]], dtype=np.uint8), spec).tolist() == [
        0.0,
        0.5,
        0.99609375,
    ]


def test_top_k_orders_ties_by_higher_index_first() -> None:
    scores = np.array([0.1, 0.3125, 0.2, 0.3125, 0.05], dtype=np.float32)
    assert [i for i, _ in top_k(scores, 3)] == [3, 1, 2]
    assert [i for i, _ in top_k(scores, 10)] == [3, 1, 2, 0, 4]


def test_features_are_validated() -> None:
    assert parse_features(b'{"features": [1, 2.5]}', 2).tolist() == [[1.0, 2.5]]
    for body in (b"[1, 2]", b'{"features": []}', b'{"features": [1, true]}', b'{"features": 1}'):
        with pytest.raises(RequestError) as err:
            parse_features(body, None)
        assert err.value.status == 400
    with pytest.raises(RequestError, match="expected 3 features"):
        parse_features(b'{"features": [1, 2]}', 3)


# --- drift statistics (checked against scipy) ---------------------------------------------


@pytest.mark.parametrize(
    ("x", "dof"), [(0.5, 1), (3.0, 2), (10.0, 5), (100.0, 50), (1000.0, 999), (50.0, 3)]
)
def test_chi2_sf_matches_scipy(x: float, dof: int) -> None:
    assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("z", [0.3, 0.5, 0.8, 1.0, 1.36, 2.0, 3.0])
def test_kolmogorov_sf_matches_scipy(z: float) -> None:
    assert kolmogorov_sf(z) == pytest.approx(stats.kstwobign.sf(z), rel=1e-9, abs=1e-15)


def test_ks_2samp_statistic_matches_scipy() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 1, 300), rng.normal(0.3, 1, 500)
    d, p = ks_2samp(a, b)
    ref = stats.ks_2samp(a, b)
    assert d == pytest.approx(ref.statistic)
    en = np.sqrt(300 * 500 / 800)
    assert p == pytest.approx(stats.kstwobign.sf(en * d))
    assert p < 0.01


def test_chi2_classes_matches_scipy_when_all_categories_are_large() -> None:
    observed = {1: 40, 2: 35, 3: 25}
    reference = {1: 0.4, 2: 0.4, 3: 0.2}
    stat, dof, p = chi2_classes(observed, reference)  # type: ignore[arg-type,misc]
    ref = stats.chisquare([40, 35, 25], [40, 40, 20])
    assert (stat, dof) == (pytest.approx(ref.statistic), 2)
    assert p == pytest.approx(ref.pvalue)


def test_unknown_classes_pool_into_other_and_signal_drift() -> None:
    _stat, dof, p = chi2_classes({7: 20}, {1: 0.5, 2: 0.5})  # type: ignore[arg-type,misc]
    assert dof == 2 and p < 1e-6


def test_drift_monitor_judges_only_with_a_reference_and_enough_samples() -> None:
    none = DriftMonitor(None, window=10, min_samples=5, alpha=0.01)
    none.observe(1, 0.9)
    assert none.snapshot()["status"] == "no_reference"
    ref = Reference.parse({"classes": {"1": 1, "2": 1}, "scores": [0.8, 0.85, 0.9, 0.95] * 10})
    monitor = DriftMonitor(ref, window=20, min_samples=10, alpha=0.01)
    for i in range(9):
        monitor.observe(1 + i % 2, 0.8 + 0.05 * (i % 4))
    assert monitor.snapshot()["status"] == "insufficient_samples"
    for i in range(11):
        monitor.observe(1 + i % 2, 0.8 + 0.05 * (i % 4))
    assert monitor.snapshot()["drift"] is False
    for _ in range(20):
        monitor.observe(1, 0.1)  # one class only, low scores: both tests fire
    report = monitor.snapshot()
    assert report["drift"] is True and report["samples"] == 20
    assert report["ks"]["p_value"] < 0.01 and report["chi2"]["p_value"] < 0.01


@pytest.mark.parametrize(
    "doc",
    [{"classes": {"cat": 1}}, {"classes": {"1": -1}}, {"classes": []}, {"scores": ["x"]}],
)
def test_bad_reference_is_refused(doc: dict) -> None:
    with pytest.raises(ConfigError):
        Reference.parse(doc)


# --- outbox ------------------------------------------------------------------------------


def test_outbox_keeps_order_until_ack_and_survives_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_messages=100)
    for i in range(5):
        box.put(f"id{i}", f"m{i}".encode())
    batch = box.peek(3)
    assert [m.id for m in batch] == ["id0", "id1", "id2"]
    assert len(box) == 5  # peeking removes nothing
    box.ack(batch[:2])
    box.close()
    reopened = Outbox(tmp_path, max_messages=100)
    assert len(reopened) == 3
    assert [m.body for m in reopened.peek(10)] == [b"m2", b"m3", b"m4"]


def test_full_outbox_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_messages=3)
    dropped = sum(box.put(f"id{i}", b"x") for i in range(5))
    assert dropped == 2 and box.dropped == 2 and len(box) == 3
    assert [m.id for m in box.peek(10)] == ["id2", "id3", "id4"]


def test_ack_of_already_dropped_messages_keeps_the_count_right(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_messages=2)
    box.put("a", b"1")
    box.put("b", b"2")
    in_flight = box.peek(2)
    box.put("c", b"3")  # drops "a" while it is being published
    box.ack(in_flight)
    assert len(box) == 1 and [m.id for m in box.peek(5)] == ["c"]


def test_outbox_is_safe_under_concurrent_writers(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_messages=10_000)

    def write(n: int) -> None:
        for i in range(100):
            box.put(f"{n}-{i}", b"x")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(box) == 800 == len({m.id for m in box.peek(1000)})


def test_corrupt_outbox_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"this is not a database" * 100)
    box = Outbox(tmp_path, max_messages=10)
    box.put("a", b"1")
    assert len(box) == 1
    assert list(tmp_path.glob(FILENAME + ".corrupt-*"))
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1


def test_unwritable_outbox_is_a_one_line_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="OUTBOX_DIR"):
        Outbox(blocker / "outbox", max_messages=10)


# --- configuration -----------------------------------------------------------------------


def test_flags_win_over_edgefleet_env_over_spec_env() -> None:
    env = {
        "EDGEFLEET_DEVICE_ID": "from-edgefleet",
        "DEVICE_ID": "from-spec",
        "CONTAINER_DIGEST": "sha256:" + "0" * 64,
        "OUTBOX_DIR": "/tmp/x",
        "PUBSUB_PROJECT": "p",
        "EDGEFLEET_PORT": "6000",
    }
    cfg = load_config(["--model", "m.tflite", "--port", "7000"], env)
    assert cfg.port == 7000
    assert cfg.device_id == "from-edgefleet"
    assert cfg.container_digest == "sha256:" + "0" * 64
    assert str(cfg.outbox_dir) == "/tmp/x"
    assert cfg.telemetry_enabled
    assert not load_config(["--model", "m.tflite"], {}).telemetry_enabled


@pytest.mark.parametrize(
    ("argv", "env", "match"),
    [
        ([], {}, "no model"),
        (["--model", "m", "--model-dir", "d"], {}, "either"),
        (["--model", "m", "--telemetry", "on"], {}, "PUBSUB_PROJECT"),
        (["--model", "m"], {"EDGEFLEET_WORKERS": "-2"}, "EDGEFLEET_WORKERS"),
        (["--model", "m"], {"EDGEFLEET_DRIFT_ALPHA": "2"}, "between 0 and 1"),
        (["--model", "m", "--telemetry", "maybe"], {}, "auto, on, off"),
        (["--model", "m"], {"EDGEFLEET_PUBLISH_BATCH": "1001"}, "at most 1,000 messages"),
    ],
)
def test_bad_configuration_is_one_config_error(argv: list[str], env: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(argv, env)


# --- runtime selection -------------------------------------------------------------------


def test_edgetpu_variant_is_chosen_when_its_delegate_loads(tmp_path: Path) -> None:
    """Selection logic only: this machine has no Edge TPU, so the 'delegate' here is a real
    CPU interpreter of the v1 model standing in for the TPU one."""
    import shutil

    from model_server.package import from_dir
    from model_server.runtime import _litert_interpreter_factory, load_model

    coral = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "coral"
    shutil.copy(coral / "mobilenet_v1_0.25_128_quant.tflite", tmp_path / "model.tflite")
    shutil.copy(
        coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", tmp_path / "model_edgetpu.tflite"
    )
    stand_in = _litert_interpreter_factory(tmp_path / "model.tflite", 1)
    loaded = load_model(
        from_dir(tmp_path), workers=2, threads=1, edgetpu_factory=lambda p: stand_in
    )
    assert loaded.backend.delegate == "edgetpu"
    assert loaded.backend.model_path.name == "model_edgetpu.tflite"
    assert loaded.backend.pool_size == 1  # type: ignore[attr-defined]
    assert "Edge TPU delegate loaded" in loaded.choice


def test_device_id_defaults_to_the_host_name() -> None:
    import socket

    from model_server import config as server_config

    cfg = server_config.validate(
        server_config.ServerConfig(model=Path("m.tflite"), labels=Path("l.txt"))
    )
    assert cfg.device_id == socket.gethostname()
    named = server_config.validate(
        server_config.ServerConfig(model=Path("m.tflite"), labels=Path("l.txt"), device_id="pi-7")
    )
    assert named.device_id == "pi-7"

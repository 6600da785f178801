"""bench.stats: the one percentile helper, checked against numpy and statistics."""

from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stats import MB, MiB, fmt_bytes, percentile, summarize


def test_percentile_interpolates_linearly_between_ranks() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20], 25) == 12.5
    assert percentile([3, 1, 2], 0) == 1
    assert percentile([3, 1, 2], 100) == 3
    assert percentile([7.0], 95) == 7.0


def test_percentile_matches_numpy_and_statistics_median() -> None:
    rng = random.Random(11)
    for n in (1, 2, 5, 20, 101):
        values = [rng.uniform(0, 100) for _ in range(n)]
        for q in (0, 1, 25, 50, 90, 95, 99, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
        assert percentile(values, 50) == pytest.approx(statistics.median(values))


def test_percentile_refuses_empty_input_and_bad_q() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], -1)


def test_summary_and_units() -> None:
    s = summarize([0.001, 0.002, 0.003, 0.004])
    assert (s.n, s.minimum, s.maximum) == (4, 0.001, 0.004)
    assert s.p50 == pytest.approx(0.0025)
    assert s.mean == pytest.approx(0.0025)
    ms = s.scaled(1000)
    assert ms.p95 == pytest.approx(float(np.percentile([1, 2, 3, 4], 95)))
    assert "p95 3.85 ms" in ms.line("ms")
    with pytest.raises(ValueError):
        summarize([])
    # 143.4 MiB is 150.4 MB: over a 150 MB target.
    assert 143.4 * MiB / MB == pytest.approx(150.36, abs=0.01)
    assert fmt_bytes(143.4 * MiB) == "143.4 MiB (150.4 MB)"

"""The one percentile helper every benchmark uses, so their p50/p95/p99 mean the same thing.

Method: **linear interpolation between closest ranks** (Hyndman & Fan type 7, the default
of ``numpy.percentile`` and of ``statistics.quantiles(method="inclusive")``). For sorted
values ``x[0..n-1]`` and ``q`` in [0, 100], the rank is ``h = (n - 1) * q / 100`` and the
result ``x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)])``. So p0 is the
minimum, p100 the maximum and p50 equals ``statistics.median``. Chosen over nearest-rank
because it is continuous in ``q`` and agrees with the tools a reader checks against.

Units: the helpers are unit-free; callers state units when printing. Byte counts use
MB = 10^6 bytes and MiB = 2^20 bytes (:data:`MB`, :data:`MiB`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

MB = 1_000_000
MiB = 1 << 20


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0 <= q <= 100) of ``values`` by linear interpolation.

    Raises ValueError on an empty input or a ``q`` outside [0, 100], rather than
    returning a number a benchmark could print as if it were measured.
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values: the benchmark measured nothing")
    if not 0 <= q <= 100 or math.isnan(q):
        raise ValueError(f"percentile q={q} is outside [0, 100]")
    rank = (len(ordered) - 1) * q / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def fmt_bytes(nbytes: float) -> str:
    """A byte count in both units a reader may expect: ``143.4 MiB (150.4 MB)``."""
    return f"{nbytes / MiB:.1f} MiB ({nbytes / MB:.1f} MB)"


def median(values: Iterable[float]) -> float:
    """:func:`percentile` at 50 (equal to ``statistics.median``)."""
    return percentile(values, 50)


@dataclass(frozen=True)
class Summary:
    """Count, mean and the usual percentiles of one series (units: the caller's)."""

    n: int
    mean: float
    minimum: float
    p50: float
    p95: float
    p99: float
    maximum: float

    def scaled(self, factor: float) -> Summary:
        """The same summary with every value multiplied (e.g. seconds -> ms)."""
        return Summary(
            self.n,
            self.mean * factor,
            self.minimum * factor,
            self.p50 * factor,
            self.p95 * factor,
            self.p99 * factor,
            self.maximum * factor,
        )

    def line(self, unit: str, fmt: str = ".2f") -> str:
        """One printable line, e.g. ``n 50  p50 1.20 ms  p95 …  max … ms``."""
        return (
            f"n {self.n}  p50 {self.p50:{fmt}} {unit}  p95 {self.p95:{fmt}} {unit}  "
            f"p99 {self.p99:{fmt}} {unit}  max {self.maximum:{fmt}} {unit}  "
            f"mean {self.mean:{fmt}} {unit}"
        )


def summarize(values: Iterable[float]) -> Summary:
    """A :class:`Summary` of ``values`` (ValueError when empty)."""
    data = list(values)
    if not data:
        raise ValueError("summary of no values: the benchmark measured nothing")
    return Summary(
        n=len(data),
        mean=sum(data) / len(data),
        minimum=min(data),
        p50=percentile(data, 50),
        p95=percentile(data, 95),
        p99=percentile(data, 99),
        maximum=max(data),
    )

"""Prediction drift: a rolling window of predictions against the model's reference.

The reference comes from training, in metadata.json::

    "reference": {"classes": {"653": 0.41, "286": 0.2, ...},   # top-1 class shares or counts
                  "scores": [0.91, 0.62, ...]}                   # a sample of top-1 scores

Both parts are optional. Predicted classes are compared with a chi-square goodness-of-fit
test, top-1 scores with a two-sample Kolmogorov-Smirnov test. Drift is reported when a
p-value falls below ``alpha`` once the window holds ``min_samples`` predictions.

The two p-values are computed here in a few lines of numpy instead of with scipy, whose
import would cost a small device ~30-50 MB of memory for two formulas; the tests check
them against scipy.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.core.errors import ConfigError

MIN_EXPECTED = 5.0  # chi-square is unreliable below this expected count per category
OTHER_FLOOR = 0.5  # expected count given to "everything else" when the reference has none


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square(dof): the regularized upper incomplete gamma Q(dof/2, x/2)."""
    if x <= 0:
        return 1.0
    a, z = dof / 2.0, x / 2.0
    log_prefix = a * math.log(z) - z - math.lgamma(a)
    if z < a + 1.0:  # series for P, then Q = 1 - P
        term = total = 1.0 / a
        n = a
        for _ in range(10_000):
            n += 1.0
            term *= z / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # Continued fraction for Q (modified Lentz).
    tiny = 1e-300
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def kolmogorov_sf(z: float) -> float:
    """P(K >= z) of the limiting Kolmogorov distribution."""
    if z < 0.2:
        return 1.0
    total = 0.0
    for j in range(1, 101):
        term = math.exp(-2.0 * j * j * z * z)
        total += term if j % 2 else -term
        if term < 1e-16:
            break
    return min(1.0, max(0.0, 2.0 * total))


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample KS statistic and its asymptotic p-value."""
    a, b = np.sort(a), np.sort(b)
    both = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, both, side="right") / a.size
    cdf_b = np.searchsorted(b, both, side="right") / b.size
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    en = math.sqrt(a.size * b.size / (a.size + b.size))
    return d, kolmogorov_sf(en * d)


def chi2_classes(
    observed: Counter[int], reference: dict[int, float]
) -> tuple[float, int, float] | None:
    """Chi-square of observed top-1 counts against reference shares.

    Reference classes whose expected count is below ``MIN_EXPECTED`` are pooled into one
    "other" category together with every class the reference does not know. Returns
    (statistic, degrees of freedom, p-value), or None with fewer than two categories.
    """
    n = sum(observed.values())
    total_ref = sum(reference.values())
    if n == 0 or total_ref <= 0:
        return None
    kept = {c: n * p / total_ref for c, p in reference.items() if n * p / total_ref >= MIN_EXPECTED}
    other_expected = max(n - sum(kept.values()), 0.0)
    other_observed = n - sum(observed.get(c, 0) for c in kept)
    cats = [(observed.get(c, 0), e) for c, e in kept.items()]
    if other_observed > 0 or other_expected > 1e-9:
        cats.append((other_observed, max(other_expected, OTHER_FLOOR)))
    if len(cats) < 2:
        return None
    stat = float(sum((o - e) ** 2 / e for o, e in cats))
    dof = len(cats) - 1
    return stat, dof, chi2_sf(stat, dof)


@dataclass(frozen=True)
class Reference:
    classes: dict[int, float]
    scores: np.ndarray | None

    @classmethod
    def parse(cls, doc: dict[str, Any] | None) -> Reference | None:
        """Validate metadata's ``reference``; a malformed one fails start-up."""
        if not doc:
            return None
        classes: dict[int, float] = {}
        raw_classes = doc.get("classes", {})
        if not isinstance(raw_classes, dict):
            raise ConfigError("metadata reference.classes must map class index -> share")
        for key, value in raw_classes.items():
            if (
                not str(key).isdigit()
                or isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(
                    f"metadata reference.classes[{key!r}]: keys must be class indices, "
                    "values non-negative numbers"
                )
            classes[int(key)] = float(value)
        scores = doc.get("scores")
        arr = None
        if scores is not None:
            if not isinstance(scores, list) or not all(
                isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s)
                for s in scores
            ):
                raise ConfigError("metadata reference.scores must be a list of numbers")
            arr = np.asarray(scores, dtype=np.float64) if scores else None
        if not classes and arr is None:
            return None
        return cls(classes, arr)


class DriftMonitor:
    def __init__(
        self,
        reference: Reference | None,
        *,
        window: int,
        min_samples: int,
        alpha: float,
    ) -> None:
        self.reference = reference
        self.window = window
        self.min_samples = min(min_samples, window)
        self.alpha = alpha
        self._lock = threading.Lock()
        self._classes: deque[int] = deque(maxlen=window)
        self._scores: deque[float] = deque(maxlen=window)

    def observe(self, index: int, score: float) -> None:
        with self._lock:
            self._classes.append(index)
            self._scores.append(score)

    def snapshot(self, label: Any = str) -> dict[str, Any]:
        """The drift report for /drift (``label`` maps a class index to its label)."""
        with self._lock:
            classes = Counter(self._classes)
            scores = np.fromiter(self._scores, dtype=np.float64, count=len(self._scores))
        n = int(scores.size)
        report: dict[str, Any] = {
            "samples": n,
            "window": self.window,
            "min_samples": self.min_samples,
            "alpha": self.alpha,
            "reference": self.reference is not None,
            "top_classes": [
                {"index": c, "label": label(c), "count": k} for c, k in classes.most_common(5)
            ],
            "mean_score": float(scores.mean()) if n else None,
            "chi2": None,
            "ks": None,
            "drift": None,
        }
        if self.reference is None:
            report["status"] = "no_reference"
            return report
        if n < self.min_samples:
            report["status"] = "insufficient_samples"
            return report
        p_values = []
        if self.reference.classes:
            result = chi2_classes(classes, self.reference.classes)
            if result is not None:
                stat, dof, p = result
                report["chi2"] = {"statistic": stat, "dof": dof, "p_value": p}
                p_values.append(p)
        if self.reference.scores is not None:
            d, p = ks_2samp(scores, self.reference.scores)
            report["ks"] = {"statistic": d, "p_value": p}
            p_values.append(p)
        drift = any(p < self.alpha for p in p_values) if p_values else None
        report["drift"] = drift
        report["status"] = {None: "not_judged", True: "drift", False: "ok"}[drift]
        return report

"""Summary statistics every verdict uses: mean ± std, Student-t and paired bootstrap confidence intervals.

Verdicts compare an arm against a control over seeds; a single mean hides whether the difference is
noise. :func:`paired_ci` is the rule's workhorse: per-seed differences ``a_i - b_i`` (the same seed, data
split and initialisation on both sides), their mean, and a confidence interval on that mean. A claim
"A beats B by at least m" holds when the interval's lower end is above ``m``.

NumPy only (no torch), so rules stay cheap to test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A mean and its two-sided confidence interval ``[low, high]`` at ``level`` over ``n`` values."""

    mean: float
    low: float
    high: float
    n: int
    level: float
    method: str  # "t" or "bootstrap"

    def excludes(self, value: float = 0.0) -> bool:
        return self.low > value or self.high < value

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _values(x: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{name} is empty; need at least one value")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds non-finite values: {a.tolist()}")
    return a


def mean_std(x: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    a = _values(x)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _t_quantile(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def t_interval(x: Sequence[float] | np.ndarray, level: float = 0.95) -> Interval:
    """Student-t interval on the mean (a single value gives the degenerate interval at that value)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    a = _values(x)
    m = float(a.mean())
    if a.size == 1:
        return Interval(m, m, m, 1, level, "t")
    half = _t_quantile(0.5 + level / 2, a.size - 1) * float(a.std(ddof=1)) / math.sqrt(a.size)
    return Interval(m, m - half, m + half, int(a.size), level, "t")


def bootstrap_interval(
    x: Sequence[float] | np.ndarray, level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval on the mean (seeded: the same numbers give the same interval)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    a = _values(x)
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, a.size, size=(resamples, a.size))].mean(axis=1)
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(float(a.mean()), float(low), float(high), int(a.size), level, "bootstrap")


def paired_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    level: float = 0.95,
    method: str = "t",
    resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Interval on the mean of the paired differences ``a_i - b_i`` (same seed / split on both sides)."""
    x, y = _values(a, "a"), _values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal lengths, got {x.size} and {y.size}")
    if method == "t":
        return t_interval(x - y, level)
    if method == "bootstrap":
        return bootstrap_interval(x - y, level, resamples, seed)
    raise ValueError(f"method {method!r} is not one of 't', 'bootstrap'")


def wins_ties_losses(a: Sequence[float], b: Sequence[float], tie: float = 0.0) -> tuple[int, int, int]:
    """Paired counts: ``a_i - b_i > tie`` (win), ``|a_i - b_i| <= tie`` (tie), else loss."""
    d = _values(a, "a") - _values(b, "b")
    return int((d > tie).sum()), int((np.abs(d) <= tie).sum()), int((d < -tie).sum())


def ridge_fit(X: np.ndarray, Y: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Ridge regression with a bias column: ``W = argmin ‖[X 1] W − Y‖² + ridge ‖W‖²`` - ``[F + 1, C]``.

    ``X [N, F]`` features, ``Y [N, C]`` (or ``[N]``) targets; the last row of W is the bias. The bias is
    penalised too: with a small ridge that only keeps the solve well-posed when features are collinear.
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    Xa = _with_bias(X)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.shape[0] != Xa.shape[0]:
        raise ValueError(f"X and Y need one row per sample, got {Xa.shape[0]} and {Y.shape[0]} rows")
    return np.linalg.solve(Xa.T @ Xa + ridge * np.eye(Xa.shape[1]), Xa.T @ Y)


def _with_bias(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be [N, F], got shape {X.shape}")
    return np.concatenate([X, np.ones((X.shape[0], 1))], axis=1)


def ridge_probe_accuracy(
    X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, num_classes: int, ridge: float = 1e-3
) -> float:
    """Held-out accuracy of a linear probe: :func:`ridge_fit` onto one-hot labels, the arg-max class predicted.

    ``X [N, F]`` with integer labels ``y [N]`` in ``[0, num_classes)``; ``X_test [M, F]``, ``y_test [M]``.
    """
    y, y_test = np.asarray(y).astype(np.int64), np.asarray(y_test).astype(np.int64)
    for name, labels in (("y", y), ("y_test", y_test)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} must be in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]")
    W = ridge_fit(X, np.eye(num_classes)[y], ridge)
    return float(((_with_bias(X_test) @ W).argmax(1) == y_test).mean())

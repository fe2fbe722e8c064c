"""Calibration: Brier score, reliability curve (equal-width or quantile bins), ECE."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cxr_cad.errors import ConfigError
from cxr_cad.metrics._common import check_alpha, check_binary, warn_undefined
from cxr_cad.metrics.proportions import wilson_ci


@dataclass(frozen=True)
class ReliabilityCurve:
    """Binned calibration data; arrays have one entry per bin (``n_bins``).

    ``mean_predicted``/``fraction_positive`` (and the Wilson interval ``low``/``high`` of the
    fraction) are NaN for empty bins. ``edges`` has ``n_bins + 1`` entries. A probability
    equal to an inner edge belongs to the bin on its left (as scikit-learn's
    ``calibration_curve``); the first bin includes 0 and the last includes 1.
    """

    strategy: str
    edges: tuple[float, ...]
    count: tuple[int, ...]
    mean_predicted: tuple[float, ...]
    fraction_positive: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def brier_score(y_true, y_prob) -> float:
    """Mean squared difference between the probability and the 0/1 outcome, in [0, 1].

    NaN + :class:`UndefinedMetricWarning` for empty input. Raises ``ValueError`` for
    probabilities outside [0, 1] or bad labels.
    """
    y, p = check_binary(y_true, y_prob, name="y_prob", probabilities=True)
    if y.size == 0:
        warn_undefined("brier_score: no cases; undefined (NaN)")
        return float("nan")
    return float(np.mean((p - y) ** 2))


def _bin_edges(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        # exactly scikit-learn's edges (calibration_curve): percentiles at linspace(0, 1) * 100.
        # np.linspace(0, 100) differs in the last bit (e.g. 30.0 vs 30.000000000000004), which
        # moves an image whose score equals a percentile into the other bin.
        return np.percentile(p, np.linspace(0, 1, n_bins + 1) * 100)
    raise ConfigError(f"strategy must be 'uniform' (equal-width) or 'quantile'; got {strategy!r}")


def reliability_curve(
    y_true, y_prob, *, n_bins: int = 10, strategy: str = "uniform", alpha: float = 0.05
) -> ReliabilityCurve:
    """Observed fraction of positives against mean predicted probability, per bin.

    Args:
        y_true: 0/1 labels; y_prob: positive-class probabilities in [0, 1].
        n_bins: number of bins (>= 1).
        strategy: ``"uniform"`` (equal-width bins on [0, 1]) or ``"quantile"`` (equal-count
            bins from the percentiles of ``y_prob``; tied percentiles give empty bins).
        alpha: for the Wilson interval of each bin's fraction of positives.

    Non-empty bins agree with ``sklearn.calibration.calibration_curve``.
    Raises ``ValueError`` for bad input, ``ConfigError`` for a bad strategy or n_bins.
    """
    alpha = check_alpha(alpha)
    if int(n_bins) != n_bins or n_bins < 1:
        raise ConfigError(f"n_bins must be a positive integer; got {n_bins}")
    n_bins = int(n_bins)
    y, p = check_binary(y_true, y_prob, name="y_prob", probabilities=True)
    if y.size == 0:
        warn_undefined("reliability_curve: no cases; every bin is empty (NaN)")
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = _bin_edges(p, n_bins, strategy)
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=n_bins)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(ids, weights=y.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
        frac = np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)
    lows, highs = [], []
    for k, n in zip(sum_y.round().astype(int), count):
        if n == 0:
            lows.append(float("nan"))
            highs.append(float("nan"))
        else:
            lo, hi = wilson_ci(int(k), int(n), alpha=alpha)
            lows.append(lo)
            highs.append(hi)
    return ReliabilityCurve(
        strategy,
        tuple(float(e) for e in edges),
        tuple(int(c) for c in count),
        tuple(float(v) for v in mean_p),
        tuple(float(v) for v in frac),
        tuple(lows),
        tuple(highs),
    )


def expected_calibration_error(y_true, y_prob, *, n_bins: int = 10, strategy: str = "uniform") -> float:
    """ECE = sum over bins of (bin count / N) * |fraction positive - mean predicted|.

    Uses the bins of :func:`reliability_curve`. NaN + warning for empty input.
    """
    curve = reliability_curve(y_true, y_prob, n_bins=n_bins, strategy=strategy)
    count = np.asarray(curve.count, dtype=np.float64)
    total = count.sum()
    if total == 0:
        warn_undefined("expected_calibration_error: no cases; undefined (NaN)")
        return float("nan")
    gap = np.abs(np.asarray(curve.fraction_positive) - np.asarray(curve.mean_predicted))
    return float(np.sum(np.where(count > 0, count * np.nan_to_num(gap), 0.0)) / total)

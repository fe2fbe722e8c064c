"""ROC curve and AUC (Mann-Whitney with mid-ranks), plus ROC averaging across folds.

Decision rule everywhere in :mod:`cxr_cad.metrics`: an image is called positive when
``score >= threshold``. A ROC point at threshold ``t`` therefore counts scores equal
to ``t`` as positive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from cxr_cad.metrics._common import check_binary, warn_one_class, warn_undefined


def roc_curve(y_true, y_score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical ROC curve at every distinct score.

    Args:
        y_true: 0/1 labels (1 = positive class), shape (n,).
        y_score: scores (higher = more likely positive), any finite floats, shape (n,).

    Returns:
        ``(fpr, tpr, thresholds)``, each of length (distinct scores + 1). ``thresholds`` is
        decreasing and starts with ``+inf`` (nothing called positive: fpr = tpr = 0);
        point ``i`` is the rate of ``score >= thresholds[i]``. The last point is (1, 1).
        Same as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
        With only one class present the undefined rate is NaN and
        :class:`UndefinedMetricWarning` is emitted.

    Raises:
        ValueError: labels other than 0/1, mismatched lengths, non-finite scores.
    """
    y, s = check_binary(y_true, y_score)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1] if s.size else np.zeros(0, int)
    tps = np.cumsum(y_sorted, dtype=np.int64)[last_of_run] if s.size else np.zeros(0, np.int64)
    fps = last_of_run + 1 - tps
    tps = np.r_[0, tps].astype(np.float64)
    fps = np.r_[0, fps].astype(np.float64)
    thresholds = np.r_[np.inf, s_sorted[last_of_run]]
    n_pos, n_neg = tps[-1], fps[-1]
    if n_pos == 0:
        warn_undefined("roc_curve: no positive cases, true positive rate is undefined (NaN)")
        tpr = np.full_like(tps, np.nan)
    else:
        tpr = tps / n_pos
    if n_neg == 0:
        warn_undefined("roc_curve: no negative cases, false positive rate is undefined (NaN)")
        fpr = np.full_like(fps, np.nan)
    else:
        fpr = fps / n_neg
    return fpr, tpr, thresholds


def roc_auc(y_true, y_score) -> float:
    """Area under the empirical ROC curve, ties counted as 1/2 (Mann-Whitney U / (m n)).

    Returns a float in [0, 1]; NaN with :class:`UndefinedMetricWarning` when a class is
    missing (never 0.5). Raises ``ValueError`` like :func:`roc_curve`.
    """
    y, s = check_binary(y_true, y_score)
    n_pos, n_neg, missing = warn_one_class("roc_auc", y, "AUC is undefined (NaN)")
    if missing:
        return float("nan")
    ranks = rankdata(s, method="average")
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def interpolate_roc(fpr, tpr, grid) -> np.ndarray:
    """TPR of a piecewise-linear ROC curve at the false-positive rates in ``grid``.

    Where the curve is vertical (several points at the same FPR), the highest TPR at
    that FPR is taken, i.e. the best operating point reachable at that FPR. Between
    distinct FPRs the chord is used (ties in scores give chords). ``fpr``/``tpr`` must
    be ordered as :func:`roc_curve` returns them. Returns an array shaped like ``grid``.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    if fpr.size == 0 or np.isnan(fpr).any() or np.isnan(tpr).any():
        return np.full(grid.shape, np.nan)
    j = np.searchsorted(fpr, grid, side="right") - 1  # last point with fpr <= g
    j = np.clip(j, 0, fpr.size - 1)
    nxt = np.clip(j + 1, 0, fpr.size - 1)
    x0, x1, y0, y1 = fpr[j], fpr[nxt], tpr[j], tpr[nxt]
    exact = (x0 == grid) | (x1 == x0)
    with np.errstate(invalid="ignore", divide="ignore"):
        chord = y0 + (y1 - y0) * (grid - x0) / (x1 - x0)
    return np.where(exact, y0, chord)


def mean_roc(curves: Sequence[tuple[np.ndarray, np.ndarray]], *, n_points: int = 101) -> dict:
    """Vertical average of several ROC curves (e.g. one per cross-validation fold).

    Args:
        curves: ``(fpr, tpr)`` pairs as returned by :func:`roc_curve`.
        n_points: size of the common FPR grid ``linspace(0, 1, n_points)``.

    Returns:
        dict with lists ``fpr`` (grid), ``tpr_mean``, ``tpr_sd`` (ddof=1; NaN for a single
        curve), ``tpr_low``/``tpr_high`` (mean -/+ 1 SD clipped to [0, 1]) and ``n_curves``.
        ``tpr_mean`` starts at the mean TPR at FPR 0 and ends at 1.
        Curves that are undefined (NaN, one class) are skipped with a warning.
    """
    grid = np.linspace(0.0, 1.0, int(n_points))
    rows = []
    for fpr, tpr in curves:
        t = interpolate_roc(fpr, tpr, grid)
        if np.isnan(t).any():
            warn_undefined("mean_roc: skipping an undefined ROC curve (one class only)")
            continue
        rows.append(t)
    if not rows:
        warn_undefined("mean_roc: no defined ROC curves to average")
        nan = np.full(grid.shape, np.nan)
        return {
            "fpr": grid.tolist(),
            "tpr_mean": nan.tolist(),
            "tpr_sd": nan.tolist(),
            "tpr_low": nan.tolist(),
            "tpr_high": nan.tolist(),
            "n_curves": 0,
        }
    m = np.vstack(rows)
    mean = m.mean(axis=0)
    sd = m.std(axis=0, ddof=1) if m.shape[0] > 1 else np.full(grid.shape, np.nan)
    low = np.clip(mean - sd, 0.0, 1.0)
    high = np.clip(mean + sd, 0.0, 1.0)
    return {
        "fpr": grid.tolist(),
        "tpr_mean": mean.tolist(),
        "tpr_sd": sd.tolist(),
        "tpr_low": low.tolist(),
        "tpr_high": high.tolist(),
        "n_curves": int(m.shape[0]),
    }

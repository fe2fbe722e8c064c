"""Patient-level (cluster) bootstrap for AUC, sensitivity and specificity, and bootstrap
intervals for the Brier score and the expected calibration error.

Images of one patient are not independent: an image-level interval treats two films of the
same child as two pieces of evidence. The cluster bootstrap resamples *patients* with
replacement and keeps all images of each drawn patient (Field & Welsh 2007; Obuchowski 1997
for clustered ROC data). A resample is a vector of patient multiplicities, so every
statistic is a weighted statistic over the original images (vectorised, exact).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr_cad.metrics._common import check_alpha, check_binary, warn_undefined

_BLOCK_ELEMENTS = 4_000_000


def weighted_stats(y: np.ndarray, s: np.ndarray, weights: np.ndarray, threshold: float | None) -> dict:
    """AUC (ties 1/2), sensitivity and specificity for image weights ``(B, n)`` (one row per resample).

    AUC = sum_ij w_i w_j [s_i > s_j] + 1/2 [s_i == s_j] over positives i, negatives j, divided
    by (sum w_pos)(sum w_neg). Rows where a class has zero weight give NaN.
    """
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    order = np.argsort(s[neg], kind="mergesort")
    neg_sorted = s[neg][order]
    lo = np.searchsorted(neg_sorted, s[pos], side="left")
    hi = np.searchsorted(neg_sorted, s[pos], side="right")
    w_pos, w_neg = weights[:, pos], weights[:, neg][:, order]
    cu = np.concatenate([np.zeros((weights.shape[0], 1)), np.cumsum(w_neg, axis=1)], axis=1)
    below = cu[:, lo]
    tied = cu[:, hi] - below
    tot_pos, tot_neg = w_pos.sum(axis=1), w_neg.sum(axis=1)
    ok = (tot_pos > 0) & (tot_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(ok, np.einsum("bm,bm->b", w_pos, below + 0.5 * tied) / (tot_pos * tot_neg), np.nan)
        out = {"auc": auc}
        if threshold is not None:
            out["sensitivity"] = np.where(ok, w_pos @ (s[pos] >= threshold).astype(float) / tot_pos, np.nan)
            out["specificity"] = np.where(ok, w_neg @ (neg_sorted < threshold).astype(float) / tot_neg, np.nan)
    return out


def cluster_weights(groups: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Image weights ``(B, n)`` from patient multiplicities ``counts (B, n_patients)``;
    ``groups`` holds each image's patient number in ``0..n_patients-1``."""
    return counts[:, groups].astype(np.float64)


def _percentile(values: np.ndarray, alpha: float) -> tuple[float, float, int]:
    ok = values[np.isfinite(values)]
    if ok.size == 0:
        return float("nan"), float("nan"), 0
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi), int(ok.size)


def cluster_bootstrap(
    y_true,
    y_score,
    groups,
    *,
    threshold: float | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Patient cluster bootstrap percentile intervals for AUC, sensitivity and specificity.

    Args:
        y_true: 0/1 labels; y_score: scores; groups: patient id of each image (any hashable).
        threshold: operating threshold (``score >= threshold``); None skips sensitivity/specificity.
        n_resamples: patient resamples (seeded ``numpy.random.default_rng(seed)``).
        alpha: 1 - confidence level.

    Returns:
        ``{"n_patients", "n_resamples", "seed", "method", "auc": {"low", "high", "n_valid"},
        "sensitivity": {...}, "specificity": {...}}``. Resamples that draw no positive (or no
        negative) image are dropped and counted (``n_valid``). NaN intervals + warning when
        the cohort lacks a class.
    """
    alpha = check_alpha(alpha)
    y, s = check_binary(y_true, y_score)
    g = pd.factorize(pd.Series(np.asarray(groups)).astype(str))[0]
    if g.size != y.size:
        raise ValueError(f"groups has {g.size} values but y_true has {y.size}")
    n_groups = int(g.max()) + 1 if g.size else 0
    keys = ["auc"] + (["sensitivity", "specificity"] if threshold is not None else [])
    out: dict = {
        "n_patients": n_groups,
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "method": "patient cluster bootstrap (percentile)",
    }
    if y.sum() == 0 or y.sum() == y.size:
        warn_undefined("cluster_bootstrap: needs both classes; intervals are undefined (NaN)")
        return {**out, **{k: {"low": float("nan"), "high": float("nan"), "n_valid": 0} for k in keys}}
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // (y.size + n_groups + 1))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for start in range(0, int(n_resamples), block):
        b = min(block, int(n_resamples) - start)
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=b)
        stats = weighted_stats(y, s, cluster_weights(g, counts), threshold)
        for k in keys:
            parts[k].append(stats[k])
    for k in keys:
        lo, hi, n_ok = _percentile(np.concatenate(parts[k]), alpha)
        out[k] = {"low": lo, "high": hi, "n_valid": n_ok}
    return out


def calibration_bootstrap(
    y_true, y_prob, *, n_bins: int = 10, n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05
) -> dict:
    """Percentile bootstrap intervals (images resampled) for the Brier score and the ECE.

    The ECE uses the same equal-width bins as
    :func:`cxr_cad.metrics.calibration.expected_calibration_error`; a resample keeps each
    image's bin, so every resample's ECE is a weighted sum over the original images.
    Returns ``{"brier": {"low", "high"}, "ece": {"low", "high"}, "n_resamples", "seed"}``.
    """
    alpha = check_alpha(alpha)
    y, p = check_binary(y_true, y_prob, name="y_prob", probabilities=True)
    nan = {"low": float("nan"), "high": float("nan")}
    out = {"n_resamples": int(n_resamples), "seed": int(seed), "method": "image bootstrap (percentile)"}
    if y.size < 2:
        warn_undefined("calibration_bootstrap: fewer than 2 cases; intervals are undefined (NaN)")
        return {**out, "brier": dict(nan), "ece": dict(nan)}
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    ids = np.searchsorted(edges[1:-1], p)
    onehot = np.zeros((y.size, int(n_bins)))
    onehot[np.arange(y.size), ids] = 1.0
    rng = np.random.default_rng(seed)
    sq = (p - y) ** 2
    briers, eces = [], []
    block = max(1, _BLOCK_ELEMENTS // (y.size + 1))
    for start in range(0, int(n_resamples), block):
        b = min(block, int(n_resamples) - start)
        w = rng.multinomial(y.size, np.full(y.size, 1.0 / y.size), size=b).astype(np.float64)
        briers.append(w @ sq / y.size)
        count = w @ onehot
        gap = np.abs(w @ (onehot * y[:, None]) - w @ (onehot * p[:, None]))  # |sum y - sum p| per bin
        eces.append(gap.sum(axis=1) / count.sum(axis=1))
    out["brier"] = dict(zip(("low", "high"), _percentile(np.concatenate(briers), alpha)[:2]))
    out["ece"] = dict(zip(("low", "high"), _percentile(np.concatenate(eces), alpha)[:2]))
    return out

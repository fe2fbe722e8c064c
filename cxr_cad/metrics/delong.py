"""DeLong's AUC variance (fast mid-rank algorithm of Sun & Xu 2014) and the paired DeLong test.

References:
    DeLong ER, DeLong DM, Clarke-Pearson DL (1988). Comparing the areas under two or more
    correlated receiver operating characteristic curves: a nonparametric approach.
    Biometrics 44:837-845.
    Sun X, Xu W (2014). Fast implementation of DeLong's algorithm for comparing the areas
    under correlated receiver operating characteristic curves. IEEE Signal Processing
    Letters 21(11):1389-1393.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm, rankdata

from cxr_cad.errors import ConfigError
from cxr_cad.metrics._common import check_alpha, check_binary, warn_one_class, warn_undefined


@dataclass(frozen=True)
class AucCI:
    """An AUC with its confidence interval.

    ``method`` is ``"delong"`` or ``"bootstrap"`` (percentile interval of a stratified
    bootstrap; ``se`` is the SD of the bootstrap AUCs). For DeLong, ``interval`` says how the
    SE became an interval: ``"wald"`` (auc +/- z*se, clipped to [0, 1], as pROC does;
    ``clipped`` is True when an end was cut) or ``"logit"`` (the Wald interval of
    logit(AUC) with SE se / (auc (1 - auc)), mapped back; never leaves (0, 1)).
    Undefined values are NaN.
    """

    auc: float
    low: float
    high: float
    se: float
    method: str
    alpha: float
    n_pos: int
    n_neg: int
    n_resamples: int | None = None
    seed: int | None = None
    interval: str = "percentile"
    clipped: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedTest:
    """DeLong test of H0: AUC_a == AUC_b for two scores of the same cases.

    ``diff`` = auc_a - auc_b; ``low``/``high`` its Wald interval; ``z`` = diff / se;
    ``p_value`` two-sided; ``correlation`` between the two AUC estimates.
    """

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p_value: float
    low: float
    high: float
    correlation: float
    alpha: float
    n_pos: int
    n_neg: int

    def to_dict(self) -> dict:
        return asdict(self)


def structural_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong placement values by mid-ranks (Sun & Xu 2014), for ``k`` score vectors at once.

    Args:
        y: 0/1 labels, shape (n,), both classes present.
        scores: shape (k, n).

    Returns:
        ``(auc (k,), v10 (k, m), v01 (k, n_neg))`` where ``v10[r, i]`` is the fraction of
        negatives scored below positive ``i`` (ties 1/2) and ``v01[r, j]`` the fraction of
        positives scored above negative ``j`` (ties 1/2).
    """
    pos = scores[:, y == 1]
    neg = scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    combined = np.concatenate([pos, neg], axis=1)
    tz = rankdata(combined, method="average", axis=1)
    tx = rankdata(pos, method="average", axis=1)
    ty = rankdata(neg, method="average", axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return auc, v10, v01


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance matrix (k, k): S10/m + S01/n (ddof = 1)."""
    auc, v10, v01 = structural_components(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return auc, s10 / m + s01 / n


def delong_auc_ci(y_true, y_score, *, alpha: float = 0.05, interval: str = "wald") -> AucCI:
    """AUC with a DeLong (1988) confidence interval, computed in O(n log n).

    Args:
        y_true: 0/1 labels (1 = positive class).
        y_score: scores, higher = more likely positive.
        alpha: 1 - confidence level, in (0, 1) (0.05 gives a 95% CI).
        interval: ``"wald"`` (auc +/- z se, clipped to [0, 1]) or ``"logit"`` (Wald on the
            logit scale, delta-method SE). At 10 positives / 40 negatives and AUC 0.95 the
            measured coverage of a nominal 95% interval is about 0.81 for the clipped Wald
            interval and about 0.93 for the logit interval (benchmarks/auc_ci_coverage.py;
            docs/metrics.md), so reports use ``"logit"``. At AUC 0 or 1 the logit interval
            is degenerate (zero width, like the Wald one).

    Returns:
        :class:`AucCI` (method ``"delong"``). With a class missing everything is NaN; with
        fewer than 2 cases in a class the variance (se, low, high) is NaN. Both warn with
        :class:`UndefinedMetricWarning`.

    Raises:
        ValueError: bad labels/scores.
        ConfigError: bad alpha or interval.
    """
    alpha = check_alpha(alpha)
    if interval not in ("wald", "logit"):
        raise ConfigError(f"interval must be 'wald' or 'logit'; got {interval!r}")
    y, s = check_binary(y_true, y_score)
    n_pos, n_neg, missing = warn_one_class("delong_auc_ci", y, "AUC and CI are undefined (NaN)")
    nan = float("nan")
    if missing:
        return AucCI(nan, nan, nan, nan, "delong", alpha, n_pos, n_neg, interval=interval)
    if n_pos < 2 or n_neg < 2:
        auc = float(structural_components(y, s[None, :])[0][0])
        warn_undefined(
            f"delong_auc_ci: {n_pos} positive and {n_neg} negative cases; the DeLong "
            "variance needs at least 2 of each, CI is undefined (NaN)"
        )
        return AucCI(auc, nan, nan, nan, "delong", alpha, n_pos, n_neg, interval=interval)
    auc_arr, cov = delong_covariance(y, s[None, :])
    auc = float(auc_arr[0])
    se = math.sqrt(max(float(cov[0, 0]), 0.0))
    z = float(norm.ppf(1 - alpha / 2))
    if interval == "logit":
        low, high = logit_interval(auc, se, z)
        return AucCI(auc, low, high, se, "delong", alpha, n_pos, n_neg, interval="logit")
    low, high = auc - z * se, auc + z * se
    return AucCI(
        auc,
        max(0.0, low),
        min(1.0, high),
        se,
        "delong",
        alpha,
        n_pos,
        n_neg,
        interval="wald",
        clipped=bool(low < 0.0 or high > 1.0),
    )


def logit_interval(auc: float, se: float, z: float) -> tuple[float, float]:
    """Wald interval of logit(auc) with delta-method SE ``se / (auc (1 - auc))``, mapped back.

    At auc 0 or 1 (where the logit is infinite, and DeLong's SE is 0) returns ``(auc, auc)``.
    """
    if auc <= 0.0 or auc >= 1.0:
        return auc, auc
    centre = math.log(auc / (1.0 - auc))
    half = z * se / (auc * (1.0 - auc))
    return 1.0 / (1.0 + math.exp(-(centre - half))), 1.0 / (1.0 + math.exp(-(centre + half)))


def delong_paired_test(y_true, score_a, score_b, *, alpha: float = 0.05) -> PairedTest:
    """Paired DeLong test comparing two models scored on the same cases.

    Typical use: the old model vs the retrained model, both scored on the new cohort.

    Returns:
        :class:`PairedTest`. NaN fields with :class:`UndefinedMetricWarning` when a class
        has fewer than 2 cases or the difference has zero variance (identical rankings).

    Raises:
        ValueError: bad labels/scores, different lengths.
        ConfigError: bad alpha.
    """
    alpha = check_alpha(alpha)
    y, a = check_binary(y_true, score_a, name="score_a")
    _, b = check_binary(y_true, score_b, name="score_b")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    nan = float("nan")
    if n_pos < 2 or n_neg < 2:
        warn_undefined(
            f"delong_paired_test: needs at least 2 cases of each class, got {n_pos} positive "
            f"and {n_neg} negative; the test is undefined (NaN)"
        )
        aucs = structural_components(y, np.vstack([a, b]))[0] if n_pos and n_neg else [nan, nan]
        return PairedTest(
            float(aucs[0]), float(aucs[1]), float(aucs[0] - aucs[1]), nan, nan, nan, nan, nan, nan, alpha, n_pos, n_neg
        )
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    denom = math.sqrt(max(cov[0, 0], 0.0) * max(cov[1, 1], 0.0))
    corr = float(cov[0, 1] / denom) if denom > 0 else nan
    if not var > 0:
        warn_undefined(
            "delong_paired_test: the AUC difference has zero variance (the two scores rank "
            "the cases identically or perfectly); z and p are undefined (NaN)"
        )
        return PairedTest(float(aucs[0]), float(aucs[1]), diff, 0.0, nan, nan, diff, diff, corr, alpha, n_pos, n_neg)
    se = math.sqrt(var)
    z = diff / se
    p = float(2 * norm.sf(abs(z)))
    q = float(norm.ppf(1 - alpha / 2))
    return PairedTest(
        float(aucs[0]), float(aucs[1]), diff, se, z, p, diff - q * se, diff + q * se, corr, alpha, n_pos, n_neg
    )

"""Proportions with Wilson score intervals, and likelihood ratios with log-method intervals.

References:
    Wilson EB (1927). Probable inference, the law of succession, and statistical inference.
    JASA 22:209-212. Newcombe RG (1998). Two-sided confidence intervals for the single
    proportion: comparison of seven methods. Stat Med 17:857-872 (method 3).
    Simel DL, Samsa GP, Matchar DB (1991). Likelihood ratios with confidence: sample size
    estimation for diagnostic test studies. J Clin Epidemiol 44:763-770 (log method).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from cxr_cad.metrics._common import check_alpha, warn_undefined


def wilson_ci(successes: int, n: int, *, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n`` (no continuity correction).

    Returns ``(low, high)`` within [0, 1]; ``(nan, nan)`` with :class:`UndefinedMetricWarning`
    when ``n == 0``. Raises ``ValueError`` unless ``0 <= successes <= n`` are integers.
    """
    alpha = check_alpha(alpha)
    k, total = int(successes), int(n)
    if k != successes or total != n or not 0 <= k <= total:
        raise ValueError(f"wilson_ci needs integers 0 <= successes <= n; got successes={successes}, n={n}")
    n = total
    if n == 0:
        warn_undefined("wilson_ci: n = 0, the proportion and its interval are undefined (NaN)")
        return float("nan"), float("nan")
    z = float(norm.ppf(1 - alpha / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def proportion(successes: int, n: int, *, alpha: float = 0.05, name: str = "proportion") -> dict:
    """``{"value", "low", "high", "k", "n"}`` with a Wilson interval; NaN + warning when n == 0."""
    if n == 0:
        warn_undefined(f"{name}: denominator is 0, undefined (NaN)")
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "k": 0, "n": 0}
    low, high = wilson_ci(successes, n, alpha=alpha)
    return {"value": successes / n, "low": low, "high": high, "k": int(successes), "n": int(n)}


def likelihood_ratios(tp: int, fp: int, tn: int, fn: int, *, alpha: float = 0.05) -> tuple[dict, dict]:
    """Positive and negative likelihood ratios with log-method (Simel 1991) intervals.

    LR+ = sensitivity / (1 - specificity), LR- = (1 - sensitivity) / specificity.
    ``SE(ln LR+) = sqrt(1/tp - 1/(tp+fn) + 1/fp - 1/(fp+tn))``,
    ``SE(ln LR-) = sqrt(1/fn - 1/(tp+fn) + 1/tn - 1/(fp+tn))``.

    Returns two dicts ``{"value", "low", "high"}``. A zero denominator (e.g. no false
    positives for LR+) gives NaN with :class:`UndefinedMetricWarning`; a zero numerator
    gives value 0 with an undefined (NaN) interval.
    """
    alpha = check_alpha(alpha)
    z = float(norm.ppf(1 - alpha / 2))
    nan = float("nan")
    n_pos, n_neg = tp + fn, fp + tn

    def one(name: str, a: int, b: int) -> dict:
        # ratio (a / n_pos) / (b / n_neg)
        if n_pos == 0 or n_neg == 0 or b == 0:
            warn_undefined(f"{name}: zero denominator (n_pos={n_pos}, n_neg={n_neg}, count={b}); undefined (NaN)")
            return {"value": nan, "low": nan, "high": nan}
        value = (a / n_pos) / (b / n_neg)
        if a == 0:
            return {"value": 0.0, "low": nan, "high": nan}
        se = math.sqrt(1 / a - 1 / n_pos + 1 / b - 1 / n_neg)
        return {"value": value, "low": value * math.exp(-z * se), "high": value * math.exp(z * se)}

    return one("lr_pos", tp, fp), one("lr_neg", fn, tn)


def balanced_accuracy_ci(sens: dict, spec: dict) -> dict:
    """Balanced accuracy ``(sensitivity + specificity) / 2`` with a MOVER-Wilson interval.

    Sensitivity and specificity are independent proportions (different images), so the
    interval of their mean combines their Wilson intervals by the method of variance
    estimates recovery (Newcombe 1998; Zou & Donner 2008):
    ``L = BA - sqrt((S - l_S)^2 + (P - l_P)^2) / 2``, ``U = BA + sqrt((u_S - S)^2 + (u_P - P)^2) / 2``.
    Unlike a Wald or bootstrap interval it does not collapse when sensitivity or specificity is 0 or 1.

    Args:
        sens, spec: proportions as returned by :func:`proportion` (``value``, ``low``, ``high``).

    Returns:
        ``{"value", "low", "high", "method": "MOVER-Wilson"}``; NaN where either is undefined.
    """
    s, p = sens["value"], spec["value"]
    if not (math.isfinite(s) and math.isfinite(p)):
        nan = float("nan")
        return {"value": nan, "low": nan, "high": nan, "method": "MOVER-Wilson"}
    ba = (s + p) / 2.0
    low = ba - math.sqrt((s - sens["low"]) ** 2 + (p - spec["low"]) ** 2) / 2.0
    high = ba + math.sqrt((sens["high"] - s) ** 2 + (spec["high"] - p) ** 2) / 2.0
    return {"value": ba, "low": max(0.0, low), "high": min(1.0, high), "method": "MOVER-Wilson"}


def f1_ci(tp: int, fp: int, tn: int, fn: int, *, alpha: float = 0.05, n_resamples: int = 2000, seed: int = 0) -> dict:
    """F1 score ``2 TP / (2 TP + FP + FN)`` with a stratified-bootstrap percentile interval.

    At a fixed threshold, resampling the positive images with replacement makes the number
    called positive ``Binomial(n_pos, TP / n_pos)``, and likewise for the negatives, so the
    stratified case bootstrap is drawn exactly from two binomials (seeded numpy Generator).
    Resamples where F1 is undefined (no positives and no positive calls) are dropped.

    Returns:
        ``{"value", "low", "high", "method": "stratified bootstrap", "n_resamples", "seed"}``;
        NaN with :class:`UndefinedMetricWarning` when F1 is undefined.
    """
    alpha = check_alpha(alpha)
    n_pos, n_neg = tp + fn, fp + tn
    out = {"method": "stratified bootstrap", "n_resamples": int(n_resamples), "seed": int(seed)}
    den = 2 * tp + fp + fn
    if den == 0:
        warn_undefined("f1: no positive cases and no positive calls; undefined (NaN)")
        nan = float("nan")
        return {"value": nan, "low": nan, "high": nan, **out}
    rng = np.random.default_rng(seed)
    tp_b = rng.binomial(n_pos, tp / n_pos, size=n_resamples) if n_pos else np.zeros(n_resamples)
    fp_b = rng.binomial(n_neg, fp / n_neg, size=n_resamples) if n_neg else np.zeros(n_resamples)
    den_b = 2 * tp_b + fp_b + (n_pos - tp_b)
    ok = den_b > 0
    f1_b = 2 * tp_b[ok] / den_b[ok]
    low, high = np.quantile(f1_b, [alpha / 2, 1 - alpha / 2])
    return {"value": 2 * tp / den, "low": float(low), "high": float(high), **out}

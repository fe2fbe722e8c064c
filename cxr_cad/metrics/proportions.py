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
            warn_undefined(f"{name}: zero denominator (n_pos={n_pos}, n_neg={n_neg}, count={b}); "
                           "undefined (NaN)")
            return {"value": nan, "low": nan, "high": nan}
        value = (a / n_pos) / (b / n_neg)
        if a == 0:
            return {"value": 0.0, "low": nan, "high": nan}
        se = math.sqrt(1 / a - 1 / n_pos + 1 / b - 1 / n_neg)
        return {"value": value, "low": value * math.exp(-z * se), "high": value * math.exp(z * se)}

    return one("lr_pos", tp, fp), one("lr_neg", fn, tn)

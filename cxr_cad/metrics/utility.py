"""Clinical utility: decision curve (net benefit), PPV/NPV at a given prevalence, the
precision-recall curve with its area, and the calibration slope and intercept.

References:
    Vickers AJ, Elkin EB (2006). Decision curve analysis: a novel method for evaluating
    prediction models. Med Decis Making 26:565-574.
    Mercaldo ND, Lau KF, Zhou XH (2007). Confidence intervals for predictive values with an
    emphasis to case-control studies. Stat Med 26:2170-2183 (logit interval).
    Cox DR (1958). Two further applications of a model for binary regression. Biometrika
    45:562-565 (calibration slope); Van Calster B et al. (2019). Calibration: the Achilles
    heel of predictive analytics. BMC Med 17:230.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
from scipy.stats import norm

from cxr_cad.errors import ConfigError
from cxr_cad.metrics._common import check_alpha, check_binary, warn_one_class, warn_undefined

#: threshold probabilities of the decision curve: 1% to 99% in steps of 1%
DEFAULT_THRESHOLDS = tuple(round(0.01 * k, 2) for k in range(1, 100))
_CLIP = 1e-6


def net_benefit(y_true, y_score, threshold: float) -> float:
    """Net benefit of "treat when score >= threshold": ``TP/n - FP/n * pt / (1 - pt)``.

    ``threshold`` (pt) is both the decision threshold and the exchange rate between false
    and true positives (Vickers & Elkin 2006). Raises ``ValueError`` unless 0 < pt < 1.
    """
    pt = float(threshold)
    if not 0.0 < pt < 1.0:
        raise ConfigError(f"threshold probability must be in (0, 1); got {threshold}")
    y, s = check_binary(y_true, y_score, probabilities=True)
    if y.size == 0:
        warn_undefined("net_benefit: no cases; undefined (NaN)")
        return float("nan")
    called = s >= pt
    tp = float(np.sum(called & (y == 1)))
    fp = float(np.sum(called & (y == 0)))
    return tp / y.size - fp / y.size * pt / (1.0 - pt)


def decision_curve(y_true, y_score, *, thresholds=DEFAULT_THRESHOLDS) -> dict:
    """Net benefit of the model, of treating everyone and of treating no one.

    Returns ``{"threshold", "model", "treat_all", "treat_none", "prevalence", "n"}`` (lists
    over ``thresholds``; treat-none is 0 everywhere, treat-all is
    ``prevalence - (1 - prevalence) * pt / (1 - pt)``). Decision rule ``score >= pt``.
    """
    y, s = check_binary(y_true, y_score, probabilities=True)
    pts = np.asarray(thresholds, dtype=np.float64)
    if pts.size == 0 or pts.min() <= 0 or pts.max() >= 1:
        raise ConfigError("decision curve thresholds must lie in (0, 1)")
    n = y.size
    if n == 0:
        warn_undefined("decision_curve: no cases; undefined (NaN)")
        nan = [float("nan")] * pts.size
        return {
            "threshold": pts.tolist(),
            "model": nan,
            "treat_all": nan,
            "treat_none": [0.0] * pts.size,
            "prevalence": float("nan"),
            "n": 0,
        }
    called = s[None, :] >= pts[:, None]  # (thresholds, cases)
    tp = (called & (y == 1)).sum(axis=1)
    fp = (called & (y == 0)).sum(axis=1)
    odds = pts / (1.0 - pts)
    prev = float(y.mean())
    return {
        "threshold": pts.tolist(),
        "model": (tp / n - fp / n * odds).tolist(),
        "treat_all": (prev - (1.0 - prev) * odds).tolist(),
        "treat_none": [0.0] * pts.size,
        "prevalence": prev,
        "n": int(n),
    }


def _logit_interval(value: float, var: float, z: float) -> tuple[float, float]:
    if not (math.isfinite(var) and 0.0 < value < 1.0):
        return float("nan"), float("nan")
    lo = math.log(value / (1 - value)) - z * math.sqrt(var)
    hi = math.log(value / (1 - value)) + z * math.sqrt(var)
    return float(expit(lo)), float(expit(hi))


def predictive_values(tp: int, fp: int, tn: int, fn: int, prevalence: float, *, alpha: float = 0.05) -> dict:
    """PPV and NPV at ``prevalence`` from the sensitivity and specificity of one operating point.

    ``PPV = sens p / (sens p + (1 - spec)(1 - p))``, ``NPV = spec (1 - p) / ((1 - sens) p + spec (1 - p))``.
    Intervals: logit method of Mercaldo et al. (2007); where a count is 0 (sensitivity or
    specificity of 0 or 1) their variance uses 0.5 added to each cell, as they recommend.

    Returns ``{"prevalence", "ppv": {"value", "low", "high"}, "npv": {...}}``; NaN with
    :class:`UndefinedMetricWarning` when a class has no cases.
    """
    alpha = check_alpha(alpha)
    p = float(prevalence)
    if not 0.0 < p < 1.0:
        raise ConfigError(f"prevalence must be in (0, 1); got {prevalence}")
    n_pos, n_neg = tp + fn, fp + tn
    nan = {"value": float("nan"), "low": float("nan"), "high": float("nan")}
    if n_pos == 0 or n_neg == 0:
        warn_undefined(f"predictive_values: needs both classes (got {n_pos} positive, {n_neg} negative); NaN")
        return {"prevalence": p, "ppv": dict(nan), "npv": dict(nan)}
    sens, spec = tp / n_pos, tn / n_neg
    z = float(norm.ppf(1 - alpha / 2))
    ppv_den = sens * p + (1 - spec) * (1 - p)
    npv_den = (1 - sens) * p + spec * (1 - p)
    ppv = sens * p / ppv_den if ppv_den > 0 else float("nan")
    npv = spec * (1 - p) / npv_den if npv_den > 0 else float("nan")
    # continuity-corrected rates for the variance only (Mercaldo 2007, section 2.3)
    adj = 0.5 if min(tp, fp, tn, fn) == 0 else 0.0
    se_, sp_ = (tp + adj) / (n_pos + 2 * adj), (tn + adj) / (n_neg + 2 * adj)
    var_ppv = (1 - se_) / (se_ * (n_pos + 2 * adj)) + sp_ / ((1 - sp_) * (n_neg + 2 * adj))
    var_npv = se_ / ((1 - se_) * (n_pos + 2 * adj)) + (1 - sp_) / (sp_ * (n_neg + 2 * adj))
    out: dict[str, Any] = {"prevalence": p}
    for name, value, var in (("ppv", ppv, var_ppv), ("npv", npv, var_npv)):
        lo, hi = _logit_interval(value, var, z)
        if value in (0.0, 1.0):  # the logit of 0 or 1 is infinite: the interval ends there
            lo, hi = _logit_interval(min(max(value, _CLIP), 1 - _CLIP), var, z)
            lo, hi = (0.0, hi) if value == 0.0 else (lo, 1.0)
        out[name] = {"value": value, "low": lo, "high": hi}
    return out


def precision_recall(y_true, y_score) -> dict:
    """Precision-recall curve and its area (average precision) from scikit-learn.

    Returns ``{"precision", "recall", "thresholds", "auprc", "prevalence"}`` (AUPRC is
    ``sklearn.metrics.average_precision_score``, the step-wise area; the no-skill line is
    the prevalence). NaN + warning without positives.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, s = check_binary(y_true, y_score)
    n_pos, _, missing = warn_one_class("precision_recall", y, "the curve is undefined (NaN)")
    if missing or n_pos == 0:
        return {
            "precision": [],
            "recall": [],
            "thresholds": [],
            "auprc": float("nan"),
            "prevalence": float(y.mean()) if y.size else float("nan"),
        }
    precision, recall, thr = precision_recall_curve(y, s)
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "thresholds": thr.tolist(),
        "auprc": float(average_precision_score(y, s)),
        "prevalence": float(y.mean()),
    }


def calibration_slope_intercept(y_true, y_prob) -> dict:
    """Calibration slope and intercept (calibration-in-the-large) on the logit scale.

    Slope: ``b`` of the logistic regression ``logit P(y=1) = a + b logit(p)`` (1 = ideal,
    < 1 = predictions too extreme), fitted by scikit-learn without penalty. Intercept:
    ``a`` of ``logit P(y=1) = a + logit(p)`` with the slope fixed at 1 (0 = ideal, > 0 =
    predictions too low on average). scikit-learn has no offset term, so that one-parameter
    maximum-likelihood fit uses ``scipy.optimize.minimize_scalar``. Probabilities are clipped
    to [1e-6, 1 - 1e-6] before the logit. NaN + warning with one class.
    """
    from sklearn.linear_model import LogisticRegression

    y, p = check_binary(y_true, y_prob, name="y_prob", probabilities=True)
    _, _, missing = warn_one_class("calibration_slope_intercept", y, "slope and intercept are undefined (NaN)")
    nan = float("nan")
    if missing:
        return {"slope": nan, "intercept": nan, "slope_fit_intercept": nan}
    lp = np.log(np.clip(p, _CLIP, 1 - _CLIP) / (1 - np.clip(p, _CLIP, 1 - _CLIP)))
    if np.ptp(lp) == 0:
        warn_undefined("calibration_slope_intercept: every score is the same; the slope is undefined (NaN)")
        slope, a_fit = nan, nan
    else:
        fit = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000).fit(lp[:, None], y)
        slope, a_fit = float(fit.coef_[0, 0]), float(fit.intercept_[0])

    def nll(a: float) -> float:
        eta = a + lp
        return float(np.sum(np.logaddexp(0.0, eta)) - np.sum(y * eta))

    res = minimize_scalar(nll, bounds=(-30.0, 30.0), method="bounded", options={"xatol": 1e-9})
    return {"slope": slope, "intercept": float(res.x), "slope_fit_intercept": a_fit}

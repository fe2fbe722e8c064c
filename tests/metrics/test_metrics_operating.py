"""Operating points, binary_metrics, Wilson intervals and likelihood ratios."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

from cxr_cad.errors import ConfigError
from cxr_cad.metrics import (
    UndefinedMetricWarning,
    binary_metrics,
    likelihood_ratios,
    roc_curve,
    small_class_warning,
    threshold_for_sensitivity,
    threshold_for_specificity,
    wilson_ci,
    youden_choice,
    youden_threshold,
)


def _data(seed: int, n: int = 200):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    return y, np.round(rng.normal(y * 1.0, 1.0), 1)


def _sens_spec(y, s, t):
    pred = s >= t
    return pred[y == 1].mean(), (~pred[y == 0]).mean()


def _slow_youden(y, s):
    """Exact J at every observed threshold; ties: nearest the middle of the tied range, then higher."""
    from fractions import Fraction

    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    js = {
        t: Fraction(int(((s >= t) & (y == 1)).sum()), n_pos) - Fraction(int(((s >= t) & (y == 0)).sum()), n_neg)
        for t in np.unique(s)
    }
    best = max(js.values())
    tied = sorted((t for t, j in js.items() if j == best), reverse=True)
    mid = (Fraction(float(tied[0])) + Fraction(float(tied[-1]))) / 2
    return min(tied, key=lambda t: (abs(Fraction(float(t)) - mid), -t)), tied


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_brute_force(seed):
    y, s = _data(seed)
    best_t, tied = _slow_youden(y, s)
    assert youden_threshold(y, s) == best_t
    c = youden_choice(y, s)
    assert (c.tie_low, c.tie_high, c.n_tied) == (float(tied[-1]), float(tied[0]), len(tied))
    m = binary_metrics(y, s, threshold=youden_threshold(y, s))
    se, sp = _sens_spec(y, s, best_t)
    assert m["sensitivity"]["value"] + m["specificity"]["value"] - 1 == pytest.approx(se + sp - 1)


def test_youden_ties_are_exact_and_follow_the_documented_rule():
    # J = 2/3 - 0 at 0.9 and 1 - 1/3 at 0.6: equal, though the floats differ in the last bit
    y, s = [1, 1, 1, 0, 0, 0], [0.9, 0.9, 0.6, 0.6, 0.5, 0.4]
    assert 2 / 3 - 0 != 1 - 1 / 3
    c = youden_choice(y, s)
    assert c.threshold == 0.9 == youden_threshold(y, s)  # two-way tie: the higher (docs/metrics.md)
    assert (c.tie_low, c.tie_high, c.n_tied, c.n_pos, c.n_neg) == (0.6, 0.9, 2, 3, 3)
    assert c.to_dict()["tie_range"] == [0.6, 0.9]
    # three tied thresholds (0.9, 0.6, 0.3 all give J = 1/3): the middle one, not an end
    y3, s3 = [1, 1, 0, 1, 0, 0], [0.9, 0.6, 0.6, 0.3, 0.3, 0.1]
    assert _slow_youden(np.array(y3), np.array(s3))[0] == 0.6
    c3 = youden_choice(y3, s3)
    assert c3.n_tied == 3 and (c3.tie_low, c3.tie_high) == (0.3, 0.9) and c3.threshold == 0.6


def test_small_class_warning():
    assert small_class_warning(20, 20) is None
    msg = small_class_warning(120, 19)
    assert "19 negative" in msg and "fewer than 20" in msg
    assert small_class_warning(3, 300, minimum=2) is None


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_threshold_for_sensitivity_brute_force(target):
    y, s = _data(3)
    ok = [t for t in np.unique(s) if _sens_spec(y, s, t)[0] >= target - 1e-12]
    t = threshold_for_sensitivity(y, s, target)
    assert t == max(ok)
    assert binary_metrics(y, s, threshold=t)["sensitivity"]["value"] >= target - 1e-12


@pytest.mark.parametrize("target", [0.0, 0.5, 0.8, 0.9, 0.95, 1.0])
def test_threshold_for_specificity_brute_force(target):
    y, s = _data(4)
    candidates = list(np.unique(s)) + [np.nextafter(s.max(), np.inf)]
    ok = [t for t in candidates if _sens_spec(y, s, t)[1] >= target - 1e-12]
    t = threshold_for_specificity(y, s, target)
    assert t == min(ok)
    with warnings.catch_warnings():  # the extreme targets call everything/nothing positive
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        assert binary_metrics(y, s, threshold=t)["specificity"]["value"] >= target - 1e-12


def test_specificity_one_without_a_clean_score_gives_finite_threshold():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.1, 0.5, 0.9, 0.9])
    t = threshold_for_specificity(y, s, 1.0)
    assert math.isfinite(t) and t > 0.9
    with pytest.warns(UndefinedMetricWarning):  # nothing called positive: ppv, lr_pos undefined
        m = binary_metrics(y, s, threshold=t)
    assert m["confusion"] == {"tp": 0, "fp": 0, "tn": 2, "fn": 2}


def test_threshold_targets_are_validated_and_one_class_is_nan():
    y, s = _data(0)
    with pytest.raises(ConfigError):
        threshold_for_sensitivity(y, s, 0.0)
    with pytest.raises(ConfigError):
        threshold_for_specificity(y, s, 1.2)
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(youden_threshold(np.zeros(4), np.arange(4.0)))
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(threshold_for_sensitivity(np.ones(4), np.arange(4.0), 0.9))


@pytest.mark.parametrize("seed,threshold", [(0, 0.5), (1, 0.0), (2, 1.3), (5, -0.4)])
def test_binary_metrics_against_sklearn(seed, threshold):
    y, s = _data(seed)
    m = binary_metrics(y, s, threshold=threshold, class_names=("NORMAL", "PNEUMONIA"))
    pred = (s >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert m["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert m["accuracy"]["value"] == pytest.approx((tp + tn) / len(y))
    assert m["sensitivity"]["value"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"]["value"] == pytest.approx(tn / (tn + fp))
    assert m["ppv"]["value"] == pytest.approx(tp / (tp + fp))
    assert m["npv"]["value"] == pytest.approx(tn / (tn + fn))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["per_class_accuracy"]["NORMAL"] == m["specificity"]
    assert m["per_class_accuracy"]["PNEUMONIA"] == m["sensitivity"]
    assert (m["n"], m["n_pos"], m["n_neg"]) == (len(y), int(y.sum()), int((1 - y).sum()))
    for key in ("accuracy", "sensitivity", "specificity", "ppv", "npv"):
        p = m[key]
        assert (p["low"], p["high"]) == wilson_ci(p["k"], p["n"])
        assert p["low"] <= p["value"] <= p["high"]
    # consistent with the ROC curve at the same threshold (score >= threshold)
    fpr, tpr, thr = roc_curve(y, s)
    if threshold in thr:
        i = list(thr).index(threshold)
        assert tpr[i] == pytest.approx(m["sensitivity"]["value"])
        assert fpr[i] == pytest.approx(1 - m["specificity"]["value"])


def test_score_equal_to_threshold_is_positive():
    with pytest.warns(UndefinedMetricWarning):  # no negative calls: npv, lr_neg undefined
        m = binary_metrics([1, 0], [0.5, 0.5], threshold=0.5)
    assert m["confusion"] == {"tp": 1, "fp": 1, "tn": 0, "fn": 0}


def test_zero_denominators_give_nan_and_warning():
    with pytest.warns(UndefinedMetricWarning):
        m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], threshold=0.9)
    assert math.isnan(m["sensitivity"]["value"]) and math.isnan(m["ppv"]["value"])
    assert math.isnan(m["f1"]) and math.isnan(m["balanced_accuracy"])
    assert m["specificity"]["value"] == 1.0
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics([0, 1], [0.1, 0.2], threshold=float("nan"))


def test_wilson_formula_and_newcombe_1998_examples():
    """Newcombe RG (1998) Stat Med 17:857-872, Table II, method 3 (Wilson score, no CC)."""
    published = {
        (81, 263): (0.2553, 0.3662),
        (15, 148): (0.0624, 0.1605),
        (0, 20): (0.0, 0.1611),
        (1, 29): (0.0061, 0.1718),
    }
    for (k, n), (lo, hi) in published.items():
        got = wilson_ci(k, n)
        assert round(got[0], 4) == lo and round(got[1], 4) == hi
    z = 1.959963984540054
    for k, n in [(3, 10), (47, 50), (1, 2)]:
        p = k / n
        centre = (2 * n * p + z * z) / (2 * (n + z * z))
        half = z * math.sqrt(z * z + 4 * n * p * (1 - p)) / (2 * (n + z * z))
        assert wilson_ci(k, n) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert wilson_ci(10, 10)[1] == 1.0
    with pytest.warns(UndefinedMetricWarning):
        assert all(math.isnan(v) for v in wilson_ci(0, 0))
    with pytest.raises(ValueError):
        wilson_ci(5, 3)
    with pytest.raises(ValueError):
        wilson_ci(1.5, 3)


def test_likelihood_ratios_log_method():
    tp, fp, tn, fn = 90, 20, 80, 10
    pos, neg = likelihood_ratios(tp, fp, tn, fn)
    sens, spec = tp / (tp + fn), tn / (tn + fp)
    assert pos["value"] == pytest.approx(sens / (1 - spec))
    assert neg["value"] == pytest.approx((1 - sens) / spec)
    se = math.sqrt((1 - sens) / tp + spec / fp)  # the same SE written differently
    assert pos["low"] == pytest.approx(pos["value"] * math.exp(-1.959964 * se), rel=1e-6)
    assert pos["high"] == pytest.approx(pos["value"] * math.exp(1.959964 * se), rel=1e-6)
    se_n = math.sqrt(sens / fn + (1 - spec) / tn)
    assert neg["high"] == pytest.approx(neg["value"] * math.exp(1.959964 * se_n), rel=1e-6)
    with pytest.warns(UndefinedMetricWarning):
        p0, _ = likelihood_ratios(5, 0, 5, 0)
    assert math.isnan(p0["value"])


def test_balanced_accuracy_ci_is_mover_of_wilson_intervals_and_never_collapses():
    from cxr_cad.metrics.proportions import balanced_accuracy_ci, wilson_ci

    y = np.array([1] * 40 + [0] * 60)
    s = np.r_[np.linspace(0.5, 1.0, 40), np.linspace(0.0, 0.6, 60)]
    m = binary_metrics(y, s, threshold=0.5)
    tp, tn = m["confusion"]["tp"], m["confusion"]["tn"]
    (ls, us), (lp, up) = wilson_ci(tp, 40), wilson_ci(tn, 60)
    sens, spec = tp / 40, tn / 60
    ba = m["balanced_accuracy_ci"]
    assert ba["value"] == pytest.approx(m["balanced_accuracy"])
    assert ba["low"] == pytest.approx((sens + spec) / 2 - math.hypot(sens - ls, spec - lp) / 2)
    assert ba["high"] == pytest.approx((sens + spec) / 2 + math.hypot(us - sens, up - spec) / 2)
    # sensitivity 1.0 here: the interval still has width below the point estimate
    assert sens == 1.0 and ba["low"] < ba["value"] <= ba["high"] <= 1.0
    direct = balanced_accuracy_ci(m["sensitivity"], m["specificity"])
    assert direct == ba


def test_f1_ci_matches_a_slow_case_bootstrap():
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.4).astype(int)
    s = np.clip(0.35 * y + rng.normal(0.35, 0.2, 300), 0, 1)
    m = binary_metrics(y, s, threshold=0.5)
    fast = m["f1_ci"]
    assert fast["value"] == pytest.approx(f1_score(y, s >= 0.5))
    # slow: resample the positive and the negative images themselves, recompute F1
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    slow = []
    for _ in range(3000):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        slow.append(f1_score(y[idx], s[idx] >= 0.5))
    lo, hi = np.quantile(slow, [0.025, 0.975])
    assert fast["low"] == pytest.approx(lo, abs=0.015)
    assert fast["high"] == pytest.approx(hi, abs=0.015)
    assert fast["low"] < fast["value"] < fast["high"]

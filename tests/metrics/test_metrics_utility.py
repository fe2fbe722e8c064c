"""Clinical utility (decision curve, predictive values, PR curve, calibration slope) and the
patient cluster bootstrap, each against a hand computation or a slow explicit version."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from cxr_cad.errors import ConfigError
from cxr_cad.metrics import UndefinedMetricWarning, delong_auc_ci
from cxr_cad.metrics.calibration import expected_calibration_error
from cxr_cad.metrics.cluster import calibration_bootstrap, cluster_bootstrap, cluster_weights, weighted_stats
from cxr_cad.metrics.utility import (
    calibration_slope_intercept,
    decision_curve,
    net_benefit,
    precision_recall,
    predictive_values,
)


def test_decision_curve_against_hand_computed_net_benefit():
    # 10 images, 4 positive. At pt = 0.5: called = scores >= 0.5 -> images 0,1,2 (pos), 4 (neg) and 5 (neg):
    # TP = 3, FP = 2, net benefit = 3/10 - 2/10 * 0.5/0.5 = 0.1; treat all = 0.4 - 0.6 * 1 = -0.2.
    # At pt = 0.2: called = 0,1,2,3 (pos), 4,5,6 (neg): TP = 4, FP = 3 -> 0.4 - 0.3 * 0.25 = 0.325;
    # treat all = 0.4 - 0.6 * 0.25 = 0.25.
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.55, 0.3, 0.7, 0.5, 0.25, 0.1, 0.05, 0.15])
    dc = decision_curve(y, s, thresholds=(0.2, 0.5))
    assert dc["model"] == pytest.approx([0.325, 0.1])
    assert dc["treat_all"] == pytest.approx([0.25, -0.2])
    assert dc["treat_none"] == [0.0, 0.0] and dc["prevalence"] == 0.4
    assert net_benefit(y, s, 0.5) == pytest.approx(0.1)
    full = decision_curve(y, s)
    assert len(full["threshold"]) == 99 and full["threshold"][0] == 0.01 and full["threshold"][-1] == 0.99
    for k in (4, 49, 90):  # every point of the default curve is the one-threshold formula
        assert full["model"][k] == pytest.approx(net_benefit(y, s, full["threshold"][k]))
    with pytest.raises(ConfigError):
        net_benefit(y, s, 1.0)


def test_predictive_values_follow_bayes_rule_and_mercaldo_interval():
    tp, fn, tn, fp = 40, 10, 90, 10  # sensitivity 0.8, specificity 0.9
    pv = predictive_values(tp, fp, tn, fn, 0.05)
    ppv = 0.8 * 0.05 / (0.8 * 0.05 + 0.1 * 0.95)
    npv = 0.9 * 0.95 / (0.2 * 0.05 + 0.9 * 0.95)
    assert pv["ppv"]["value"] == pytest.approx(ppv) and pv["npv"]["value"] == pytest.approx(npv)
    # logit interval (Mercaldo 2007, eq. 5): var = (1 - se)/(se n1) + sp/((1 - sp) n0)
    var = 0.2 / (0.8 * 50) + 0.9 / (0.1 * 100)
    z = 1.959963984540054
    lo = 1 / (1 + math.exp(-(math.log(ppv / (1 - ppv)) - z * math.sqrt(var))))
    assert pv["ppv"]["low"] == pytest.approx(lo) and pv["ppv"]["low"] < ppv < pv["ppv"]["high"]
    perfect = predictive_values(50, 0, 100, 0, 0.2)  # no errors: PPV = NPV = 1, intervals end at 1
    assert perfect["ppv"]["value"] == 1.0 and perfect["ppv"]["high"] == 1.0 and perfect["ppv"]["low"] < 1.0
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(predictive_values(0, 3, 5, 0, 0.1)["ppv"]["value"])


def test_precision_recall_is_sklearns():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
    pr = precision_recall(y, s)
    p, r, _ = precision_recall_curve(y, s)
    np.testing.assert_allclose(pr["precision"], p)
    np.testing.assert_allclose(pr["recall"], r)
    assert pr["auprc"] == pytest.approx(average_precision_score(y, s))


def test_calibration_slope_and_intercept():
    rng = np.random.default_rng(3)
    lp = rng.normal(0, 1.5, 20000)
    p = 1 / (1 + np.exp(-lp))
    y = (rng.random(lp.size) < p).astype(int)
    ideal = calibration_slope_intercept(y, p)
    assert ideal["slope"] == pytest.approx(1.0, abs=0.05) and ideal["intercept"] == pytest.approx(0.0, abs=0.05)
    too_extreme = 1 / (1 + np.exp(-2 * lp))  # logits doubled -> slope 1/2
    assert calibration_slope_intercept(y, too_extreme)["slope"] == pytest.approx(0.5, abs=0.03)
    too_low = 1 / (1 + np.exp(-(lp - 1)))  # shifted down by 1 on the logit scale -> intercept +1
    assert calibration_slope_intercept(y, too_low)["intercept"] == pytest.approx(1.0, abs=0.05)


def _slow_cluster(y, s, groups, counts, threshold):
    """Each resample built explicitly: every drawn patient's images repeated, sklearn's AUC."""
    ids = sorted(set(groups))
    out = {"auc": [], "sensitivity": [], "specificity": []}
    for row in counts:
        idx = [i for k, pid in enumerate(ids) for _ in range(row[k]) for i in np.flatnonzero(groups == pid)]
        yy, ss = y[idx], s[idx]
        if yy.min() == yy.max():
            for v in out.values():
                v.append(np.nan)
            continue
        out["auc"].append(roc_auc_score(yy, ss))
        out["sensitivity"].append(np.mean(ss[yy == 1] >= threshold))
        out["specificity"].append(np.mean(ss[yy == 0] < threshold))
    return {k: np.array(v) for k, v in out.items()}


def test_cluster_bootstrap_matches_slow_explicit_resampling():
    rng = np.random.default_rng(7)
    n_pat = 15
    groups = np.repeat([f"P{k:02d}" for k in range(n_pat)], rng.integers(1, 4, n_pat))
    y = rng.integers(0, 2, groups.size)
    s = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1), 2)  # rounded: ties are exercised
    g = np.searchsorted(sorted(set(groups)), groups)  # patient numbers in sorted-id order
    counts = rng.multinomial(n_pat, np.full(n_pat, 1 / n_pat), size=60)
    fast = weighted_stats(y, s, cluster_weights(g, counts), 0.5)
    slow = _slow_cluster(y, s, groups, counts, 0.5)
    for k in ("auc", "sensitivity", "specificity"):
        np.testing.assert_allclose(fast[k], slow[k], rtol=1e-12, equal_nan=True)
    # the public function: same generator draws -> same percentile interval as the slow version
    res = cluster_bootstrap(y, s, groups, threshold=0.5, n_resamples=80, seed=11)
    rng2 = np.random.default_rng(11)
    slow2 = _slow_cluster(y, s, groups, rng2.multinomial(n_pat, np.full(n_pat, 1 / n_pat), size=80), 0.5)
    for k in ("auc", "sensitivity", "specificity"):
        ok = slow2[k][np.isfinite(slow2[k])]
        assert [res[k]["low"], res[k]["high"]] == pytest.approx(np.quantile(ok, [0.025, 0.975]).tolist())
        assert res[k]["n_valid"] == ok.size
    assert res["n_patients"] == n_pat


def test_cluster_bootstrap_is_wider_when_patients_repeat_images():
    rng = np.random.default_rng(1)
    y1 = rng.integers(0, 2, 40)
    s1 = np.clip(rng.normal(0.4 + 0.25 * y1, 0.2), 0, 1)
    y, s = np.repeat(y1, 5), np.repeat(s1, 5)  # 5 identical films per patient
    groups = np.repeat(np.arange(40), 5)
    patient = cluster_bootstrap(y, s, groups, n_resamples=2000, seed=0)["auc"]
    image = delong_auc_ci(y, s, interval="logit")
    assert (patient["high"] - patient["low"]) > 1.8 * (image.high - image.low)


def test_calibration_bootstrap_brackets_the_estimate():
    rng = np.random.default_rng(5)
    p = rng.random(300)
    y = (rng.random(300) < p**1.5).astype(int)
    ci = calibration_bootstrap(y, p, n_resamples=500, seed=1)
    brier = float(np.mean((p - y) ** 2))
    assert ci["brier"]["low"] < brier < ci["brier"]["high"]
    assert ci["ece"]["low"] < expected_calibration_error(y, p) < ci["ece"]["high"]


def test_logit_delong_interval_and_zero_width():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(10, int), np.zeros(40, int)]
    s = np.r_[rng.normal(2.3, 1, 10), rng.normal(0, 1, 40)]
    wald, logit = delong_auc_ci(y, s), delong_auc_ci(y, s, interval="logit")
    assert wald.se == logit.se and logit.interval == "logit" and 0 < logit.low < logit.auc < logit.high < 1
    a, z = logit.auc, 1.959963984540054
    centre = math.log(a / (1 - a))
    assert logit.high == pytest.approx(1 / (1 + math.exp(-(centre + z * logit.se / (a * (1 - a))))))
    perfect = delong_auc_ci(y, np.r_[np.full(10, 0.9), np.full(40, 0.1)], interval="logit")
    assert perfect.auc == perfect.low == perfect.high == 1.0  # zero width: the report warns
    near = delong_auc_ci(y, np.r_[rng.normal(4, 1, 10), rng.normal(0, 1, 40)])
    assert near.clipped == (near.auc + z * near.se > 1)


def test_logit_interval_covers_better_near_one():
    """The measurement behind the report's choice (benchmarks/auc_ci_coverage.py, fewer repetitions)."""
    from benchmarks.auc_ci_coverage import coverage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        r = coverage(10, 40, 0.95, reps=400, seed=0)
    assert r["logit"]["coverage"] > r["wald"]["coverage"] + 0.05
    assert r["logit"]["coverage"] > 0.9

"""Threshold policies and recalibration (cxr_cad.metrics.recalibration) against slow, obvious
implementations: Platt vs a direct scipy maximum-likelihood fit, temperature vs a grid search,
the sensitivity policy's achieved sensitivity vs counting, and the config's calibrated policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from cxr_cad.config import ThresholdConfig
from cxr_cad.metrics import (
    Calibration,
    apply_calibration,
    binary_metrics,
    calibrated_policy,
    fit_platt,
    fit_temperature,
    log_odds,
    midpoint_policy,
    roc_auc,
    sensitivity_policy,
    wilson_ci,
)
from cxr_cad.metrics.recalibration import smoothed_targets
from cxr_cad.training.threshold import choose_threshold, selection_params


def overconfident(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a model that ranks well but is overconfident and shifted."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(int)
    true_logit = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.2, n)
    p = 1 / (1 + np.exp(-(3.0 * true_logit + 2.5)))  # too steep and biased towards positive
    return y, p


def nll(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def test_platt_matches_a_direct_maximum_likelihood_fit():
    y, p = overconfident()
    s, t = log_odds(p), smoothed_targets(y)

    def loss(ab):
        z = ab[0] * s + ab[1]
        return np.mean(np.logaddexp(0, z) - t * z)

    direct = minimize(
        loss, x0=[1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000}
    )
    cal = fit_platt(y, p)
    assert cal.kind == "platt" and cal.a == pytest.approx(direct.x[0], abs=1e-4)
    assert cal.b == pytest.approx(direct.x[1], abs=1e-4)
    assert cal.nll_after < cal.nll_before  # the overconfident model is improved
    assert cal.nll_after == pytest.approx(nll(y, cal(p)), rel=1e-9)


def test_temperature_matches_a_grid_search_and_keeps_the_ranking():
    y, p = overconfident(seed=1)
    cal = fit_temperature(y, p)
    grid = np.exp(np.linspace(np.log(0.2), np.log(20), 20001))
    s, target = log_odds(p), smoothed_targets(y)
    best = grid[np.argmin([nll(target, 1 / (1 + np.exp(-s / t))) for t in grid])]
    assert cal.temperature == pytest.approx(best, rel=1e-3)
    assert cal.temperature > 1  # overconfident: softened
    q = cal(p)
    assert roc_auc(y, q) == pytest.approx(roc_auc(y, p), abs=1e-12)
    order = np.argsort(p, kind="mergesort")
    assert np.all(np.diff(q[order]) >= 0)  # monotone


def test_a_separable_calibration_set_does_not_saturate():
    y = np.array([0] * 12 + [1] * 12)
    p = np.r_[np.linspace(0.05, 0.4, 12), np.linspace(0.6, 0.95, 12)]  # perfectly separated
    for fit in (fit_platt, fit_temperature):
        q = fit(y, p)(p)
        assert 1e-3 < q.min() and q.max() < 1 - 1e-3  # finite slope: no probability forced to 0 or 1
        assert np.all(np.diff(q) > 0)


def test_calibration_round_trips_through_its_record_and_none_is_identity():
    y, p = overconfident(seed=2)
    cal = fit_platt(y, p)
    again = Calibration.from_dict(cal.to_dict())
    assert np.array_equal(again(p), cal(p))
    assert np.array_equal(apply_calibration(p, None), p)
    with pytest.raises(ValueError):
        Calibration.from_dict({"kind": "platt", "a": -1.0, "b": 0.0})
    with pytest.raises(ValueError):
        fit_platt(np.ones(10, int), np.linspace(0.1, 0.9, 10))  # one class


def test_sensitivity_policy_reports_what_it_reaches_with_wilson_ci():
    y, p = overconfident(seed=3)
    r = sensitivity_policy(y, p, 0.9)
    m = binary_metrics(y, p, threshold=r["threshold"])
    assert r["achieved_sensitivity"] == pytest.approx(m["sensitivity"]["value"])
    assert r["achieved_sensitivity"] >= 0.9
    tp, n_pos = m["confusion"]["tp"], int(y.sum())
    assert r["sensitivity_ci"] == pytest.approx(list(wilson_ci(tp, n_pos)))
    # the highest such threshold: the next higher observed score misses the target
    higher = np.unique(p[p > r["threshold"]])
    if higher.size:
        assert np.mean(p[y == 1] >= higher[0]) < 0.9


def test_calibrated_policy_cutoff_maps_back_to_a_raw_threshold():
    y, p = overconfident(seed=4)
    r = calibrated_policy(y, p, kind="platt", cutoff=0.5)
    cal = Calibration.from_dict(r["calibration"])
    assert r["threshold"] == 0.5
    assert cal(np.array([r["raw_threshold"]]))[0] == pytest.approx(0.5, abs=1e-9)
    # decisions at 0.5 on the calibrated scale are decisions at raw_threshold on the raw scale
    assert np.array_equal(cal(p) >= 0.5, p >= r["raw_threshold"] - 1e-12)
    # an overconfident, positive-biased model: the calibrated cut-off sits above raw 0.5
    assert r["raw_threshold"] > 0.5


@pytest.mark.parametrize("kind", ["platt", "temperature"])
def test_choose_threshold_calibrated_records_the_calibration_for_the_bundle(kind):
    y, p = overconfident(seed=5)
    cfg = ThresholdConfig(method="calibrated", calibration=kind, cutoff=0.4)
    thr, method, detail = choose_threshold(y, p, cfg)
    assert (thr, method) == (0.4, "calibrated")
    params = selection_params(method, thr, detail)
    assert params["calibration"]["kind"] == kind and params["cutoff"] == 0.4
    assert 0 <= params["sensitivity_ci"][0] <= params["achieved_sensitivity"] <= params["sensitivity_ci"][1] <= 1
    # sensitivity policy records the achieved sensitivity too
    thr, method, detail = choose_threshold(y, p, ThresholdConfig(method="sensitivity", target_sensitivity=0.8))
    params = selection_params(method, thr, detail)
    assert method == "sensitivity" and params["target"] == 0.8 and params["achieved_sensitivity"] >= 0.8
    assert math.isfinite(params["sensitivity_ci"][0])


def test_calibrated_policy_falls_back_to_fixed_when_scores_do_not_rank():
    y = np.array([1, 1, 1, 0, 0, 0] * 5)
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9] * 5)  # perfectly inverted: no monotone calibration
    thr, method, detail = choose_threshold(y, p, ThresholdConfig(method="calibrated", value=0.3))
    assert (thr, method) == (0.3, "fixed") and "calibration failed" in detail["reason"]


def test_midpoint_policy_sits_halfway_between_the_class_medians_on_the_log_odds_scale():
    # the slow obvious computation: medians of log(p / (1 - p)) per class, mean of the two, back
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(40), np.ones(60)].astype(int)
    p = np.r_[rng.beta(2, 8, 40), rng.beta(9, 2, 60)]
    logit = np.log(p / (1 - p))
    expected = 1 / (1 + math.exp(-(np.median(logit[y == 0]) + np.median(logit[y == 1])) / 2))
    rec = midpoint_policy(y, p)
    assert rec["threshold"] == pytest.approx(expected, rel=1e-12)
    centres = [1 / (1 + math.exp(-np.median(logit[y == k]))) for k in (0, 1)]
    assert rec["class_medians"] == pytest.approx(centres, rel=1e-9)
    pred = p >= rec["threshold"]
    assert rec["achieved_sensitivity"] == pytest.approx(pred[y == 1].mean())
    assert rec["achieved_specificity"] == pytest.approx((~pred[y == 0]).mean())
    # a perfectly separated validation set: Youden sits at the positives' edge, the midpoint in the gap
    y2 = np.r_[np.zeros(20), np.ones(20)].astype(int)
    p2 = np.r_[np.linspace(0.01, 0.2, 20), np.linspace(0.9, 0.999, 20)]
    thr, method, detail = choose_threshold(y2, p2, ThresholdConfig(method="midpoint"))
    youden, _, _ = choose_threshold(y2, p2, ThresholdConfig(method="youden"))
    assert method == "midpoint" and 0.2 < thr < 0.9 and thr < youden
    assert selection_params(method, thr, detail)["class_medians"] == detail["class_medians"]
    with pytest.raises(ValueError, match="both classes"):
        midpoint_policy(np.ones(5), np.linspace(0.1, 0.9, 5))

"""ROC, AUC, DeLong and bootstrap CIs, paired DeLong test: fast code against slow obvious code."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from cxr_cad.errors import ConfigError
from cxr_cad.metrics import (
    UndefinedMetricWarning,
    bootstrap_auc_ci,
    delong_auc_ci,
    delong_paired_test,
    interpolate_roc,
    jsonable,
    mean_roc,
    roc_auc,
    roc_curve,
)
from cxr_cad.metrics.bootstrap import bootstrap_aucs


def _data(seed: int, n: int = 120, ties: bool = True, shift: float = 0.8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.normal(y * shift, 1.0)
    if ties:
        s = np.round(s, 1)
    return y, s


def _psi(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """psi(x, y) = 1 if x > y, 1/2 if tied, 0 otherwise; shape (m, n)."""
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def _slow_auc(y, s) -> float:
    pos, neg = s[y == 1], s[y == 0]
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


def _slow_delong_cov(y, scores):
    """O(n^2) DeLong (1988) covariance from placement values, written from the paper."""
    k = len(scores)
    m, n = int((y == 1).sum()), int((y == 0).sum())
    v10 = np.zeros((k, m))
    v01 = np.zeros((k, n))
    aucs = np.zeros(k)
    for r, s in enumerate(scores):
        psi = _psi(s[y == 1], s[y == 0])
        aucs[r] = psi.mean()
        v10[r] = psi.mean(axis=1)
        v01[r] = psi.mean(axis=0)
    s10 = np.array([[np.sum((v10[r] - aucs[r]) * (v10[q] - aucs[q])) / (m - 1) for q in range(k)] for r in range(k)])
    s01 = np.array([[np.sum((v01[r] - aucs[r]) * (v01[q] - aucs[q])) / (n - 1) for q in range(k)] for r in range(k)])
    return aucs, s10 / m + s01 / n


@pytest.mark.parametrize("seed,ties", [(0, True), (1, False), (2, True), (3, True)])
def test_auc_matches_pair_counting_and_sklearn(seed, ties):
    y, s = _data(seed, ties=ties)
    assert roc_auc(y, s) == pytest.approx(_slow_auc(y, s), abs=1e-12)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 4])
def test_roc_curve_matches_sklearn_without_dropping(seed):
    y, s = _data(seed)
    fpr, tpr, thr = roc_curve(y, s)
    f2, t2, th2 = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    assert np.isinf(thr[0]) and np.isinf(th2[0])
    np.testing.assert_allclose(thr[1:], th2[1:])
    # each point is the rate of score >= threshold (the documented decision rule)
    for f, t, th in zip(fpr[1:], tpr[1:], thr[1:]):
        assert t == pytest.approx(np.mean(s[y == 1] >= th))
        assert f == pytest.approx(np.mean(s[y == 0] >= th))
    # trapezoid area under the curve equals the AUC with ties as 1/2
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s))


@pytest.mark.parametrize("seed,ties", [(0, True), (5, False)])
def test_delong_matches_quadratic_placement_implementation(seed, ties):
    y, s = _data(seed, ties=ties)
    aucs, cov = _slow_delong_cov(y, [s])
    ci = delong_auc_ci(y, s, alpha=0.05)
    assert ci.auc == pytest.approx(aucs[0], abs=1e-12)
    assert ci.se == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-10)
    z = norm.ppf(0.975)
    assert ci.low == pytest.approx(max(0, aucs[0] - z * ci.se))
    assert ci.high == pytest.approx(min(1, aucs[0] + z * ci.se))
    assert (ci.n_pos, ci.n_neg) == (int(y.sum()), int((1 - y).sum()))


def test_hanley_mcneil_1982_published_example():
    """Hanley JA, McNeil BJ (1982) Radiology 143:29-36, Table 1: CT ratings of 109 patients
    (58 normal, 51 abnormal) on a 5-point scale; published AUC 0.893 and SE 0.032 (their
    exponential approximation; DeLong's nonparametric SE is close to it)."""
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(58, int), np.ones(51, int)]
    s = np.r_[normal, abnormal].astype(float)
    ci = delong_auc_ci(y, s)
    assert round(ci.auc, 3) == 0.893
    assert ci.se == pytest.approx(0.032, abs=0.002)


def test_perfect_separation_has_zero_width_ci():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    ci = delong_auc_ci(y, s)
    assert (ci.auc, ci.low, ci.high, ci.se) == (1.0, 1.0, 1.0, 0.0)


def test_one_class_gives_nan_and_warning_never_half():
    y = np.ones(5, int)
    s = np.linspace(0, 1, 5)
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(roc_auc(y, s))
    with pytest.warns(UndefinedMetricWarning):
        ci = delong_auc_ci(y, s)
    assert math.isnan(ci.auc) and math.isnan(ci.low)
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(bootstrap_auc_ci(y, s, n_resamples=10).auc)
    with pytest.warns(UndefinedMetricWarning):
        fpr, tpr, _ = roc_curve(y, s)
    assert np.isnan(fpr).all() and not np.isnan(tpr).any()
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(roc_auc([], []))
    with pytest.warns(UndefinedMetricWarning):  # one positive: AUC defined, DeLong variance not
        ci = delong_auc_ci([0, 0, 1], [0.1, 0.5, 0.3])
    assert ci.auc == 0.5 and math.isnan(ci.se)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="0 and 1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="non-finite"):
        roc_auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="has 2 values"):
        roc_auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="positive_class"):
        roc_auc(["NORMAL", "PNEUMONIA"], [0.1, 0.2])
    with pytest.raises(ConfigError, match="alpha"):
        delong_auc_ci([0, 1], [0.1, 0.2], alpha=1.5)
    assert roc_auc(np.array([False, True]), [0.1, 0.2]) == 1.0


def test_bootstrap_resamples_are_exact_aucs():
    """Each vectorised resample AUC equals roc_auc of the explicitly expanded resample."""
    y, s = _data(7, n=40)
    pos, neg = s[y == 1], s[y == 0]
    b = 25
    fast = bootstrap_aucs(y, s, n_resamples=b, rng=np.random.default_rng(3))
    rng = np.random.default_rng(3)  # same draws, same order (one block)
    w = rng.multinomial(pos.size, np.full(pos.size, 1 / pos.size), size=b)
    u = rng.multinomial(neg.size, np.full(neg.size, 1 / neg.size), size=b)
    negs = np.sort(neg)
    for i in range(b):
        yy = np.r_[np.ones(w[i].sum(), int), np.zeros(u[i].sum(), int)]
        ss = np.r_[np.repeat(pos, w[i]), np.repeat(negs, u[i])]
        assert fast[i] == pytest.approx(_slow_auc(yy, ss), abs=1e-12)


def test_bootstrap_ci_is_seeded_and_close_to_delong_on_large_samples():
    y, s = _data(11, n=1500, ties=False, shift=1.0)
    a = bootstrap_auc_ci(y, s, n_resamples=2000, seed=5)
    b = bootstrap_auc_ci(y, s, n_resamples=2000, seed=5)
    assert a == b
    d = delong_auc_ci(y, s)
    assert a.auc == d.auc
    assert a.low == pytest.approx(d.low, abs=0.01)
    assert a.high == pytest.approx(d.high, abs=0.01)
    assert a.se == pytest.approx(d.se, rel=0.1)
    assert a.low < a.auc < a.high
    assert a.n_resamples == 2000 and a.seed == 5
    with pytest.raises(ConfigError):
        bootstrap_auc_ci(y, s, n_resamples=0)


@pytest.mark.parametrize("seed", [0, 8])
def test_paired_test_matches_independent_computation(seed):
    y, a = _data(seed, n=150)
    rng = np.random.default_rng(seed + 100)
    b = np.round(a + rng.normal(0, 0.8, a.size), 1)
    res = delong_paired_test(y, a, b)
    aucs, cov = _slow_delong_cov(y, [a, b])
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (aucs[0] - aucs[1]) / math.sqrt(var)
    assert res.auc_a == pytest.approx(roc_auc_score(y, a))
    assert res.auc_b == pytest.approx(roc_auc_score(y, b))
    assert res.diff == pytest.approx(aucs[0] - aucs[1])
    assert res.z == pytest.approx(z, rel=1e-9)
    assert res.p_value == pytest.approx(2 * (1 - norm.cdf(abs(z))), rel=1e-9)
    assert res.low == pytest.approx(res.diff - 1.959964 * res.se, abs=1e-6)
    assert res.correlation == pytest.approx(cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1]))
    swapped = delong_paired_test(y, b, a)
    assert swapped.z == pytest.approx(-res.z) and swapped.p_value == pytest.approx(res.p_value)


def test_paired_test_identical_scores_is_undefined():
    y, s = _data(1)
    with pytest.warns(UndefinedMetricWarning):
        res = delong_paired_test(y, s, s)
    assert res.diff == 0 and math.isnan(res.p_value)


def test_mean_roc_and_interpolation():
    fpr = np.array([0, 0, 0.5, 0.5, 1.0])
    tpr = np.array([0, 0.5, 0.5, 1.0, 1.0])
    grid = np.array([0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(interpolate_roc(fpr, tpr, grid), [0.5, 0.5, 1.0, 1.0, 1.0])
    # a chord (tied scores) is interpolated linearly
    np.testing.assert_allclose(interpolate_roc([0, 1], [0, 1], [0.3]), [0.3])
    curves = [roc_curve(*_data(i, n=80)[:2])[:2] for i in range(4)]
    res = mean_roc(curves, n_points=11)
    each = np.array([interpolate_roc(f, t, np.linspace(0, 1, 11)) for f, t in curves])
    np.testing.assert_allclose(res["tpr_mean"], each.mean(axis=0))
    np.testing.assert_allclose(res["tpr_sd"], each.std(axis=0, ddof=1))
    assert res["n_curves"] == 4 and res["tpr_mean"][-1] == 1.0
    assert all(lo <= m <= hi for lo, m, hi in zip(res["tpr_low"], res["tpr_mean"], res["tpr_high"]))


def test_jsonable_turns_nan_into_null():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        ci = delong_auc_ci([1, 1], [0.2, 0.3])
    out = jsonable({"ci": ci, "arr": np.array([1.0, np.inf]), "n": np.int64(3)})
    assert out["ci"]["auc"] is None and out["arr"] == [1.0, None] and out["n"] == 3

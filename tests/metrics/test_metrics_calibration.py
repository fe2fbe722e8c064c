"""Brier score, reliability curve and ECE against scikit-learn and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from cxr_cad.errors import ConfigError
from cxr_cad.metrics import (
    UndefinedMetricWarning,
    brier_score,
    expected_calibration_error,
    reliability_curve,
    wilson_ci,
)


def _data(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 2, n)
    p[:3] = [0.0, 0.5, 1.0]  # edges included
    y = (rng.random(n) < p**1.3).astype(int)
    return y, p


@pytest.mark.parametrize("seed", [0, 1])
def test_brier_matches_sklearn(seed):
    y, p = _data(seed)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))


@pytest.mark.parametrize("strategy,n_bins", [("uniform", 10), ("uniform", 7), ("quantile", 5)])
def test_reliability_matches_sklearn(strategy, n_bins):
    y, p = _data(2)
    curve = reliability_curve(y, p, n_bins=n_bins, strategy=strategy)
    frac, mean = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    count = np.array(curve.count)
    assert count.sum() == len(y) and len(curve.edges) == n_bins + 1
    np.testing.assert_allclose(np.array(curve.fraction_positive)[count > 0], frac)
    np.testing.assert_allclose(np.array(curve.mean_predicted)[count > 0], mean)
    for c, lo, hi, f in zip(count, curve.low, curve.high, curve.fraction_positive):
        if c:
            assert (lo, hi) == wilson_ci(round(f * c), c)


def test_empty_bins_are_nan_and_ece_by_hand():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.95, 0.9])
    curve = reliability_curve(y, p, n_bins=10)
    assert curve.count == (1, 1, 0, 0, 0, 0, 0, 0, 1, 1)
    assert math.isnan(curve.fraction_positive[2])
    ece = (abs(0 - 0.05) + abs(1 - 0.15) + abs(0 - 0.9) + abs(1 - 0.95)) / 4
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(ece)
    assert curve.to_dict()["strategy"] == "uniform"


def test_calibration_input_checks():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier_score([0, 1], [0.2, 1.2])
    with pytest.raises(ConfigError, match="strategy"):
        reliability_curve([0, 1], [0.2, 0.3], strategy="kmeans")
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(brier_score([], []))


def test_quantile_edges_are_sklearns_when_a_percentile_lands_on_a_score():
    # 10 scores, 3 bins: the 1/3 percentile falls exactly on a score; np.linspace(0, 100) and
    # sklearn's linspace(0, 1) * 100 differ in the last bit there and put that score in different bins
    p = np.round(np.linspace(0, 1, 10), 3)
    y = np.array([0, 1, 0, 0, 1, 0, 1, 1, 0, 1])
    old = np.searchsorted(np.percentile(p, np.linspace(0, 100, 4))[1:-1], p)
    new = np.searchsorted(np.percentile(p, np.linspace(0, 1, 4) * 100)[1:-1], p)
    assert (old != new).any()  # the case really distinguishes the two edge computations
    curve = reliability_curve(y, p, n_bins=3, strategy="quantile")
    prob_true, prob_pred = calibration_curve(y, p, n_bins=3, strategy="quantile")
    count = np.asarray(curve.count)
    np.testing.assert_allclose(np.asarray(curve.fraction_positive)[count > 0], prob_true)
    np.testing.assert_allclose(np.asarray(curve.mean_predicted)[count > 0], prob_pred)

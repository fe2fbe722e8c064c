"""cxr_cad.metrics.multilabel against scikit-learn's per-column ROC AUC (no torch)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_cad.metrics.multilabel import cooccurrence, mean_auc, multilabel_summary, per_finding


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    n, k = 240, 4
    y = (rng.random((n, k)) < [0.3, 0.2, 0.5, 0.015]).astype(np.int8)
    y[rng.random((n, k)) < 0.1] = -1  # unknown labels, masked
    s = np.clip(0.35 * (y == 1) + rng.normal(0.4, 0.2, (n, k)), 0, 1)
    s[y == -1] = rng.random(int((y == -1).sum()))
    groups = rng.integers(0, 120, n).astype(str)
    return y, s, groups


def test_per_finding_auc_equals_sklearn_per_column(data):
    y, s, groups = data
    rows = per_finding(y, s, list("ABCD"), [0.5] * 4, groups=groups, n_bootstrap=200, min_positives=5)
    for k, r in enumerate(rows[:3]):
        known = y[:, k] >= 0
        assert r["auc"] == pytest.approx(roc_auc_score(y[known, k], s[known, k]), abs=1e-12)
        assert r["auc_low"] < r["auc"] < r["auc_high"]
        assert r["n"] == known.sum() and r["n_unknown"] == (~known).sum()
        pred = s[known, k] >= 0.5
        assert r["sensitivity"]["value"] == pytest.approx(pred[y[known, k] == 1].mean())
        assert r["specificity"]["value"] == pytest.approx((~pred[y[known, k] == 0]).mean())
        boot = r["cluster_bootstrap"]["auc"]
        assert boot["low"] < r["auc"] < boot["high"]


def test_small_finding_is_flagged_not_reported(data):
    y, s, _ = data
    rows = per_finding(y, s, list("ABCD"), [0.5] * 4, min_positives=5)
    d = rows[3]
    assert d["n_positive"] < 5 and d["small_sample"]
    assert np.isnan(d["auc"]) and d["sensitivity"] is None and "not reported" in d["note"]


def test_macro_micro_and_selection_auc(data):
    y, s, _ = data
    summary = multilabel_summary(y, s, list("ABCD"), [0.5] * 4, min_positives=5)
    per_col = []
    for k in range(3):
        known = y[:, k] >= 0
        per_col.append(roc_auc_score(y[known, k], s[known, k]))
    assert summary["macro"]["auc"] == pytest.approx(np.mean(per_col))
    assert summary["flagged"] == ["D"]
    known = y[:, :3] >= 0
    assert summary["micro"]["auc"] == pytest.approx(roc_auc_score(y[:, :3][known], s[:, :3][known]))
    m, used = mean_auc(y, s, min_positives=5)
    assert used == [0, 1, 2] and m == pytest.approx(np.mean(per_col))


def test_cooccurrence_counts():
    y = np.array([[1, 1, 0], [1, 0, -1], [0, 0, 0], [1, 1, 1]])
    c = cooccurrence(y, ["a", "b", "c"])
    assert c["counts"][0][1] == 2 and c["counts"][0][0] == 3 and c["counts"][2][2] == 1
    assert c["n_images_by_count"] == {"0": 1, "1": 1, "2": 1, "3": 1}


def test_bad_shapes_and_values_raise():
    with pytest.raises(ValueError):
        per_finding(np.zeros((3, 2)), np.zeros((3, 3)), ["a", "b"], [0.5, 0.5])
    with pytest.raises(ValueError):
        per_finding(np.full((3, 1), 2), np.zeros((3, 1)), ["a"], [0.5])

"""Cross-validation summaries (cxr_cad.metrics.cv) against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cxr_cad.metrics import (
    binary_metrics,
    crossval_roc,
    crossval_summary,
    delong_auc_ci,
    interpolate_roc,
    mean_sd,
    roc_auc,
    roc_table,
    youden_threshold,
)


def _oof(seed: int = 0, n: int = 150, k: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[: 2 * k] = np.tile([0, 1], k)
    fold = np.arange(n) % k
    p = 1 / (1 + np.exp(-rng.normal((y - 0.5) * 2, 1.0)))
    thr = np.array([0.45, 0.5, 0.55])[fold]
    return pd.DataFrame({"y_true": y, "probability": p, "fold": fold, "threshold": thr})


def test_summary_matches_direct_computation():
    oof = _oof()
    s = crossval_summary(oof, class_names=("NORMAL", "PNEUMONIA"), n_bootstrap=200, seed=1)
    y, p, f, t = (oof[c].to_numpy() for c in ("y_true", "probability", "fold", "threshold"))
    aucs = [roc_auc(y[f == k], p[f == k]) for k in range(3)]
    assert [e["auc"]["auc"] for e in s["per_fold"]] == pytest.approx(aucs)
    assert s["across_folds"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert s["across_folds"]["auc"]["sd"] == pytest.approx(np.std(aucs, ddof=1))
    sens = [
        binary_metrics(y[f == k], p[f == k], threshold=[0.45, 0.5, 0.55][k])["sensitivity"]["value"] for k in range(3)
    ]
    assert s["across_folds"]["sensitivity"]["values"] == pytest.approx(sens)
    assert s["across_folds"]["accuracy_PNEUMONIA"]["values"] == pytest.approx(sens)
    pooled = s["pooled"]
    assert pooled["auc_delong"]["auc"] == pytest.approx(roc_auc(y, p))
    assert pooled["auc_delong"]["low"] == pytest.approx(delong_auc_ci(y, p).low)
    assert pooled["auc_bootstrap"]["n_resamples"] == 200
    pred = p >= t
    c = pooled["at_fold_thresholds"]["confusion"]
    assert c == {
        "tp": int(np.sum(pred & (y == 1))),
        "fp": int(np.sum(pred & (y == 0))),
        "tn": int(np.sum(~pred & (y == 0))),
        "fn": int(np.sum(~pred & (y == 1))),
    }
    assert pooled["youden_threshold"] == youden_threshold(y, p)
    assert pooled["at_pooled_youden"]["threshold"] == youden_threshold(y, p)
    assert 0 <= pooled["brier"] <= 1 and 0 <= pooled["ece"] <= 1


def test_crossval_roc_and_table():
    oof = _oof(2)
    roc = crossval_roc(oof["y_true"], oof["probability"], oof["fold"], n_points=21)
    assert [f["fold"] for f in roc["folds"]] == [0, 1, 2]
    grid = np.linspace(0, 1, 21)
    each = np.array([interpolate_roc(f["fpr"], f["tpr"], grid) for f in roc["folds"]])
    np.testing.assert_allclose(roc["mean"]["tpr_mean"], each.mean(axis=0))
    assert roc["mean"]["auc_mean"] == pytest.approx(np.mean([f["auc"] for f in roc["folds"]]))
    assert roc["pooled"]["auc"] == pytest.approx(roc_auc(oof["y_true"], oof["probability"]))
    table = roc_table(roc)
    assert set(table["curve"]) == {"fold0", "fold1", "fold2", "mean", "pooled"}
    assert (table["curve"] == "mean").sum() == 21
    assert list(table.columns) == ["curve", "fpr", "tpr", "threshold", "tpr_low", "tpr_high"]


def test_summary_input_checks_and_mean_sd():
    with pytest.raises(ValueError, match="threshold"):
        crossval_summary(_oof().drop(columns=["threshold"]))
    bad = _oof()
    bad.loc[0, "threshold"] = 0.9
    with pytest.raises(ValueError, match="fold 0"):
        crossval_summary(bad, n_bootstrap=0)
    ms = mean_sd([0.5, float("nan"), 0.7])
    assert ms["mean"] == pytest.approx(0.6) and ms["n"] == 2 and math.isnan(ms["values"][1])
    assert math.isnan(mean_sd([0.4])["sd"])

"""Cross-validation summaries over an out-of-fold predictions table (pure; no I/O).

The table has one row per image with ``y_true`` (0/1), ``probability`` (positive class),
``fold`` (int) and ``threshold`` (that fold's own decision threshold). The report module
calls :func:`crossval_roc` and :func:`crossval_summary` on ``oof_predictions.csv``;
``cxr-cad crossval`` writes their results to ``cv_metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad.metrics._common import warn_undefined
from cxr_cad.metrics.bootstrap import bootstrap_auc_ci
from cxr_cad.metrics.calibration import brier_score, expected_calibration_error, reliability_curve
from cxr_cad.metrics.delong import delong_auc_ci
from cxr_cad.metrics.operating import binary_metrics, youden_threshold
from cxr_cad.metrics.roc import mean_roc, roc_auc, roc_curve

#: per-fold statistics summarised as mean +/- SD across folds
SUMMARY_KEYS = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "balanced_accuracy")


def _check_table(oof: pd.DataFrame) -> None:
    missing = [c for c in ("y_true", "probability", "fold", "threshold") if c not in oof.columns]
    if missing:
        raise ValueError(f"out-of-fold table lacks columns {missing}; it needs y_true, probability, fold, threshold")


def crossval_roc(y_true, y_score, folds, *, n_points: int = 101) -> dict:
    """ROC data of a cross-validation: each fold's curve, their vertical mean +/- 1 SD, the pooled curve.

    Returns:
        ``{"folds": [{"fold", "auc", "fpr", "tpr", "thresholds"}...], "mean": mean_roc(...) plus
        ``auc_mean``/``auc_sd`` (across folds), "pooled": {"auc", "fpr", "tpr", "thresholds"}}``.
        Thresholds start with +inf (``jsonable`` writes it as null).
    """
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    f = np.asarray(folds)
    per_fold, curves, aucs = [], [], []
    for k in sorted(np.unique(f).tolist()):
        m = f == k
        fpr, tpr, thr = roc_curve(y[m], s[m])
        auc = roc_auc(y[m], s[m])
        per_fold.append(
            {"fold": int(k), "auc": auc, "fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()}
        )
        curves.append((fpr, tpr))
        aucs.append(auc)
    mean = mean_roc(curves, n_points=n_points)
    finite = [a for a in aucs if not math.isnan(a)]
    mean["auc_mean"] = float(np.mean(finite)) if finite else float("nan")
    mean["auc_sd"] = float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan")
    fpr, tpr, thr = roc_curve(y, s)
    pooled = {"auc": roc_auc(y, s), "fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()}
    return {"folds": per_fold, "mean": mean, "pooled": pooled}


def _value(metrics: dict, key: str) -> float:
    v = metrics[key]
    return float(v["value"] if isinstance(v, dict) else v)


def mean_sd(values: Sequence[float]) -> dict:
    """``{"mean", "sd", "n", "values"}`` over the finite values (SD with ddof=1; NaN for < 2)."""
    vals = [float(v) for v in values]
    finite = [v for v in vals if not math.isnan(v)]
    return {
        "mean": float(np.mean(finite)) if finite else float("nan"),
        "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan"),
        "n": len(finite),
        "values": vals,
    }


def _per_fold(
    y: np.ndarray, s: np.ndarray, folds: np.ndarray, thr: np.ndarray, *, alpha: float, class_names: tuple[str, str]
) -> list[dict[str, Any]]:
    """``per_fold`` of :func:`crossval_summary`: each fold at its own (single) threshold."""
    per_fold: list[dict[str, Any]] = []
    for k in sorted(np.unique(folds).tolist()):
        m = folds == k
        t = np.unique(thr[m])
        if t.size != 1:
            raise ValueError(f"fold {k} has {t.size} different thresholds; expected one per fold")
        per_fold.append(
            {
                "fold": int(k),
                "n": int(m.sum()),
                "n_pos": int(y[m].sum()),
                "n_neg": int(m.sum() - y[m].sum()),
                "threshold": float(t[0]),
                "auc": delong_auc_ci(y[m], s[m], alpha=alpha).to_dict(),
                "metrics": binary_metrics(y[m], s[m], threshold=float(t[0]), alpha=alpha, class_names=class_names),
            }
        )
    return per_fold


def _pooled(
    y: np.ndarray,
    s: np.ndarray,
    thr: np.ndarray,
    *,
    n_bootstrap: int,
    seed: int,
    alpha: float,
    class_names: tuple[str, str],
) -> dict[str, Any]:
    """``pooled`` of :func:`crossval_summary`: the out-of-fold predictions as one cohort."""
    # each image decided at its own fold's threshold: decisions as 0/1 scores, threshold 0.5
    decided = (s >= thr).astype(np.float64)
    pooled: dict[str, Any] = {
        "n": int(y.size),
        "n_pos": int(y.sum()),
        "n_neg": int(y.size - y.sum()),
        "auc_delong": delong_auc_ci(y, s, alpha=alpha).to_dict(),
        "auc_bootstrap": (
            bootstrap_auc_ci(y, s, n_resamples=n_bootstrap, seed=seed, alpha=alpha).to_dict()
            if n_bootstrap > 0
            else None
        ),
        "at_fold_thresholds": binary_metrics(y, decided, threshold=0.5, alpha=alpha, class_names=class_names),
    }
    pooled["at_fold_thresholds"]["threshold"] = "each fold's own threshold"
    yt = youden_threshold(y, s)
    pooled["youden_threshold"] = yt
    if math.isnan(yt):
        warn_undefined("crossval_summary: pooled Youden threshold undefined (one class); no metrics at it")
        pooled["at_pooled_youden"] = None
    else:
        pooled["at_pooled_youden"] = binary_metrics(y, s, threshold=yt, alpha=alpha, class_names=class_names)
    probs_ok = bool(s.size and s.min() >= 0 and s.max() <= 1)
    if probs_ok:
        pooled["brier"] = brier_score(y, s)
        pooled["ece"] = expected_calibration_error(y, s, n_bins=10)
        pooled["reliability"] = reliability_curve(y, s, n_bins=10).to_dict()
    return pooled


def crossval_summary(
    oof: pd.DataFrame,
    *,
    class_names: tuple[str, str] = ("negative", "positive"),
    n_bootstrap: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    n_roc_points: int = 101,
) -> dict[str, Any]:
    """Per-fold metrics, their mean +/- SD across folds, and pooled out-of-fold metrics.

    Args:
        oof: out-of-fold table (see module docstring); one row per image.
        class_names: names of class 0 and class 1 (for ``per_class_accuracy``).
        n_bootstrap: resamples of the pooled bootstrap AUC CI (0 = skip it).
        seed: bootstrap seed.

    Returns a dict with:
        ``per_fold``: list of ``{"fold", "n", "n_pos", "n_neg", "threshold", "auc" (DeLong AucCI dict),
        "metrics" (binary_metrics at that fold's own threshold)}``;
        ``across_folds``: ``{key: mean_sd}`` for :data:`SUMMARY_KEYS` and each class accuracy;
        ``pooled``: ``auc_delong``, ``auc_bootstrap``, ``at_fold_thresholds`` (every image decided
        at its own fold's threshold), ``youden_threshold`` and ``at_pooled_youden`` (chosen on the
        same pooled predictions, hence optimistic), ``brier``, ``ece``, ``reliability``;
        ``roc``: :func:`crossval_roc`.

    Raises ``ValueError`` when columns are missing or values are invalid.
    """
    _check_table(oof)
    y = oof["y_true"].to_numpy(dtype=np.int64)
    s = oof["probability"].to_numpy(dtype=np.float64)
    folds = oof["fold"].to_numpy(dtype=np.int64)
    thr = oof["threshold"].to_numpy(dtype=np.float64)
    per_fold = _per_fold(y, s, folds, thr, alpha=alpha, class_names=class_names)
    across = {
        key: mean_sd([f["auc"]["auc"] if key == "auc" else _value(f["metrics"], key) for f in per_fold])
        for key in SUMMARY_KEYS
    }
    for name in class_names:
        across[f"accuracy_{name}"] = mean_sd([f["metrics"]["per_class_accuracy"][name]["value"] for f in per_fold])
    pooled = _pooled(y, s, thr, n_bootstrap=n_bootstrap, seed=seed, alpha=alpha, class_names=class_names)
    roc = crossval_roc(y, s, folds, n_points=n_roc_points)
    return {"per_fold": per_fold, "across_folds": across, "pooled": pooled, "roc": roc}


def roc_table(roc: dict) -> pd.DataFrame:
    """Long table of :func:`crossval_roc` output: ``curve`` (``fold0``.., ``mean``, ``pooled``),
    ``fpr``, ``tpr``, ``threshold``, ``tpr_low``, ``tpr_high`` (the mean +/- 1 SD band)."""
    parts = []
    for f in roc["folds"]:
        parts.append(
            pd.DataFrame({"curve": f"fold{f['fold']}", "fpr": f["fpr"], "tpr": f["tpr"], "threshold": f["thresholds"]})
        )
    m = roc["mean"]
    parts.append(
        pd.DataFrame(
            {"curve": "mean", "fpr": m["fpr"], "tpr": m["tpr_mean"], "tpr_low": m["tpr_low"], "tpr_high": m["tpr_high"]}
        )
    )
    p = roc["pooled"]
    parts.append(pd.DataFrame({"curve": "pooled", "fpr": p["fpr"], "tpr": p["tpr"], "threshold": p["thresholds"]}))
    out = pd.concat(parts, ignore_index=True)
    return out[["curve", "fpr", "tpr", "threshold", "tpr_low", "tpr_high"]]

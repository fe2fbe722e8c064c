"""The binary (one label per image) cross-validation task: :data:`BINARY`, the
:class:`~cxr_cad.crossvalidation.task.CrossvalTask` of ``data.task`` other than ``multilabel``.

Out-of-fold table: fold, label, y_true, probability, threshold (the fold's own), decision;
metrics: :func:`cxr_cad.metrics.crossval_summary` (per fold, across folds, pooled, ROC data)
plus ``roc_curves.csv``; final model: one retraining on every image or the fold ensemble.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad.config import TrainConfig
from cxr_cad.crossvalidation import cohort as cohorts
from cxr_cad.crossvalidation.cohort import Cohort, decision_names
from cxr_cad.crossvalidation.final import ensemble_final, pooled_threshold, train_final
from cxr_cad.crossvalidation.folds import HELDOUT_META, heldout
from cxr_cad.crossvalidation.merge import read_heldout
from cxr_cad.crossvalidation.result import ROC_FILE, fold_dir
from cxr_cad.crossvalidation.task import Pooling
from cxr_cad.errors import OutputError
from cxr_cad.manifest import write_table
from cxr_cad.metrics import UndefinedMetricWarning, crossval_summary, roc_table
from cxr_cad.training import rundir
from cxr_cad.training.trainer import TrainResult, train_model

log = logging.getLogger(__name__)

#: The per-fold facts copied from ``fold.json`` into ``cv_metrics.json``'s ``per_fold`` entries.
FOLD_INFO_KEYS = (
    "fold",
    "status",
    "best_epoch",
    "epochs_run",
    "stopped_early",
    "inner_val_auc",
    "threshold",
    "threshold_method",
    "inner_split",
)


def oof_table(cohort: Cohort, cfg: TrainConfig, out_dir: Path, n_folds: int) -> pd.DataFrame:
    """``oof_predictions.csv``: every row scored once, by the fold model that never saw its patient."""
    data, df = cfg.data, cohort.df
    probs = np.full(len(df), np.nan)
    thresholds = np.full(len(df), np.nan)
    for k in range(int(n_folds)):
        test = cohort.folds == k
        table, meta = read_heldout(out_dir, k, df.loc[test, "row"].to_numpy())
        probs[test], thresholds[test] = table["probability"].to_numpy(dtype=np.float64), float(meta["threshold"])
    names = decision_names(tuple(data.classes), data.positive_class)
    pos_index = list(data.classes).index(data.positive_class)
    oof = pd.DataFrame(
        {
            "row": df["row"],
            "path": df["path"].astype(str),
            "sop_instance_uid": df["sop_instance_uid"].astype(str),
            data.group_col: df[data.group_col].astype(str),
            "fold": cohort.folds,
            "label": df[data.label_col].astype(str),
            "y_true": (cohort.labels == pos_index).astype(int),
            "probability": probs,
            "threshold": thresholds,
        }
    )
    oof["decision"] = np.where(oof["probability"] >= oof["threshold"], names[0], names[1])
    if oof["probability"].isna().any() or len(oof) != len(df) or oof["row"].duplicated().any():
        raise OutputError("internal check failed: not every image was scored exactly once")
    return oof


def summarise(oof: pd.DataFrame, names: tuple[str, str], n_bootstrap: int, seed: int) -> dict[str, Any]:
    """:func:`cxr_cad.metrics.crossval_summary`; undefined statistics logged and listed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        metrics = crossval_summary(oof, class_names=(names[1], names[0]), n_bootstrap=n_bootstrap, seed=seed)
    undefined = sorted({str(w.message) for w in caught if issubclass(w.category, UndefinedMetricWarning)})
    for message in undefined:
        log.info("undefined statistic (reported as null): %s", message)
    for w in caught:  # anything else is passed on unchanged
        if not issubclass(w.category, UndefinedMetricWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    metrics["undefined"] = undefined
    return metrics


class BinaryTask:
    """One label per image: softmax network, one threshold per fold (see the module docstring)."""

    ensemble: bool = True
    fold_info_keys: tuple[str, ...] = FOLD_INFO_KEYS

    def build_cohort(self, manifest_df: pd.DataFrame, cfg: TrainConfig, n_folds: int) -> Cohort:
        return cohorts.build_cohort(manifest_df, cfg, n_folds)

    def fold_guard(self, cohort: Cohort, fold_cfg: TrainConfig, n_folds: int) -> None:
        cohorts.fold_guard(cohort, fold_cfg, n_folds)

    def train_fold(self, rows: pd.DataFrame, where: Path, fold_cfg: TrainConfig) -> TrainResult:
        return train_model(rows, where, fold_cfg)

    def score_fold(
        self,
        k: int,
        where: Path,
        result: TrainResult,
        test_df: pd.DataFrame,
        labels: np.ndarray,
        fold_cfg: TrainConfig,
        cache_dir: Path,
    ) -> dict[str, Any]:
        heldout(k, where, result, test_df, labels, fold_cfg, cache_dir)
        return {"bundle_sha256": rundir.read_json(where / HELDOUT_META)["bundle_sha256"]}

    def oof_table(self, p: Pooling) -> pd.DataFrame:
        return oof_table(p.cohort, p.cfg, p.out_dir, p.n_folds)

    def summarise(self, p: Pooling, oof: pd.DataFrame) -> dict[str, Any]:
        data = p.cfg.data
        metrics = summarise(oof, decision_names(tuple(data.classes), data.positive_class), p.n_bootstrap, p.cfg.seed)
        for entry, info in zip(metrics["per_fold"], p.fold_info):
            entry.update(info)
        metrics["best_epochs"] = [f["best_epoch"] for f in p.fold_info]
        metrics["settings"] = {
            "n_folds": int(p.n_folds),
            "positive_class": data.positive_class,
            "classes": list(data.classes),
            "group_col": data.group_col,
            "decision_rule": "positive when probability >= threshold",
            "fold_check": p.cohort.check,
            "n_bootstrap": p.n_bootstrap,
        }
        return metrics

    def final(self, p: Pooling, oof: pd.DataFrame, metrics: dict[str, Any], final: bool | str) -> Path | None:
        if not final:
            return None
        fold_thresholds = [f["threshold"] for f in p.fold_info]
        y, score = oof["y_true"].to_numpy(), oof["probability"].to_numpy()
        pooled = pooled_threshold(y, score, p.cfg.threshold, fold_thresholds)
        df, n_folds = p.cohort.df, int(p.n_folds)
        if final == "ensemble":
            bundles = [fold_dir(p.out_dir, k) / rundir.BUNDLE_FILE for k in range(n_folds)]
            metrics["final"] = ensemble_final(df, p.out_dir, bundles, pooled, fold_thresholds)
        else:
            best = metrics["best_epochs"]
            metrics["final"] = train_final(df, p.out_dir, p.cfg, p.cache_dir, best, pooled, fold_thresholds, n_folds)
        return Path(metrics["final"]["bundle"])

    def finish(self, p: Pooling, metrics: dict[str, Any]) -> None:
        write_table(roc_table(metrics["roc"]), p.out_dir / ROC_FILE)
        pooled = metrics["pooled"]["auc_delong"]
        log.info(
            "pooled out-of-fold AUC %.4f (95%% CI %.4f-%.4f); mean across folds %.4f +/- %.4f",
            pooled["auc"],
            pooled["low"],
            pooled["high"],
            metrics["across_folds"]["auc"]["mean"],
            metrics["across_folds"]["auc"]["sd"],
        )


BINARY = BinaryTask()

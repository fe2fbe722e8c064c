"""Pool the finished folds of a cross-validation into its results: ``oof_predictions.csv``,
``cv_metrics.json``, ``roc_curves.csv`` and, when asked, the final model.

The one-process run and ``crossval --merge`` both end here and both read every fold from its
files (``folds/<k>/fold.json``, ``heldout_predictions.csv``, ``heldout.json``), so K fold jobs
plus a merge give exactly the numbers of one process. The merge refuses (ConfigError, exit 2,
naming the folds) when a fold is missing or unfinished, or was run with another config,
manifest or number of folds.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad.config import TrainConfig
from cxr_cad.crossvalidation.cohort import Cohort, decision_names
from cxr_cad.crossvalidation.final import ensemble_final, pooled_threshold, train_final
from cxr_cad.crossvalidation.folds import HELDOUT_FILE, HELDOUT_META
from cxr_cad.crossvalidation.result import (
    FOLD_DONE_FILE,
    METRICS_FILE,
    OOF_FILE,
    ROC_FILE,
    CrossvalResult,
    fold_dir,
)
from cxr_cad.errors import ConfigError, OutputError
from cxr_cad.manifest import manifest_hash, write_table
from cxr_cad.metrics import UndefinedMetricWarning, crossval_summary, jsonable, roc_table
from cxr_cad.training import rundir

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


def _names(folds: list[int]) -> str:
    return ", ".join(str(k) for k in folds)


def read_folds(out_dir: Path, cohort: Cohort, cfg: TrainConfig, n_folds: int) -> list[dict[str, Any]]:
    """Every fold's ``fold.json``, checked against this cross-validation.

    Raises ConfigError naming the folds that are missing (or unfinished), that were run with
    another config, manifest or K, or whose held-out predictions are not their bundle's."""
    fingerprint, data_hash = cfg.fingerprint(), manifest_hash(cohort.df)
    missing: list[int] = []
    other: dict[str, list[int]] = {"config": [], "manifest": [], "number of folds": [], "held-out predictions": []}
    records: list[dict[str, Any]] = []
    for k in range(int(n_folds)):
        where = fold_dir(out_dir, k)
        if not (where / FOLD_DONE_FILE).is_file():
            missing.append(k)
            continue
        record = rundir.read_json(where / FOLD_DONE_FILE)
        records.append(record)
        if record.get("fingerprint") != fingerprint:
            other["config"].append(k)
        if record.get("manifest_hash") != data_hash:
            other["manifest"].append(k)
        if record.get("n_folds") != int(n_folds):
            other["number of folds"].append(k)
        meta_path = where / HELDOUT_META
        meta = rundir.read_json(meta_path) if meta_path.is_file() else {}
        if meta.get("bundle_sha256") != record.get("bundle_sha256") or not (where / HELDOUT_FILE).is_file():
            other["held-out predictions"].append(k)
    problems = []
    if missing:
        problems.append(
            f"fold(s) {_names(missing)} of {n_folds} are not finished (no {FOLD_DONE_FILE} in "
            f"{out_dir / 'folds'}/<k>/): run `cxr-cad crossval ... --fold K` for each, then merge again"
        )
    for what, folds in other.items():
        if folds:
            problems.append(
                f"fold(s) {_names(folds)} were run with a different {what} than this cross-validation; "
                "rerun them with the same settings (or start a new --out)"
            )
    if problems:
        raise ConfigError(problems, source=str(out_dir))
    return records


def _heldout_scores(out_dir: Path, k: int, rows: np.ndarray) -> tuple[np.ndarray, float]:
    """Fold ``k``'s held-out probabilities (in ``rows`` order, exactly as written) and threshold."""
    where = fold_dir(out_dir, k)
    # the one-process run and the merge both read this file, so they agree to the last bit
    table = pd.read_csv(where / HELDOUT_FILE, dtype={"sop_instance_uid": str}, keep_default_na=False)
    if table["row"].tolist() != rows.tolist():
        raise ConfigError(
            [f"fold {k}'s held-out predictions ({where / HELDOUT_FILE}) are not the rows of fold {k}; rerun fold {k}"],
            source=str(out_dir),
        )
    meta = rundir.read_json(where / HELDOUT_META)
    return table["probability"].to_numpy(dtype=np.float64), float(meta["threshold"])


def oof_table(cohort: Cohort, cfg: TrainConfig, out_dir: Path, n_folds: int) -> pd.DataFrame:
    """``oof_predictions.csv``: every row scored once, by the fold model that never saw its patient."""
    data, df = cfg.data, cohort.df
    probs = np.full(len(df), np.nan)
    thresholds = np.full(len(df), np.nan)
    for k in range(int(n_folds)):
        test = cohort.folds == k
        probs[test], thresholds[test] = _heldout_scores(out_dir, k, df.loc[test, "row"].to_numpy())
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


def pool_folds(
    out_dir: Path,
    cohort: Cohort,
    cfg: TrainConfig,
    n_folds: int,
    *,
    cache_dir: Path,
    final: bool | str = False,
    n_bootstrap: int = 2000,
    statuses: list[str] | None = None,
    manifest_name: str | None = None,
) -> CrossvalResult:
    """Pool the finished folds of ``out_dir`` (see the module docstring) and write the results.

    ``statuses``: what this invocation did to each fold (the one-process run); None = the
    status each fold job recorded. Raises ConfigError (:func:`read_folds`), and as the final
    model's training (:func:`~cxr_cad.crossvalidation.final.train_final`)."""
    data = cfg.data
    records = read_folds(out_dir, cohort, cfg, n_folds)
    fold_info = [{key: r.get(key) for key in FOLD_INFO_KEYS} for r in records]
    if statuses is not None:
        for info, status in zip(fold_info, statuses):
            info["status"] = status
    names = decision_names(tuple(data.classes), data.positive_class)
    oof = oof_table(cohort, cfg, out_dir, n_folds)
    write_table(oof, out_dir / OOF_FILE)
    metrics = summarise(oof, names, n_bootstrap, cfg.seed)
    for entry, info in zip(metrics["per_fold"], fold_info):
        entry.update(info)
    metrics["best_epochs"] = [f["best_epoch"] for f in fold_info]
    metrics["settings"] = {
        "n_folds": int(n_folds),
        "positive_class": data.positive_class,
        "classes": list(data.classes),
        "group_col": data.group_col,
        "decision_rule": "positive when probability >= threshold",
        "fold_check": cohort.check,
        "n_bootstrap": n_bootstrap,
    }
    final_bundle = _final(final, cohort.df, oof, out_dir, cfg, cache_dir, metrics, fold_info, n_folds)
    rundir.write_json(out_dir / METRICS_FILE, jsonable(metrics))
    write_table(roc_table(metrics["roc"]), out_dir / ROC_FILE)
    pooled = metrics["pooled"]["auc_delong"]
    log.info(
        "pooled out-of-fold AUC %.4f (95%% CI %.4f-%.4f); mean across folds %.4f +/- %.4f",
        pooled["auc"],
        pooled["low"],
        pooled["high"],
        metrics["across_folds"]["auc"]["mean"],
        metrics["across_folds"]["auc"]["sd"],
    )
    return CrossvalResult(
        out_dir=out_dir,
        n_folds=int(n_folds),
        oof=oof,
        metrics=metrics,
        fold_status=[str(f["status"]) for f in fold_info],
        final_bundle=final_bundle,
        manifest_name=manifest_name,
    )


def _final(
    final: bool | str,
    df: pd.DataFrame,
    oof: pd.DataFrame,
    out_dir: Path,
    cfg: TrainConfig,
    cache_dir: Path,
    metrics: dict[str, Any],
    fold_info: list[dict[str, Any]],
    n_folds: int,
) -> Path | None:
    """The final model asked for by ``final`` (recorded under ``metrics["final"]``), or None."""
    fold_thresholds = [f["threshold"] for f in fold_info]
    if not final:
        return None
    pooled = pooled_threshold(oof["y_true"].to_numpy(), oof["probability"].to_numpy(), cfg.threshold, fold_thresholds)
    if final == "ensemble":
        bundles = [fold_dir(out_dir, k) / rundir.BUNDLE_FILE for k in range(int(n_folds))]
        metrics["final"] = ensemble_final(df, out_dir, bundles, pooled, fold_thresholds)
    else:
        best = metrics["best_epochs"]
        metrics["final"] = train_final(df, out_dir, cfg, cache_dir, best, pooled, fold_thresholds, int(n_folds))
    return Path(metrics["final"]["bundle"])

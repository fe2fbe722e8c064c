"""Patient-grouped, label-stratified K-fold cross-validation: :func:`run_crossval`.

For each fold ``k`` a model is trained with :func:`cxr_cad.training.trainer.train_model` on the
other K-1 folds (which it splits again by patient into training and an inner validation
set: best epoch, early stopping and the decision threshold are chosen there, never on fold
``k``), then fold ``k`` is scored with that model. Every image is scored exactly once, by
the one model that never saw its patient.

Layout of ``RUN_DIR``::

    crossval.json          settings, fingerprint, manifest hash, the patient-overlap check
    folds.csv              row, sop_instance_uid, patient (group) id, label, fold
    cache/                 decoded + resized images, shared by every fold and the final model
    folds/<k>/             the fold's training run folder (train_model layout: model.pt,
                           train_log.csv, checkpoint.pt, result.json, ...) plus
                           heldout_predictions.csv and heldout.json
    oof_predictions.csv    one row per manifest row: fold, label, y_true, probability,
                           threshold (the fold's own), decision
    cv_metrics.json        per-fold metrics, mean +/- SD across folds, pooled out-of-fold
                           metrics, ROC data, best epochs (see cxr_cad.metrics.crossval_summary)
    roc_curves.csv         per-fold, mean (+/- 1 SD band) and pooled ROC curves
    final/                 with ``final=True``: a training run on all images (model.pt)

Reruns resume: a finished fold is not retrained (its ``result.json`` exists), an interrupted
fold continues from its checkpoint, held-out predictions made by the same bundle are reused.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad.config import TrainConfig
from cxr_cad.crossvalidation.final import FINAL_DIR, ensemble_final, final_epochs, train_final
from cxr_cad.crossvalidation.folds import (
    CV_RUN_FILE,
    FOLDS_FILE,
    HELDOUT_FILE,
    HELDOUT_META,
    check_rerun,
    check_stored_folds,
    fold_check,
    heldout,
    predict_heldout,
)
from cxr_cad.errors import ManifestError, OutputError
from cxr_cad.manifest import manifest_hash, patient_folds, write_table
from cxr_cad.metrics import UndefinedMetricWarning, crossval_summary, jsonable, roc_table
from cxr_cad.training import guards, rundir
from cxr_cad.training.data import label_indices, split_train_val
from cxr_cad.training.trainer import train_model

__all__ = [
    "CV_RUN_FILE",
    "FINAL_DIR",
    "FOLDS_FILE",
    "HELDOUT_FILE",
    "HELDOUT_META",
    "METRICS_FILE",
    "OOF_FILE",
    "ROC_FILE",
    "CrossvalResult",
    "ensemble_final",
    "final_epochs",
    "fold_check",
    "predict_heldout",
    "run_crossval",
]

log = logging.getLogger(__name__)

OOF_FILE = "oof_predictions.csv"
METRICS_FILE = "cv_metrics.json"
ROC_FILE = "roc_curves.csv"


@dataclass
class CrossvalResult:
    """What :func:`run_crossval` produced (files under ``out_dir``)."""

    out_dir: Path
    n_folds: int
    oof: pd.DataFrame  # oof_predictions.csv
    metrics: dict  # cv_metrics.json (NaN as float here, null in the file)
    fold_status: list[str]  # per fold: "trained", "resumed" or "finished before"
    final_bundle: Path | None


@dataclass
class _Cohort:
    """The manifest of a cross-validation, its class indices and its fold of every row."""

    df: pd.DataFrame  # with a "row" column (0..n-1)
    labels: np.ndarray
    folds: np.ndarray
    check: dict[str, Any]


def _fold_config(cfg: TrainConfig, cache_dir: Path) -> TrainConfig:
    """Each fold splits its training rows by patient for the inner validation set."""
    return cfg.replace(data=cfg.data.replace(split="grouped", cache_dir=str(cache_dir)))


def _decision_names(classes: tuple[str, ...], positive: str) -> tuple[str, str]:
    others = [c for c in classes if c != positive]
    return positive, (others[0] if len(others) == 1 else f"not {positive}")


def _cohort(manifest_df: pd.DataFrame, cfg: TrainConfig, n_folds: int) -> _Cohort:
    """Check the manifest and assign patient-grouped, label-stratified folds.

    Raises ManifestError: missing columns or labels, an absent class, a patient in two folds."""
    data = cfg.data
    df = manifest_df.reset_index(drop=True).copy()
    df["row"] = np.arange(len(df))
    missing = [c for c in ("path", "sop_instance_uid", data.group_col) if c not in df.columns]
    if missing:
        raise ManifestError([f"the manifest has no {c!r} column" for c in missing])
    labels = label_indices(df, data.classes, data.label_col, what="cross-validation")
    absent = [c for i, c in enumerate(data.classes) if not (labels == i).any()]
    if absent:  # one-class manifest: refuse (exit 2) rather than cross-validate a constant model
        raise ManifestError(
            [
                f"the manifest holds no image of class(es) {absent}; cross-validation needs "
                f"every one of {list(data.classes)} (check the labels, or --classes)"
            ]
        )
    folds = patient_folds(df, n_folds, seed=cfg.seed, label_col=data.label_col, group_col=data.group_col)
    check = fold_check(df, folds, group_col=data.group_col, label_col=data.label_col)
    if check["patients_in_several_folds"]:
        raise ManifestError([f"{check['patients_in_several_folds']} patient(s) ended up in several folds"])
    return _Cohort(df, labels, folds, check)


def _fold_guard(cohort: _Cohort, fold_cfg: TrainConfig, n_folds: int) -> None:
    """Every fold's training rows, split again by patient, must be big enough to select a model
    and a threshold (:func:`cxr_cad.training.guards.cohort_problems`), checked for all folds
    before the first one trains: ManifestError (exit 2) listing each short fold, unless ``force``."""
    data = fold_cfg.data
    problems = []
    for k in range(int(n_folds)):
        rows = cohort.df[cohort.folds != k].drop(columns=["row"]).reset_index(drop=True)
        try:
            train_df, val_df, how = split_train_val(rows, data, seed=fold_cfg.seed)
        except ManifestError as exc:
            problems += [f"fold {k}: {p}" for p in exc.problems]
            continue
        found = guards.cohort_problems(
            train_df, val_df, classes=data.classes, label_col=data.label_col, group_col=data.group_col, how=how
        )
        problems += [f"fold {k} ({len(rows)} images outside it): {p}" for p in found]
    if not problems:
        return
    if not fold_cfg.force:
        raise ManifestError(
            [*problems, f"use fewer folds (--folds), a larger --val-fraction or more patients; {guards.FORCE_HINT}"]
        )
    for p in problems:
        log.warning("forced: %s", p)


def _start(out_dir: Path, cohort: _Cohort, cfg: TrainConfig, n_folds: int, fold_cfg: TrainConfig) -> None:
    """Check a rerun may resume ``out_dir`` and every fold is big enough (:func:`_fold_guard`),
    create it, write ``folds.csv`` and ``crossval.json``."""
    data, df = cfg.data, cohort.df
    record = {
        "n_folds": int(n_folds),
        "fingerprint": cfg.fingerprint(),
        "manifest_hash": manifest_hash(df),
        "group_col": data.group_col,
        "label_col": data.label_col,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "fold_check": cohort.check,
        "n_images": len(df),
        "versions": rundir.package_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    folds_table = pd.DataFrame(
        {
            "row": df["row"],
            "sop_instance_uid": df["sop_instance_uid"].astype(str),
            data.group_col: df[data.group_col].astype(str),
            "label": df[data.label_col].astype(str),
            "fold": cohort.folds,
        }
    )
    check_rerun(out_dir, record)
    check_stored_folds(out_dir, folds_table)
    _fold_guard(cohort, fold_cfg, n_folds)  # before anything is written or trained
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run folder {out_dir}: {exc.strerror or exc}") from exc
    if not (out_dir / FOLDS_FILE).exists():
        write_table(folds_table, out_dir / FOLDS_FILE)
    if not (out_dir / CV_RUN_FILE).exists():
        rundir.write_json(out_dir / CV_RUN_FILE, record)
    log.info(
        "%d-fold cross-validation of %d images from %d patients, grouped by %s; no patient in two folds",
        n_folds,
        len(df),
        cohort.check["n_patients"],
        data.group_col,
    )


def _fold_status(fold_dir: Path) -> str:
    if (fold_dir / rundir.RESULT_FILE).exists():
        return "finished before"
    return "resumed" if (fold_dir / "checkpoint.pt").exists() else "trained"


def _run_folds(
    out_dir: Path, cohort: _Cohort, fold_cfg: TrainConfig, cache_dir: Path, n_folds: int
) -> tuple[np.ndarray, np.ndarray, list[str], list[dict[str, Any]]]:
    """Train (or resume) every fold and score its held-out rows: (probs, thresholds, status, fold info)."""
    df, folds = cohort.df, cohort.folds
    probs = np.full(len(df), np.nan)
    thresholds = np.full(len(df), np.nan)
    status: list[str] = []
    fold_info: list[dict[str, Any]] = []
    for k in range(int(n_folds)):
        fold_dir = out_dir / "folds" / str(k)
        test = folds == k
        status.append(_fold_status(fold_dir))
        if status[-1] == "finished before":
            log.info("fold %d (%d of %d): already trained; not retrained", k, k + 1, n_folds)
        else:
            n_train, n_test = int((~test).sum()), int(test.sum())
            log.info("fold %d (%d of %d): training on %d images, %d held out", k, k + 1, n_folds, n_train, n_test)
        result = train_model(df[~test].reset_index(drop=True), fold_dir, fold_cfg)
        test_df = df[test].reset_index(drop=True)
        p, thr = heldout(k, fold_dir, result, test_df, cohort.labels[test], fold_cfg, cache_dir)
        probs[test], thresholds[test] = p, thr
        fold_info.append(
            {
                "fold": k,
                "status": status[-1],
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "inner_val_auc": result.val_auc,
                "threshold": result.threshold,
                "threshold_method": result.threshold_method,
                "inner_split": result.split,
            }
        )
    return probs, thresholds, status, fold_info


def _oof_table(
    cohort: _Cohort, cfg: TrainConfig, probs: np.ndarray, thresholds: np.ndarray, names: tuple[str, str]
) -> pd.DataFrame:
    """``oof_predictions.csv``: every row scored once, by the fold model that never saw its patient."""
    data, df = cfg.data, cohort.df
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


def _summary(oof: pd.DataFrame, names: tuple[str, str], n_bootstrap: int, seed: int) -> dict[str, Any]:
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


def run_crossval(
    manifest_df: pd.DataFrame,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    n_folds: int = 5,
    init: str | None = None,
    final: bool | str = False,
    n_bootstrap: int = 2000,
) -> CrossvalResult:
    """K-fold cross-validation grouped by patient and stratified by label (see module docstring).

    Args:
        manifest_df: labelled manifest (``read_manifest(..., require_labels=True)``; paths
            readable as given). Needs ``path``, ``sop_instance_uid``, the label column and
            the group column of ``cfg.data``.
        out_dir: the cross-validation run folder (created; rerun to resume).
        cfg: training config used for every fold (``data.split`` is forced to ``grouped``:
            each fold's inner validation split is by patient; ``data.val_fraction`` sets its size).
        n_folds: K >= 2.
        init: overrides ``cfg.model.init`` for every fold and the final model.
        final: ``True``/``"retrain"``: also train one model on all images with the median
            best epoch and the pooled out-of-fold Youden threshold (``final/model.pt``);
            ``"ensemble"``: ``final/model.pt`` is the K fold models as one bundle whose
            probability is the mean of theirs (:func:`ensemble_final`), no further training.
        n_bootstrap: resamples of the pooled bootstrap AUC CI.

    Raises:
        ManifestError: missing/unknown labels, too few patients for K folds, a fold whose inner
            split is too small to select a model or a threshold (unless ``cfg.force``), unreadable images.
        TrainingFailed: a fold's training diverged or never beat chance (unless ``cfg.force``).
        ConfigError: ``out_dir`` holds a cross-validation with other settings or data.
        OutputError, WeightsError, BundleError: as :func:`train_model`.
    """
    if init is not None:
        cfg = cfg.replace(model=cfg.model.replace(init=str(init)))
    data = cfg.data
    out_dir = Path(out_dir).resolve()
    cohort = _cohort(manifest_df, cfg, n_folds)
    cache_dir = Path(data.cache_dir) if data.cache_dir else out_dir / "cache"
    fold_cfg = _fold_config(cfg, cache_dir)
    _start(out_dir, cohort, cfg, n_folds, fold_cfg)
    if fold_cfg.data.val_fraction == 0:
        log.warning(
            "data.val_fraction is 0: folds train without inner validation (no early stopping; "
            "threshold.value %.3f is used)",
            cfg.threshold.value,
        )
    probs, thresholds, status, fold_info = _run_folds(out_dir, cohort, fold_cfg, cache_dir, n_folds)
    names = _decision_names(tuple(data.classes), data.positive_class)
    oof = _oof_table(cohort, cfg, probs, thresholds, names)
    write_table(oof, out_dir / OOF_FILE)
    metrics = _summary(oof, names, n_bootstrap, cfg.seed)
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
    final_bundle = _final(final, cohort.df, out_dir, cfg, cache_dir, metrics, fold_info, n_folds)
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
        out_dir=out_dir, n_folds=int(n_folds), oof=oof, metrics=metrics, fold_status=status, final_bundle=final_bundle
    )


def _final(
    final: bool | str,
    df: pd.DataFrame,
    out_dir: Path,
    cfg: TrainConfig,
    cache_dir: Path,
    metrics: dict[str, Any],
    fold_info: list[dict[str, Any]],
    n_folds: int,
) -> Path | None:
    """The final model asked for by ``final`` (recorded under ``metrics["final"]``), or None."""
    youden = metrics["pooled"]["youden_threshold"]
    fold_thresholds = [f["threshold"] for f in fold_info]
    if final == "ensemble":
        bundles = [out_dir / "folds" / str(k) / rundir.BUNDLE_FILE for k in range(int(n_folds))]
        metrics["final"] = ensemble_final(df, out_dir, bundles, youden, fold_thresholds)
    elif final:
        best = metrics["best_epochs"]
        metrics["final"] = train_final(df, out_dir, cfg, cache_dir, best, youden, fold_thresholds, int(n_folds))
    else:
        return None
    return Path(metrics["final"]["bundle"])

"""Multi-label K-fold cross-validation (``data.task: multilabel``): :func:`run_multilabel_crossval`,
called by :func:`cxr_cad.crossvalidation.run.run_crossval`.

Folds are grouped by patient and stratified over the findings (iterative stratification,
:func:`cxr_cad.manifest.multilabel_patient_folds`). Each fold trains one network with one
sigmoid per finding on the other folds (inner patient-grouped validation split, stratified over
the findings: best epoch and every finding's threshold are chosen there), then scores its own
fold. The same layout as a binary cross-validation, with per-finding columns:

    crossval.json, folds.csv, folds/<k>/ (training run, heldout_predictions.csv, heldout.json)
    oof_predictions.csv    row, path, sop_instance_uid, patient, fold, label, and per finding F:
                           finding_F (1/0/-1 unknown), probability_F, threshold_F (the fold's),
                           decision_F (present/absent, as predictions.csv)
    cv_metrics.json        task "multilabel": pooled out-of-fold per-finding AUCs with DeLong CIs,
                           sensitivity/specificity at the folds' thresholds, macro/micro averages,
                           flags, co-occurrence, patient-cluster bootstrap; per-fold macro AUC
    final/                 with ``final``: one training run on every image for the median best
                           epoch, each finding's threshold = its pooled out-of-fold Youden threshold
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad.config import TrainConfig
from cxr_cad.crossvalidation.final import FINAL_DIR, final_epochs
from cxr_cad.crossvalidation.folds import CV_RUN_FILE, FOLDS_FILE, check_stored_folds, fold_check, heldout_multilabel
from cxr_cad.crossvalidation.result import CrossvalResult
from cxr_cad.errors import ManifestError, UsageError
from cxr_cad.inference.outputs import FINDING_ABSENT, FINDING_PRESENT
from cxr_cad.manifest import multilabel_patient_folds, write_table
from cxr_cad.manifest.multilabel import finding_column
from cxr_cad.metrics import jsonable, youden_threshold
from cxr_cad.metrics.multilabel import mean_auc, multilabel_summary
from cxr_cad.metrics.proportions import proportion
from cxr_cad.model import load_bundle, save_bundle
from cxr_cad.modelcard import write_card_for_bundle
from cxr_cad.training import multilabel as ml
from cxr_cad.training import rundir
from cxr_cad.training.trainer import train_model

log = logging.getLogger(__name__)

OOF_FILE = "oof_predictions.csv"
METRICS_FILE = "cv_metrics.json"


def _oof(df: pd.DataFrame, cfg: TrainConfig, y: np.ndarray, folds: np.ndarray, probs, thresholds) -> pd.DataFrame:
    data = cfg.data
    oof = pd.DataFrame(
        {
            "row": df["row"],
            "path": df["path"].astype(str),
            "sop_instance_uid": df["sop_instance_uid"].astype(str),
            data.group_col: df[data.group_col].astype(str),
            "fold": folds,
            "label": df[data.label_col].astype(str),
        }
    )
    for k, f in enumerate(data.classes):
        oof[finding_column(f)] = y[:, k]
        oof[f"probability_{f}"] = probs[:, k]
        oof[f"threshold_{f}"] = thresholds[:, k]
        oof[f"decision_{f}"] = np.where(probs[:, k] >= thresholds[:, k], FINDING_PRESENT, FINDING_ABSENT)
    return oof


def _per_fold(y: np.ndarray, probs: np.ndarray, folds: np.ndarray, n_folds: int, cfg: TrainConfig) -> list[dict]:
    out = []
    for k in range(n_folds):
        m = folds == k
        auc, used = mean_auc(y[m], probs[m], min_positives=cfg.data.min_positives)
        out.append(
            {"fold": k, "n": int(m.sum()), "macro_auc": auc, "findings_used": [cfg.data.classes[j] for j in used]}
        )
    return out


def run_multilabel_crossval(
    manifest_df: pd.DataFrame,
    out_dir: Path,
    cfg: TrainConfig,
    *,
    n_folds: int = 5,
    init: str | None = None,
    final: bool | str = False,
    n_bootstrap: int = 2000,
    manifest_name: str | None = None,
) -> CrossvalResult:
    """Grouped, finding-stratified K-fold cross-validation of a multi-label recipe.

    Raises:
        ManifestError: missing columns or finding values, a finding without positives, a
            patient in two folds. UsageError: ``final="ensemble"`` (not for multi-label yet).
    """
    if final == "ensemble":
        raise UsageError("--final ensemble is not available for multi-label models yet; use --final retrain")
    ml.check_config(cfg)
    if init is not None:
        cfg = cfg.replace(model=cfg.model.replace(init=str(init)))
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out_dir / "cache"
    data = cfg.data
    df = manifest_df.reset_index(drop=True).copy()
    df["row"] = np.arange(len(df))
    missing = [c for c in ("path", "sop_instance_uid", data.group_col) if c not in df.columns]
    if missing:
        raise ManifestError([f"the manifest has no {c!r} column" for c in missing])
    y = ml.labels(df, cfg)
    ml.check_training_labels(y, data.classes)
    folds = multilabel_patient_folds(df, y, n_folds, seed=cfg.seed, group_col=data.group_col)
    check = fold_check(df, folds, group_col=data.group_col, label_col=data.label_col)
    if check["patients_in_several_folds"]:
        raise ManifestError([f"{check['patients_in_several_folds']} patient(s) ended up in several folds"])
    for entry in check["per_fold"]:
        m = folds == entry["fold"]
        entry["labels"] = {f: int((y[m, j] == 1).sum()) for j, f in enumerate(data.classes)}  # positives per finding
    fold_cfg = cfg.replace(data=data.replace(split="grouped", cache_dir=str(cache_dir)))
    folds_table = pd.DataFrame(
        {
            "row": df["row"],
            "sop_instance_uid": df["sop_instance_uid"].astype(str),
            data.group_col: df[data.group_col].astype(str),
            "label": df[data.label_col].astype(str),
            "fold": folds,
        }
    )
    check_stored_folds(out_dir, folds_table)
    write_table(folds_table, out_dir / FOLDS_FILE)
    record = {
        "task": "multilabel",
        "n_folds": int(n_folds),
        "fingerprint": cfg.fingerprint(),
        "manifest_hash": ml.data_hash(df, y),
        "group_col": data.group_col,
        "label_col": data.label_col,
        "findings": list(data.classes),
        "fold_method": "patient-grouped iterative stratification over findings (Sechidis et al. 2011)",
        "fold_check": check,
        "config": cfg.to_dict(),
    }
    rundir.write_json(out_dir / CV_RUN_FILE, record)

    probs = np.full(y.shape, np.nan)
    thresholds = np.full(y.shape, np.nan)
    status, fold_info = [], []
    for k in range(int(n_folds)):
        fold_dir = out_dir / "folds" / str(k)
        test = folds == k
        status.append("finished before" if (fold_dir / rundir.RESULT_FILE).exists() else "trained")
        log.info("fold %d (%d of %d): training on %d images, %d held out", k, k + 1, n_folds, (~test).sum(), test.sum())
        result = train_model(df[~test].drop(columns=["row"]).reset_index(drop=True), fold_dir, fold_cfg)
        test_df = df[test].reset_index(drop=True)
        p, thr = heldout_multilabel(k, fold_dir, result.bundle_path, test_df, y[test], fold_cfg, cache_dir)
        probs[test], thresholds[test] = p, thr[None, :]
        fold_info.append(
            {
                "fold": k,
                "status": status[-1],
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "inner_val_macro_auc": result.val_auc,
                "thresholds": dict(zip(data.classes, thr.tolist())),
            }
        )
    if np.isnan(probs).any():
        raise ManifestError(["internal check failed: not every image was scored exactly once"])
    oof = _oof(df, cfg, y, folds, probs, thresholds)
    write_table(oof, out_dir / OOF_FILE)
    metrics = multilabel_summary(
        y,
        probs,
        data.classes,
        np.nanmedian(thresholds, axis=0),
        groups=df[data.group_col].astype(str).to_numpy(),
        min_positives=data.min_positives,
        n_bootstrap=n_bootstrap,
        seed=cfg.seed,
    )
    _at_fold_thresholds(metrics, y, probs, thresholds)
    metrics.update(
        n_folds=int(n_folds),
        per_fold=_per_fold(y, probs, folds, int(n_folds), cfg),
        folds=fold_info,
        best_epochs=[f["best_epoch"] for f in fold_info],
        fold_method=record["fold_method"],
        uncertain=data.uncertain,
        selection=ml.bundle_record(cfg, [], None)["selection"],
        settings={
            "task": "multilabel",
            "classes": list(data.classes),
            "positive_class": data.positive_class,
            "n_bootstrap": int(n_bootstrap),
            "min_positives": data.min_positives,
        },
    )
    final_bundle = None
    if final:
        metrics["final"] = _train_final(df, y, probs, out_dir, cfg, cache_dir, metrics["best_epochs"], int(n_folds))
        final_bundle = Path(metrics["final"]["bundle"])
    rundir.write_json(out_dir / METRICS_FILE, jsonable(metrics))
    log.info(
        "cross-validation: pooled macro AUC %.4f over %d findings",
        metrics["macro"]["auc"],
        metrics["macro"]["n_findings"],
    )
    return CrossvalResult(out_dir, int(n_folds), oof, metrics, status, final_bundle, manifest_name)


def _at_fold_thresholds(metrics: dict, y: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> None:
    """Replace the per-finding sensitivity/specificity with those at each fold's own threshold
    (what the out-of-fold decisions are), keeping the Wilson intervals."""
    for k, row in enumerate(metrics["per_finding"]):
        if row["small_sample"]:
            continue
        known = y[:, k] >= 0
        yk, pred = y[known, k], probs[known, k] >= thresholds[known, k]
        row["sensitivity"] = proportion(int((pred & (yk == 1)).sum()), int((yk == 1).sum()), name="sensitivity")
        row["specificity"] = proportion(int((~pred & (yk == 0)).sum()), int((yk == 0).sum()), name="specificity")
        row["threshold_note"] = "each fold's own threshold (median shown)"
        row["positive_calls"] = int(pred.sum())


def _train_final(
    df: pd.DataFrame,
    y: np.ndarray,
    probs: np.ndarray,
    out_dir: Path,
    cfg: TrainConfig,
    cache_dir: Path,
    best: list[int | None],
    n_folds: int,
) -> dict[str, Any]:
    """One network on every image for the median best epoch; each finding's threshold is its
    pooled out-of-fold Youden threshold (0.5 when undefined), recorded in the bundle."""
    epochs = final_epochs(best, cfg.epochs)
    final_cfg = cfg.replace(
        epochs=epochs,
        data=cfg.data.replace(split="grouped", val_fraction=0.0, cache_dir=str(cache_dir)),
        early_stopping=cfg.early_stopping.replace(patience=0),
    )
    result = train_model(df.drop(columns=["row"]), out_dir / FINAL_DIR, final_cfg)
    bundle = load_bundle(result.bundle_path)
    chosen_on = {
        "n": len(df),
        "description": f"pooled out-of-fold predictions of {n_folds}-fold patient-grouped cross-validation",
    }
    per = []
    for k, f in enumerate(cfg.data.classes):
        known = y[:, k] >= 0
        thr = youden_threshold(y[known, k], probs[known, k]) if len(set(y[known, k].tolist())) == 2 else math.nan
        ok = math.isfinite(thr)
        per.append(
            {
                "finding": f,
                "threshold": float(thr) if ok else 0.5,
                "method": "youden" if ok else "fixed",
                "params": {} if ok else {"value": 0.5},
                "detail": {"n_positive": int((y[known, k] == 1).sum()), "n_negative": int((y[known, k] == 0).sum())},
            }
        )
    extra = dict(bundle.meta.get("extra") or {})
    extra["multilabel"] = ml.bundle_record(cfg, per, chosen_on)
    extra["crossval"] = {"n_folds": n_folds, "best_epochs": best, "epochs": epochs}
    save_bundle(
        result.bundle_path,
        bundle.model,
        classes=bundle.classes,
        positive_class=bundle.positive_class,
        transform_spec=bundle.transform_spec,
        threshold=0.5,
        threshold_method="per_finding",
        threshold_params={"value": 0.5},
        threshold_chosen_on=chosen_on,
        manifest_hash=bundle.manifest_hash,
        train_config=bundle.train_config,
        init_record=bundle.meta.get("init"),
        extra=extra,
    )
    write_card_for_bundle(result.bundle_path)
    return {
        "bundle": str(result.bundle_path),
        "epochs": epochs,
        "thresholds": {p["finding"]: p["threshold"] for p in per},
        "threshold_method": "pooled out-of-fold Youden per finding",
    }

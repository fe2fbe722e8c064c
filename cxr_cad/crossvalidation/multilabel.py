"""The multi-label cross-validation task (``data.task: multilabel``): :data:`MULTILABEL`, the
:class:`~cxr_cad.crossvalidation.task.CrossvalTask` that
:func:`cxr_cad.crossvalidation.run.run_crossval`, ``run_crossval_fold`` and ``merge_crossval``
use for a multi-label recipe (so ``crossval --fold K`` and ``--merge RUN`` work as for binary).

Folds are grouped by patient and stratified over the findings (iterative stratification,
:func:`cxr_cad.manifest.multilabel_patient_folds`). Each fold trains one network with one
sigmoid per finding on the other folds (inner patient-grouped validation split, stratified over
the findings: best epoch and every finding's threshold are chosen there), then scores its own
fold. The same layout as a binary cross-validation, with per-finding columns:

    crossval.json, folds.csv, manifest.csv, folds/<k>/ (training run, heldout_predictions.csv,
                           heldout.json, fold.json)
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
from cxr_cad.crossvalidation.cohort import Cohort
from cxr_cad.crossvalidation.final import FINAL_DIR, final_epochs
from cxr_cad.crossvalidation.folds import HELDOUT_META, fold_check, heldout_multilabel
from cxr_cad.crossvalidation.merge import read_heldout
from cxr_cad.crossvalidation.task import Pooling
from cxr_cad.errors import ManifestError, UsageError
from cxr_cad.inference.outputs import FINDING_ABSENT, FINDING_PRESENT
from cxr_cad.manifest import multilabel_patient_folds
from cxr_cad.manifest.multilabel import finding_column
from cxr_cad.metrics import youden_threshold
from cxr_cad.metrics.multilabel import mean_auc, multilabel_summary
from cxr_cad.metrics.proportions import proportion
from cxr_cad.model import load_bundle, save_bundle
from cxr_cad.modelcard import write_card_for_bundle
from cxr_cad.training import multilabel as ml
from cxr_cad.training import rundir
from cxr_cad.training.trainer import TrainResult, train_model

log = logging.getLogger(__name__)

FOLD_METHOD = "patient-grouped iterative stratification over findings (Sechidis et al. 2011)"
#: The per-fold facts copied from ``fold.json`` into ``cv_metrics.json``'s ``folds`` entries.
FOLD_INFO_KEYS = ("fold", "status", "best_epoch", "epochs_run", "inner_val_macro_auc", "thresholds")


def build_cohort(manifest_df: pd.DataFrame, cfg: TrainConfig, n_folds: int) -> Cohort:
    """Check the recipe and the manifest, then assign patient-grouped folds stratified over the
    findings (``Cohort.labels`` is the ``(n, K)`` finding matrix).

    Raises:
        ConfigError: settings multi-label training cannot honour. ManifestError: missing
            columns or finding values, a finding without positives, a patient in two folds.
    """
    ml.check_config(cfg)
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
    extra = {"task": "multilabel", "findings": list(data.classes), "fold_method": FOLD_METHOD}
    return Cohort(df, y, folds, check, ml.data_hash(df, y), extra)


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


def oof_table(p: Pooling) -> pd.DataFrame:
    """``oof_predictions.csv`` from every fold's held-out sigmoid probabilities and thresholds."""
    findings, cohort = list(p.cfg.data.classes), p.cohort
    cols = [f"probability_{f}" for f in findings]
    probs = np.full(cohort.labels.shape, np.nan)
    thresholds = np.full(cohort.labels.shape, np.nan)
    for k in range(int(p.n_folds)):
        test = cohort.folds == k
        table, meta = read_heldout(p.out_dir, k, cohort.df.loc[test, "row"].to_numpy())
        probs[test] = table[cols].to_numpy(dtype=np.float64)
        thresholds[test] = np.asarray(meta["thresholds"], dtype=np.float64)[None, :]
    if np.isnan(probs).any():
        raise ManifestError(["internal check failed: not every image was scored exactly once"])
    return _oof(cohort.df, p.cfg, cohort.labels, cohort.folds, probs, thresholds)


def _matrices(oof: pd.DataFrame, findings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The ``(n, K)`` probabilities and fold thresholds of the out-of-fold table."""
    probs = oof[[f"probability_{f}" for f in findings]].to_numpy(dtype=np.float64)
    return probs, oof[[f"threshold_{f}" for f in findings]].to_numpy(dtype=np.float64)


def summarise(p: Pooling, oof: pd.DataFrame) -> dict[str, Any]:
    """``cv_metrics.json`` (task ``multilabel``) of the pooled out-of-fold predictions."""
    data, y = p.cfg.data, p.cohort.labels
    probs, thresholds = _matrices(oof, list(data.classes))
    metrics = multilabel_summary(
        y,
        probs,
        data.classes,
        np.nanmedian(thresholds, axis=0),
        groups=p.cohort.df[data.group_col].astype(str).to_numpy(),
        min_positives=data.min_positives,
        n_bootstrap=p.n_bootstrap,
        seed=p.cfg.seed,
    )
    _at_fold_thresholds(metrics, y, probs, thresholds)
    metrics.update(
        n_folds=int(p.n_folds),
        per_fold=_per_fold(y, probs, p.cohort.folds, int(p.n_folds), p.cfg),
        folds=p.fold_info,
        best_epochs=[f["best_epoch"] for f in p.fold_info],
        fold_method=FOLD_METHOD,
        uncertain=data.uncertain,
        selection=ml.bundle_record(p.cfg, [], None)["selection"],
        settings={
            "task": "multilabel",
            "classes": list(data.classes),
            "positive_class": data.positive_class,
            "n_bootstrap": int(p.n_bootstrap),
            "min_positives": data.min_positives,
        },
    )
    return metrics


def _per_fold(y: np.ndarray, probs: np.ndarray, folds: np.ndarray, n_folds: int, cfg: TrainConfig) -> list[dict]:
    out = []
    for k in range(n_folds):
        m = folds == k
        auc, used = mean_auc(y[m], probs[m], min_positives=cfg.data.min_positives)
        out.append(
            {"fold": k, "n": int(m.sum()), "macro_auc": auc, "findings_used": [cfg.data.classes[j] for j in used]}
        )
    return out


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


class MultilabelTask:
    """One sigmoid per finding, one threshold per finding and fold (see the module docstring)."""

    ensemble: bool = False  # --final ensemble: not for multi-label models yet
    fold_info_keys: tuple[str, ...] = FOLD_INFO_KEYS

    def build_cohort(self, manifest_df: pd.DataFrame, cfg: TrainConfig, n_folds: int) -> Cohort:
        return build_cohort(manifest_df, cfg, n_folds)

    def fold_guard(self, cohort: Cohort, fold_cfg: TrainConfig, n_folds: int) -> None:
        """None before the folds train: each fold's training applies the multi-label guards."""

    def train_fold(self, rows: pd.DataFrame, where: Path, fold_cfg: TrainConfig) -> TrainResult:
        return train_model(rows.drop(columns=["row"]), where, fold_cfg)

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
        _, thr = heldout_multilabel(k, where, result.bundle_path, test_df, labels, fold_cfg, cache_dir)
        return {
            "bundle_sha256": rundir.read_json(where / HELDOUT_META)["bundle_sha256"],
            "inner_val_macro_auc": result.val_auc,
            "thresholds": dict(zip(fold_cfg.data.classes, thr.tolist())),
        }

    def oof_table(self, p: Pooling) -> pd.DataFrame:
        return oof_table(p)

    def summarise(self, p: Pooling, oof: pd.DataFrame) -> dict[str, Any]:
        return summarise(p, oof)

    def final(self, p: Pooling, oof: pd.DataFrame, metrics: dict[str, Any], final: bool | str) -> Path | None:
        if not final:
            return None
        if final == "ensemble":
            raise UsageError("--final ensemble is not available for multi-label models yet; use --final retrain")
        probs, _ = _matrices(oof, list(p.cfg.data.classes))
        best = metrics["best_epochs"]
        metrics["final"] = _train_final(
            p.cohort.df, p.cohort.labels, probs, p.out_dir, p.cfg, p.cache_dir, best, int(p.n_folds)
        )
        return Path(metrics["final"]["bundle"])

    def finish(self, p: Pooling, metrics: dict[str, Any]) -> None:
        log.info(
            "cross-validation: pooled macro AUC %.4f over %d findings",
            metrics["macro"]["auc"],
            metrics["macro"]["n_findings"],
        )


MULTILABEL = MultilabelTask()

"""The cohort of a cross-validation: the manifest checked, its class indices, the
patient-grouped, label-stratified fold of every row, and the check that every fold is big
enough to train (made for all folds before any fold trains, in every job)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad.config import TrainConfig
from cxr_cad.crossvalidation.folds import fold_check
from cxr_cad.errors import ManifestError
from cxr_cad.manifest import manifest_hash, patient_folds
from cxr_cad.training import guards
from cxr_cad.training.data import label_indices, split_train_val

log = logging.getLogger(__name__)


@dataclass
class Cohort:
    """The manifest of a cross-validation, its labels and its fold of every row."""

    df: pd.DataFrame  # with a "row" column (0..n-1)
    labels: np.ndarray  # class indices (n,); multi-label: the finding matrix (n, K)
    folds: np.ndarray
    check: dict[str, Any]
    #: ``manifest_hash`` of crossval.json and every fold.json (multi-label: with the finding matrix)
    data_hash: str
    #: further facts for crossval.json (multi-label: task, findings, fold method)
    extra: dict[str, Any] = field(default_factory=dict)


def fold_config(cfg: TrainConfig, cache_dir: Path) -> TrainConfig:
    """Each fold splits its training rows by patient for the inner validation set."""
    return cfg.replace(data=cfg.data.replace(split="grouped", cache_dir=str(cache_dir)))


def decision_names(classes: tuple[str, ...], positive: str) -> tuple[str, str]:
    """(positive decision, negative decision) of the out-of-fold table."""
    others = [c for c in classes if c != positive]
    return positive, (others[0] if len(others) == 1 else f"not {positive}")


def build_cohort(manifest_df: pd.DataFrame, cfg: TrainConfig, n_folds: int) -> Cohort:
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
    return Cohort(df, labels, folds, check, manifest_hash(df))


def fold_guard(cohort: Cohort, fold_cfg: TrainConfig, n_folds: int) -> None:
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

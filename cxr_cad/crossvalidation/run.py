"""Patient-grouped, label-stratified K-fold cross-validation: in one process
(:func:`run_crossval`), or one fold per job (:func:`run_crossval_fold`) pooled afterwards by
:func:`merge_crossval` into exactly the same numbers. Binary and multi-label (``data.task:
multilabel``) recipes take the same path; what differs is their
:class:`~cxr_cad.crossvalidation.task.CrossvalTask` (:func:`crossval_task`).

For each fold ``k`` a model is trained with :func:`cxr_cad.training.trainer.train_model` on the
other K-1 folds (which it splits again by patient into training and an inner validation
set: best epoch, early stopping and the decision threshold are chosen there, never on fold
``k``), then fold ``k`` is scored with that model. Every image is scored exactly once, by
the one model that never saw its patient.

Layout of ``RUN_DIR``::

    crossval.json          settings, fingerprint, manifest hash, the patient-overlap check
    folds.csv              row, sop_instance_uid, patient (group) id, label, fold
    manifest.csv           a copy of the manifest (absolute paths): ``--merge RUN`` needs no other
    cache/                 decoded + resized images, shared by every fold and the final model
                           (a fold run as its own job caches under cache/fold-<k>/)
    folds/<k>/             the fold's training run folder (train_model layout: model.pt,
                           train_log.csv, checkpoint.pt, result.json, ...) plus
                           heldout_predictions.csv, heldout.json and fold.json (written last)
    oof_predictions.csv    one row per manifest row: fold, label, y_true, probability,
                           threshold (the fold's own), decision
    cv_metrics.json        per-fold metrics, mean +/- SD across folds, pooled out-of-fold
                           metrics, ROC data, best epochs (see cxr_cad.metrics.crossval_summary)
    roc_curves.csv         per-fold, mean (+/- 1 SD band) and pooled ROC curves
    final/                 with ``final``: a training run on all images, or the fold ensemble

Reruns resume: a finished fold is not retrained (its ``result.json`` exists), an interrupted
fold continues from its checkpoint, held-out predictions made by the same bundle are reused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxr_cad.config import TrainConfig, config_diff
from cxr_cad.crossvalidation.binary import BINARY
from cxr_cad.crossvalidation.cohort import Cohort, fold_config
from cxr_cad.crossvalidation.final import FINAL_DIR, ensemble_final, final_epochs
from cxr_cad.crossvalidation.fold import run_fold
from cxr_cad.crossvalidation.folds import (
    CV_RUN_FILE,
    FOLDS_FILE,
    HELDOUT_FILE,
    HELDOUT_META,
    fold_check,
    predict_heldout,
)
from cxr_cad.crossvalidation.merge import pool_folds
from cxr_cad.crossvalidation.multilabel import MULTILABEL
from cxr_cad.crossvalidation.result import (
    FOLD_DONE_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    OOF_FILE,
    ROC_FILE,
    CrossvalResult,
    FoldResult,
)
from cxr_cad.crossvalidation.runfolder import (
    check_run_folder,
    folds_table,
    read_run_record,
    run_record,
    stored_config,
    stored_manifest,
    write_run_folder,
)
from cxr_cad.crossvalidation.task import CrossvalTask
from cxr_cad.errors import ConfigError, UsageError

__all__ = [
    "CV_RUN_FILE",
    "FINAL_DIR",
    "FOLDS_FILE",
    "FOLD_DONE_FILE",
    "HELDOUT_FILE",
    "HELDOUT_META",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "OOF_FILE",
    "ROC_FILE",
    "CrossvalResult",
    "FoldResult",
    "ensemble_final",
    "final_epochs",
    "fold_check",
    "merge_crossval",
    "predict_heldout",
    "run_crossval",
    "run_crossval_fold",
]

log = logging.getLogger(__name__)


def crossval_task(cfg: TrainConfig, final: bool | str = False) -> CrossvalTask:
    """The task of ``cfg`` (binary, or multi-label with ``data.task: multilabel``); UsageError
    when it has no ``final`` model of that kind (checked before any fold trains)."""
    task: CrossvalTask = MULTILABEL if cfg.data.task == "multilabel" else BINARY
    if final == "ensemble" and not task.ensemble:
        raise UsageError(f"--final ensemble is not available for {cfg.data.task} models yet; use --final retrain")
    return task


@dataclass
class _Setup:
    """A cross-validation checked and its run folder ready: what every entry point starts from."""

    task: CrossvalTask
    out_dir: Path
    cfg: TrainConfig
    cohort: Cohort
    fold_cfg: TrainConfig
    cache_dir: Path


def _setup(
    manifest_df: pd.DataFrame,
    out_dir: str | Path,
    cfg: TrainConfig,
    n_folds: int,
    init: str | None,
    manifest_name: str | None,
    cache_dir: Path | None = None,
    final: bool | str = False,
) -> _Setup:
    """Check the cohort, that ``out_dir`` may be resumed and every fold is big enough (before
    anything is written or trained), then create the run folder's shared files."""
    task = crossval_task(cfg, final)
    if init is not None:
        cfg = cfg.replace(model=cfg.model.replace(init=str(init)))
    out = Path(out_dir).resolve()
    cohort = task.build_cohort(manifest_df, cfg, n_folds)
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else (cache_dir or out / "cache")
    fold_cfg = fold_config(cfg, cache)
    record, table = run_record(cohort, cfg, n_folds, manifest_name), folds_table(cohort, cfg)
    check_run_folder(out, record, table)
    task.fold_guard(cohort, fold_cfg, n_folds)
    write_run_folder(out, record, table, manifest_df)
    log.info(
        "%d-fold cross-validation of %d images from %d patients, grouped by %s; no patient in two folds",
        n_folds,
        len(cohort.df),
        cohort.check["n_patients"],
        cfg.data.group_col,
    )
    if fold_cfg.data.val_fraction == 0:
        log.warning(
            "data.val_fraction is 0: folds train without inner validation (no early stopping; "
            "threshold.value %.3f is used)",
            cfg.threshold.value,
        )
    return _Setup(task, out, cfg, cohort, fold_cfg, cache)


def run_crossval(
    manifest_df: pd.DataFrame,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    n_folds: int = 5,
    init: str | None = None,
    final: bool | str = False,
    n_bootstrap: int = 2000,
    manifest_name: str | None = None,
) -> CrossvalResult:
    """K-fold cross-validation grouped by patient and stratified by label, in this process.

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
        manifest_name: the manifest file's name (recorded; the report names the cohort by it).

    Raises:
        ManifestError: missing/unknown labels, too few patients for K folds, a fold whose inner
            split is too small to select a model or a threshold (unless ``cfg.force``), unreadable images.
        TrainingFailed: a fold's training diverged or never beat chance (unless ``cfg.force``).
        ConfigError: ``out_dir`` holds a cross-validation with other settings or data.
        OutputError, WeightsError, BundleError: as :func:`train_model`.
    """
    s = _setup(manifest_df, out_dir, cfg, n_folds, init, manifest_name, final=final)
    statuses = [
        run_fold(s.task, k, s.out_dir, s.cohort, s.cfg, s.fold_cfg, s.cache_dir, n_folds)["status"]
        for k in range(int(n_folds))
    ]
    return pool_folds(
        s.task,
        s.out_dir,
        s.cohort,
        s.cfg,
        n_folds,
        cache_dir=s.cache_dir,
        final=final,
        n_bootstrap=n_bootstrap,
        statuses=statuses,
        manifest_name=manifest_name,
    )


def run_crossval_fold(
    manifest_df: pd.DataFrame,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    fold: int,
    n_folds: int = 5,
    init: str | None = None,
    manifest_name: str | None = None,
) -> FoldResult:
    """Fold ``fold`` of the cross-validation :func:`run_crossval` would run, as its own job.

    Any number of fold jobs may share ``out_dir`` at once (their own ``folds/<k>/``, their own
    image cache ``cache/fold-<k>/`` unless ``cfg.data.cache_dir`` is set, shared files written
    atomically); :func:`merge_crossval` pools them. Raises ConfigError for a fold outside
    ``0..n_folds-1``, otherwise as :func:`run_crossval`.
    """
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < int(n_folds):
        raise ConfigError([f"fold (--fold) must be one of 0..{int(n_folds) - 1}, not {fold}"])
    out = Path(out_dir).resolve()
    s = _setup(manifest_df, out, cfg, n_folds, init, manifest_name, cache_dir=out / "cache" / f"fold-{fold}")
    record = run_fold(s.task, fold, s.out_dir, s.cohort, s.cfg, s.fold_cfg, s.cache_dir, n_folds)
    return FoldResult(out_dir=s.out_dir, fold=fold, n_folds=int(n_folds), status=record["status"], record=record)


def merge_crossval(
    out_dir: str | Path,
    manifest_df: pd.DataFrame | None = None,
    cfg: TrainConfig | None = None,
    *,
    n_folds: int | None = None,
    final: bool | str = False,
    n_bootstrap: int = 2000,
    force: bool = False,
) -> CrossvalResult:
    """Pool the folds finished in ``out_dir`` (by :func:`run_crossval_fold` jobs, or an
    interrupted :func:`run_crossval`) into the results :func:`run_crossval` writes.

    ``manifest_df`` / ``cfg``: None = the copies stored in ``out_dir`` (``manifest.csv``,
    ``crossval.json``); given, they must be the ones the folds ran with, as must ``n_folds``
    (None = the stored number). ``force``: keep a
    final model the training guards refuse (as ``cfg.force``).

    Raises:
        ConfigError: no cross-validation in ``out_dir``; ``cfg`` or ``manifest_df`` differ from
            the stored ones; folds missing, unfinished or run with other settings (named).
        As :func:`run_crossval` for the final model.
    """
    out = Path(out_dir).resolve()
    record = read_run_record(out)
    stored = stored_config(record, out)
    if cfg is None:
        cfg = stored
    elif cfg.fingerprint() != record.get("fingerprint"):
        diff = "; ".join(config_diff(stored, cfg)) or "another fingerprint"
        raise ConfigError(
            [f"the settings differ from those the folds ran with ({diff}); merge with the same settings"],
            source=str(out / CV_RUN_FILE),
        )
    if force and not cfg.force:
        cfg = cfg.replace(force=True)  # not part of the fingerprint
    if n_folds is not None and int(n_folds) != int(record["n_folds"]):
        raise ConfigError(
            [f"{out} holds a {record['n_folds']}-fold cross-validation, not {n_folds} folds"], source=str(out)
        )
    n_folds = int(record["n_folds"])
    task = crossval_task(cfg, final)
    if manifest_df is None:
        manifest_df = stored_manifest(out, cfg)
    cohort = task.build_cohort(manifest_df, cfg, n_folds)
    check_run_folder(out, run_record(cohort, cfg, n_folds, None), folds_table(cohort, cfg))
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out / "cache"
    return pool_folds(
        task,
        out,
        cohort,
        cfg,
        n_folds,
        cache_dir=cache,
        final=final,
        n_bootstrap=n_bootstrap,
        manifest_name=record.get("manifest_name"),
    )

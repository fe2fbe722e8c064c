"""One fold of a cross-validation: train on the other folds, score the held-out fold, and
write ``folds/<k>/fold.json`` last (atomically) as the proof the fold is finished.

A fold touches nothing outside ``folds/<k>/`` (and its decoded-image cache), so the K folds
can run as K parallel jobs on one shared run folder; the merge pools them
(:mod:`cxr_cad.crossvalidation.merge`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from cxr_cad.config import TrainConfig
from cxr_cad.crossvalidation.cohort import Cohort
from cxr_cad.crossvalidation.result import FOLD_DONE_FILE, fold_dir
from cxr_cad.crossvalidation.task import CrossvalTask
from cxr_cad.metrics import jsonable
from cxr_cad.training import rundir

log = logging.getLogger(__name__)


def fold_status(path: Path) -> str:
    """ "finished before" (a bundle exists), "resumed" (a checkpoint exists) or "trained"."""
    if (path / rundir.RESULT_FILE).exists():
        return "finished before"
    return "resumed" if (path / "checkpoint.pt").exists() else "trained"


def run_fold(
    task: CrossvalTask,
    k: int,
    out_dir: Path,
    cohort: Cohort,
    cfg: TrainConfig,
    fold_cfg: TrainConfig,
    cache_dir: Path,
    n_folds: int,
) -> dict[str, Any]:
    """Train (or resume) fold ``k``, score its held-out rows, write ``fold.json``; returns it
    with ``status`` what this call did (the file keeps how the fold was trained). ``task``
    trains and scores (binary or multi-label: :mod:`cxr_cad.crossvalidation.task`).

    ``cfg`` is the cross-validation's config (its fingerprint is recorded), ``fold_cfg`` the
    config each fold trains with (:func:`~cxr_cad.crossvalidation.cohort.fold_config`).
    Raises as :func:`~cxr_cad.training.trainer.train_model`.
    """
    df, folds = cohort.df, cohort.folds
    where = fold_dir(out_dir, k)
    test = folds == k
    status = fold_status(where)
    done = where / FOLD_DONE_FILE
    trained_as = status  # fold.json keeps how the fold was trained, not "finished before"
    if status == "finished before" and done.is_file():
        trained_as = rundir.read_json(done).get("status", status)
    if status == "finished before":
        log.info("fold %d (%d of %d): already trained; not retrained", k, k + 1, n_folds)
    else:
        done.unlink(missing_ok=True)  # a fold being (re)trained is not finished
        n_train, n_test = int((~test).sum()), int(test.sum())
        log.info("fold %d (%d of %d): training on %d images, %d held out", k, k + 1, n_folds, n_train, n_test)
    result = task.train_fold(df[~test].reset_index(drop=True), where, fold_cfg)
    test_df = df[test].reset_index(drop=True)
    facts = task.score_fold(k, where, result, test_df, cohort.labels[test], fold_cfg, cache_dir)
    record = {
        "fold": int(k),
        "n_folds": int(n_folds),
        "fingerprint": cfg.fingerprint(),
        "manifest_hash": cohort.data_hash,
        "status": trained_as,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "inner_val_auc": result.val_auc,
        "threshold": result.threshold,
        "threshold_method": result.threshold_method,
        "inner_split": result.split,
        "n_heldout": len(test_df),
        **facts,  # the bundle's sha256 (the merge checks the held-out predictions against it), ...
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    rundir.write_json(done, jsonable(record))  # NaN (no inner validation) as null
    return {**record, "status": status}

"""Pool the finished folds of a cross-validation into its results: ``oof_predictions.csv``,
``cv_metrics.json``, ``roc_curves.csv`` (binary) and, when asked, the final model; the
task (:class:`~cxr_cad.crossvalidation.task.CrossvalTask`: binary or multi-label) computes
the table, the metrics and the final model, this module checks and reads the folds.

The one-process run and ``crossval --merge`` both end here and both read every fold from its
files (``folds/<k>/fold.json``, ``heldout_predictions.csv``, ``heldout.json``), so K fold jobs
plus a merge give exactly the numbers of one process. The merge refuses (ConfigError, exit 2,
naming the folds) when a fold is missing or unfinished, or was run with another config,
manifest or number of folds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad.config import TrainConfig
from cxr_cad.crossvalidation.cohort import Cohort
from cxr_cad.crossvalidation.folds import HELDOUT_FILE, HELDOUT_META
from cxr_cad.crossvalidation.result import FOLD_DONE_FILE, METRICS_FILE, OOF_FILE, CrossvalResult, fold_dir
from cxr_cad.crossvalidation.task import CrossvalTask, Pooling
from cxr_cad.errors import ConfigError
from cxr_cad.manifest import write_table
from cxr_cad.metrics import jsonable
from cxr_cad.training import rundir

log = logging.getLogger(__name__)


def _names(folds: list[int]) -> str:
    return ", ".join(str(k) for k in folds)


def read_folds(out_dir: Path, cohort: Cohort, cfg: TrainConfig, n_folds: int) -> list[dict[str, Any]]:
    """Every fold's ``fold.json``, checked against this cross-validation.

    Raises ConfigError naming the folds that are missing (or unfinished), that were run with
    another config, manifest or K, or whose held-out predictions are not their bundle's."""
    fingerprint, data_hash = cfg.fingerprint(), cohort.data_hash
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


def read_heldout(out_dir: Path, k: int, rows: np.ndarray) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Fold ``k``'s held-out predictions (checked to be the rows ``rows``, in that order) and
    ``heldout.json``; ConfigError when they are not that fold's rows."""
    where = fold_dir(out_dir, k)
    # the one-process run and the merge both read this file, so they agree to the last bit
    table = pd.read_csv(where / HELDOUT_FILE, dtype={"sop_instance_uid": str}, keep_default_na=False)
    if table["row"].tolist() != rows.tolist():
        raise ConfigError(
            [f"fold {k}'s held-out predictions ({where / HELDOUT_FILE}) are not the rows of fold {k}; rerun fold {k}"],
            source=str(out_dir),
        )
    return table, rundir.read_json(where / HELDOUT_META)


def pool_folds(
    task: CrossvalTask,
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
    """Pool the finished folds of ``out_dir`` (see the module docstring) and write the results;
    ``task`` computes the task's table, metrics and final model.

    ``statuses``: what this invocation did to each fold (the one-process run); None = the
    status each fold job recorded. Raises ConfigError (:func:`read_folds`), and as the final
    model's training."""
    records = read_folds(out_dir, cohort, cfg, n_folds)
    fold_info = [{key: r.get(key) for key in task.fold_info_keys} for r in records]
    if statuses is not None:
        for info, status in zip(fold_info, statuses):
            info["status"] = status
    p = Pooling(out_dir, cohort, cfg, int(n_folds), cache_dir, fold_info, n_bootstrap)
    oof = task.oof_table(p)
    write_table(oof, out_dir / OOF_FILE)
    metrics = task.summarise(p, oof)
    final_bundle = task.final(p, oof, metrics, final)
    rundir.write_json(out_dir / METRICS_FILE, jsonable(metrics))
    task.finish(p, metrics)
    return CrossvalResult(
        out_dir=out_dir,
        n_folds=int(n_folds),
        oof=oof,
        metrics=metrics,
        fold_status=[str(f["status"]) for f in fold_info],
        final_bundle=final_bundle,
        manifest_name=manifest_name,
    )

"""The cross-validation run folder: created (or checked for resuming) by every job, one-process
or one-fold, and read back by the merge.

Every job may start at the same time as the others (a Slurm array, a Kubernetes Job): the
shared files (``crossval.json``, ``folds.csv``, ``manifest.csv``) are the same whichever job
writes them, each is written atomically (temporary file + ``os.replace``) and only when
missing, and a job that finds them written with other settings or data refuses (ConfigError).
Everything else a fold writes is under its own ``folds/<k>/``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_cad.config import TrainConfig
from cxr_cad.crossvalidation.cohort import Cohort
from cxr_cad.crossvalidation.folds import CV_RUN_FILE, FOLDS_FILE, check_rerun, check_stored_folds
from cxr_cad.crossvalidation.result import MANIFEST_FILE
from cxr_cad.errors import ConfigError, ManifestError, OutputError
from cxr_cad.manifest import read_manifest, write_manifest, write_table
from cxr_cad.training import rundir

log = logging.getLogger(__name__)


def run_record(cohort: Cohort, cfg: TrainConfig, n_folds: int, manifest_name: str | None) -> dict[str, Any]:
    """What ``crossval.json`` holds (the keys :func:`check_rerun` compares, and provenance)."""
    data = cfg.data
    return {
        **cohort.extra,
        "n_folds": int(n_folds),
        "fingerprint": cfg.fingerprint(),
        "manifest_hash": cohort.data_hash,
        "group_col": data.group_col,
        "label_col": data.label_col,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "fold_check": cohort.check,
        "n_images": len(cohort.df),
        "manifest_name": manifest_name,
        "versions": rundir.package_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def folds_table(cohort: Cohort, cfg: TrainConfig) -> pd.DataFrame:
    """``folds.csv``: row, sop_instance_uid, group id, label, fold."""
    data, df = cfg.data, cohort.df
    return pd.DataFrame(
        {
            "row": df["row"],
            "sop_instance_uid": df["sop_instance_uid"].astype(str),
            data.group_col: df[data.group_col].astype(str),
            "label": df[data.label_col].astype(str),
            "fold": cohort.folds,
        }
    )


def check_run_folder(out_dir: Path, record: dict[str, Any], table: pd.DataFrame) -> None:
    """ConfigError (exit 2) when ``out_dir`` holds a cross-validation with other settings or data."""
    check_rerun(out_dir, record)
    check_stored_folds(out_dir, table)


def write_run_folder(out_dir: Path, record: dict[str, Any], table: pd.DataFrame, manifest_df: pd.DataFrame) -> None:
    """Create ``out_dir`` and write the shared files that are missing (each atomically)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run folder {out_dir}: {exc.strerror or exc}") from exc
    if not (out_dir / FOLDS_FILE).exists():
        write_table(table, out_dir / FOLDS_FILE)
    if not (out_dir / MANIFEST_FILE).exists():
        try:
            write_manifest(manifest_df, out_dir / MANIFEST_FILE, relative=False)
        except ManifestError as exc:  # an API caller's table that is not a manifest: merge then needs one
            log.warning("no copy of the manifest in %s (%s); `--merge` will need --manifest", out_dir, exc)
    if not (out_dir / CV_RUN_FILE).exists():
        rundir.write_json(out_dir / CV_RUN_FILE, record)


def read_run_record(out_dir: Path) -> dict[str, Any]:
    """``crossval.json`` of ``out_dir``; ConfigError (exit 2) when there is none."""
    path = Path(out_dir) / CV_RUN_FILE
    if not path.is_file():
        raise ConfigError(
            [f"{out_dir} holds no cross-validation ({CV_RUN_FILE} is missing); run the folds first"],
            source=str(out_dir),
        )
    return rundir.read_json(path)


def stored_config(record: dict[str, Any], out_dir: Path) -> TrainConfig:
    """The training config a cross-validation was started with (``crossval.json``)."""
    return TrainConfig.from_dict(record.get("config"), source=str(Path(out_dir) / CV_RUN_FILE))


def stored_manifest(out_dir: Path, cfg: TrainConfig) -> pd.DataFrame:
    """The copy of the manifest the cross-validation was started with (``manifest.csv``)."""
    path = Path(out_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ConfigError(
            [f"{out_dir} holds no copy of the manifest ({MANIFEST_FILE}); pass the manifest (--manifest)"],
            source=str(out_dir),
        )
    # multi-label: `label` joins the findings; read_manifest checks the finding_<F> columns instead
    classes = None if cfg.data.task == "multilabel" else cfg.data.classes
    return read_manifest(path, require_labels=True, classes=classes)

"""What a cross-validation leaves in its run folder: the file names, :class:`CrossvalResult`
(the pooled run) and :class:`FoldResult` (one fold run as its own job)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

OOF_FILE = "oof_predictions.csv"
METRICS_FILE = "cv_metrics.json"
ROC_FILE = "roc_curves.csv"
#: A copy of the cross-validated manifest, so ``crossval --merge RUN`` needs nothing else.
MANIFEST_FILE = "manifest.csv"
#: ``folds/<k>/fold.json``: written last (atomically) by a finished fold; the merge reads it.
FOLD_DONE_FILE = "fold.json"
FOLDS_DIR = "folds"


def fold_dir(out_dir: Path, k: int) -> Path:
    """``RUN/folds/<k>``: fold ``k``'s training run folder (only that fold's job writes there)."""
    return Path(out_dir) / FOLDS_DIR / str(int(k))


@dataclass
class CrossvalResult:
    """What :func:`~cxr_cad.crossvalidation.run.run_crossval` (or the merge) produced."""

    out_dir: Path
    n_folds: int
    oof: pd.DataFrame  # oof_predictions.csv
    metrics: dict  # cv_metrics.json (NaN as float here, null in the file)
    fold_status: list[str]  # per fold: "trained", "resumed" or "finished before"
    final_bundle: Path | None
    manifest_name: str | None = None  # the manifest file's name, when it came from a file


@dataclass
class FoldResult:
    """One fold run as its own job (:func:`~cxr_cad.crossvalidation.run.run_crossval_fold`)."""

    out_dir: Path  # the cross-validation run folder
    fold: int
    n_folds: int
    status: str  # "trained", "resumed" or "finished before"
    record: dict[str, Any] = field(default_factory=dict)  # folds/<k>/fold.json

"""What differs between a binary and a multi-label cross-validation, as one strategy object.

The fold-job and merge machinery (:mod:`~cxr_cad.crossvalidation.run`,
:mod:`~cxr_cad.crossvalidation.fold`, :mod:`~cxr_cad.crossvalidation.merge`) is written once
and calls a :class:`CrossvalTask` for the parts that depend on the task: the cohort and its
folds, a fold's training and held-out scoring, the out-of-fold table, the pooled metrics and
the final model. :class:`~cxr_cad.crossvalidation.binary.BinaryTask` and
:class:`~cxr_cad.crossvalidation.multilabel.MultilabelTask` implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from cxr_cad.config import TrainConfig
from cxr_cad.crossvalidation.cohort import Cohort
from cxr_cad.training.trainer import TrainResult


@dataclass
class Pooling:
    """The finished folds being pooled: what every pooling step of a task reads."""

    out_dir: Path
    cohort: Cohort
    cfg: TrainConfig
    n_folds: int
    cache_dir: Path
    fold_info: list[dict[str, Any]]  # per fold: the task's fold_info_keys of its fold.json
    n_bootstrap: int


class CrossvalTask(Protocol):
    """The task-specific steps of a cross-validation (see the module docstring)."""

    #: ``final="ensemble"`` is available (refused before any fold trains otherwise).
    ensemble: bool
    #: The per-fold facts copied from ``fold.json`` into ``cv_metrics.json``.
    fold_info_keys: tuple[str, ...]

    def build_cohort(self, manifest_df: pd.DataFrame, cfg: TrainConfig, n_folds: int) -> Cohort:
        """The checked manifest, its labels and the fold of every row (ManifestError, ConfigError)."""
        ...

    def fold_guard(self, cohort: Cohort, fold_cfg: TrainConfig, n_folds: int) -> None:
        """Refuse (ManifestError) folds too small to train, before any fold trains."""
        ...

    def train_fold(self, rows: pd.DataFrame, where: Path, fold_cfg: TrainConfig) -> TrainResult:
        """Train (or resume) one fold on ``rows`` (the other folds, with their ``row`` column)."""
        ...

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
        """Score fold ``k``'s held-out rows into ``where`` (``heldout_predictions.csv``,
        ``heldout.json``); returns the facts ``fold.json`` adds (at least ``bundle_sha256``)."""
        ...

    def oof_table(self, p: Pooling) -> pd.DataFrame:
        """``oof_predictions.csv``, read from every fold's held-out files."""
        ...

    def summarise(self, p: Pooling, oof: pd.DataFrame) -> dict[str, Any]:
        """``cv_metrics.json`` without the final model."""
        ...

    def final(self, p: Pooling, oof: pd.DataFrame, metrics: dict[str, Any], final: bool | str) -> Path | None:
        """The final model asked for by ``final`` (recorded under ``metrics["final"]``), or None."""
        ...

    def finish(self, p: Pooling, metrics: dict[str, Any]) -> None:
        """Files beside ``cv_metrics.json`` (binary: ``roc_curves.csv``) and the summary log line."""
        ...

"""What keeps a training run from keeping or saving a broken model (docs/train.md, "Guards").

* :func:`selection_better`: the best-epoch rule (``early_stopping.criterion``): validation
  AUC first, validation loss breaks ties (``auc_then_loss``, the default), or validation
  loss alone (``loss``). A saturated AUC (1.0 on a small validation split, reached while
  the loss is still high) cannot keep an early, badly calibrated epoch.
* :func:`cohort_problems`: a cohort too small to select a model or a threshold is refused
  before the network is built (:data:`MIN_VAL_PATIENTS_PER_CLASS`,
  :data:`MIN_TRAIN_IMAGES_PER_CLASS`).
* :func:`divergence`: a run whose loss is not finite, or whose validation AUC is no better
  than chance (<= 0.5) at every epoch, fails (:class:`TrainingFailed`, exit 1) without a
  bundle; ``failed.json`` in the run folder says why.
* :func:`parent_spec_problems`: fine-tuning a bundle at another input size or intensity
  standardisation than it was trained with is refused.

``force: true`` (``--force``) turns every refusal into a warning, recorded in the bundle
(``extra.training.forced``), ``result.json`` and the model card.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad.core.atomic import atomic_write_json
from cxr_cad.errors import CxrCadError

__all__ = [
    "FAILED_FILE",
    "MIN_CHANCE_VAL_IMAGES_PER_CLASS",
    "MIN_TRAIN_IMAGES_PER_CLASS",
    "MIN_VAL_PATIENTS_PER_CLASS",
    "TrainingFailed",
    "cohort_problems",
    "divergence",
    "parent_spec_problems",
    "selection_better",
    "write_failure",
]

log = logging.getLogger(__name__)

#: A validation split needs at least this many patients of every class: with fewer, the
#: validation AUC (model selection) and the Youden / sensitivity threshold are undefined.
MIN_VAL_PATIENTS_PER_CLASS = 1
#: Training needs at least this many images of every class (one image of a class is not a class).
MIN_TRAIN_IMAGES_PER_CLASS = 2
#: The chance guard needs at least this many validation images of every class: on fewer the
#: AUC takes a handful of values (1 + 1: only 0, 0.5 or 1) and a model that learnt a little
#: cannot be told from chance, so such a run is kept with a warning.
MIN_CHANCE_VAL_IMAGES_PER_CLASS = 5
#: The run folder file that says why a run failed (removed when the run later finishes).
FAILED_FILE = "failed.json"
#: Hint appended to every refusal.
FORCE_HINT = "--force (force: true) keeps such a model for experiments, recorded in the bundle and its model card"


class TrainingFailed(CxrCadError):
    """The run diverged or never beat chance: no bundle was written (exit 1)."""


def selection_better(
    auc: float, loss: float, best_auc: float, best_loss: float, *, criterion: str, min_delta: float
) -> bool:
    """True when an epoch with validation ``auc``/``loss`` replaces the best one so far.

    ``auc_then_loss``: a higher AUC (by more than ``min_delta``), or an AUC at least as high
    with a lower loss (so among epochs tied at a saturated AUC the lowest-loss one is kept).
    ``loss``: a lower loss by more than ``min_delta``. A NaN value never wins; the first
    finite epoch always does (``best_*`` start at -inf / +inf).
    """
    if criterion == "loss":
        return math.isfinite(loss) and loss < best_loss - min_delta
    if math.isnan(auc):
        return False
    if auc > best_auc + min_delta:
        return True
    return auc >= best_auc and math.isfinite(loss) and loss < best_loss


def _per_class(df: pd.DataFrame, label_col: str, group_col: str | None, classes: Sequence[str]) -> dict[str, int]:
    labels = df[label_col].astype(str).str.strip()
    if group_col is not None and group_col in df.columns:
        return {c: int(df.loc[labels == c, group_col].astype(str).nunique()) for c in classes}
    return {c: int((labels == c).sum()) for c in classes}


def cohort_problems(
    train_df: pd.DataFrame,
    val_df: pd.DataFrame | None,
    *,
    classes: Sequence[str],
    label_col: str,
    group_col: str,
    how: str,
) -> list[str]:
    """What makes these training/validation rows too small to select a model and a threshold
    (empty when they are big enough). Each problem names the counts and the minimum."""
    problems = []
    train_counts = _per_class(train_df, label_col, None, classes)
    short = {c: n for c, n in train_counts.items() if n < MIN_TRAIN_IMAGES_PER_CLASS}
    if short:
        problems.append(
            f"the training side ({how}) has {_counts(train_counts)} image(s) per class; training needs at "
            f"least {MIN_TRAIN_IMAGES_PER_CLASS} images of every class"
        )
    if val_df is not None:
        val_counts = _per_class(val_df, label_col, group_col, classes)
        if any(n < MIN_VAL_PATIENTS_PER_CLASS for n in val_counts.values()):
            problems.append(
                f"the validation side ({how}) has {_counts(val_counts)} patient(s) ({group_col}) per class, "
                f"{len(val_df)} image(s); selecting the best epoch (validation AUC) and the decision threshold "
                f"needs at least {MIN_VAL_PATIENTS_PER_CLASS} patient(s) of every class"
            )
    return problems


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{c} {n}" for c, n in counts.items())


def divergence(
    history: Sequence[dict[str, Any]], *, has_validation: bool, finished: bool, val_min_class: int | None = None
) -> str | None:
    """Why the epochs of ``history`` are a failed run, or None.

    A non-finite training or validation loss at any epoch fails at once; validation AUC
    <= 0.5 (or undefined) at every epoch fails once the run is ``finished`` (the last epoch
    ran or early stopping ended it) when the validation split has at least
    :data:`MIN_CHANCE_VAL_IMAGES_PER_CLASS` images of its smaller class (``val_min_class``;
    None = not known, checked), and is logged as a warning on a smaller split.
    """
    for rec in history:
        bad = [
            k
            for k in ("train_loss", "val_loss")
            if _nonfinite(rec.get(k), allow_nan=k == "val_loss" and not has_validation)
        ]
        if bad:
            values = ", ".join(f"{k} {rec.get(k)}" for k in bad)
            return (
                f"training diverged: epoch {rec['epoch']} has a non-finite loss ({values}); "
                "lower the learning rate (--lr) or check the images"
            )
    if finished and has_validation and history:
        aucs = [rec.get("val_auc") for rec in history]
        if all(a is None or not np.isfinite(a) or a <= 0.5 for a in aucs):
            shown = ", ".join("n/a" if a is None or not np.isfinite(a) else f"{a:.3f}" for a in aucs)
            if val_min_class is not None and val_min_class < MIN_CHANCE_VAL_IMAGES_PER_CLASS:
                log.warning(
                    "validation AUC <= 0.5 at every epoch (%s), on a validation split with %d image(s) of its "
                    "smaller class: too few to call the model no better than chance (%d needed); kept",
                    shown,
                    val_min_class,
                    MIN_CHANCE_VAL_IMAGES_PER_CLASS,
                )
                return None
            return (
                f"the model is no better than chance: validation AUC <= 0.5 at every one of {len(aucs)} epoch(s) "
                f"({shown}); lower the learning rate (--lr), train longer, or check the labels"
            )
    return None


def _nonfinite(value: Any, *, allow_nan: bool) -> bool:
    """True for inf/-inf, and for NaN unless ``allow_nan`` (validation loss is NaN without validation)."""
    if value is None:
        return False
    v = float(value)
    return math.isinf(v) or (math.isnan(v) and not allow_nan)


def parent_spec_problems(parent: dict[str, Any], child: dict[str, Any]) -> list[str]:
    """The input settings (transform spec fields) in which a fine-tuned model would differ
    from its parent bundle: ``key: parent value -> this run's``."""
    keys = sorted(k for k in set(parent) | set(child) if k not in ("in_channels", "version"))
    return [f"{k}: {parent.get(k)!r} -> {child.get(k)!r}" for k in keys if parent.get(k) != child.get(k)]


def write_failure(out_dir: Path, reason: str, *, history: Sequence[dict[str, Any]]) -> Path:
    """``failed.json`` in ``out_dir``: the reason and the epochs run (so the run folder says why)."""
    path = Path(out_dir) / FAILED_FILE
    atomic_write_json(
        path,
        {
            "reason": reason,
            "bundle_written": False,
            "epochs": [
                {k: _plain(rec.get(k)) for k in ("epoch", "train_loss", "val_loss", "val_auc", "lr")} for rec in history
            ],
            "hint": FORCE_HINT,
        },
    )
    return path


def _plain(value: Any) -> Any:
    """A JSON value: a non-finite float as its text (``"nan"``, ``"inf"``), so the file stays valid JSON."""
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return str(float(value))
    return value.item() if isinstance(value, np.generic) else value

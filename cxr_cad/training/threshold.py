"""The decision threshold of a run, chosen on the best epoch's validation predictions
(``threshold`` section: Youden, target sensitivity, midpoint, calibrated or fixed), and the record of
what it was chosen on.

The policies themselves are pure functions in :mod:`cxr_cad.metrics` (``youden_choice``,
:func:`~cxr_cad.metrics.sensitivity_policy`, :func:`~cxr_cad.metrics.calibrated_policy`); this
module picks one from the config. A ``calibrated`` threshold comes with the fitted calibration
(``detail["calibration"]``), stored in the bundle's ``threshold_selection.params`` and applied
by ``cxr-cad predict`` to every probability (docs/adaptation.md#threshold-policies).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr_cad.config import ThresholdConfig, TrainConfig
from cxr_cad.manifest import manifest_hash as compute_manifest_hash
from cxr_cad.metrics import (
    calibrated_policy,
    midpoint_policy,
    sensitivity_policy,
    small_class_warning,
    youden_choice,
)
from cxr_cad.training.data import label_indices
from cxr_cad.training.loop import EvalOutput

__all__ = [
    "PARAM_KEYS",
    "choose_threshold",
    "selection_params",
    "threshold_chosen_on",
    "threshold_on_validation",
    "val_table",
]

#: What of :func:`choose_threshold`'s ``detail`` goes into the bundle's ``threshold_selection.params``.
PARAM_KEYS = (
    "target",
    "tie_range",
    "n_tied",
    "calibration",
    "cutoff",
    "raw_threshold",
    "achieved_sensitivity",
    "sensitivity_ci",
    "achieved_specificity",
    "specificity_ci",
    "class_medians",
)

log = logging.getLogger(__name__)


def choose_threshold(y_true: np.ndarray, y_score: np.ndarray, cfg: ThresholdConfig) -> tuple[float, str, dict]:
    """The decision threshold on validation predictions: (threshold, method, detail).

    ``method`` is what goes into the bundle: ``youden``, ``sensitivity``, ``midpoint``,
    ``calibrated`` or ``fixed``; ``detail`` records the inputs (counts ``n``, ``n_positive``, ``n_negative``,
    ``target`` sensitivity with the ``achieved_sensitivity`` and its Wilson ``sensitivity_ci``,
    the fitted ``calibration`` and ``cutoff``, Youden's ``tie_range``/``n_tied``, a fallback
    ``reason``, and ``warning``
    when either class has fewer than :data:`cxr_cad.metrics.MIN_CLASS_COUNT` images, which
    is also logged). When validation has a single class the configured ``value`` is used
    with method ``fixed``.
    """
    n_pos = int(np.sum(y_true))
    detail: dict = {
        "n": int(len(y_true)),
        "n_positive": n_pos,
        "n_negative": int(len(y_true)) - n_pos,
        "configured": cfg.method,
    }
    if cfg.method == "fixed":
        return float(cfg.value), "fixed", detail
    warning = small_class_warning(n_pos, detail["n_negative"])
    if warning:
        detail["warning"] = warning
        log.warning("decision threshold: %s", warning)
    if n_pos == 0 or n_pos == len(y_true):
        detail["reason"] = "validation data has one class; threshold.value used"
        log.warning("validation data has one class: decision threshold falls back to %.3f", cfg.value)
        return float(cfg.value), "fixed", detail
    if cfg.method == "youden":
        choice = youden_choice(y_true, y_score)
        assert choice is not None  # both classes are present (checked above)
        thr, method = choice.threshold, "youden"
        detail.update(tie_range=[choice.tie_low, choice.tie_high], n_tied=choice.n_tied, j=choice.j)
    elif cfg.method == "sensitivity":
        record = sensitivity_policy(y_true, y_score, cfg.target_sensitivity)
        thr, method = record.pop("threshold"), "sensitivity"
        detail.update(record)
    elif cfg.method == "midpoint":
        record = midpoint_policy(y_true, y_score)
        thr, method = record.pop("threshold"), "midpoint"
        detail.update(record)
    else:  # calibrated
        try:
            record = calibrated_policy(y_true, y_score, kind=cfg.calibration, cutoff=cfg.cutoff)
        except ValueError as exc:  # e.g. scores that do not rank the classes: no monotone calibration
            detail["reason"] = f"calibration failed ({exc}); threshold.value used"
            log.warning("decision threshold: %s", detail["reason"])
            return float(cfg.value), "fixed", detail
        thr, method = record.pop("threshold"), "calibrated"
        detail.update(record, cutoff=cfg.cutoff)
    if not math.isfinite(thr):
        detail["reason"] = "threshold undefined; threshold.value used"
        return float(cfg.value), "fixed", detail
    return float(thr), method, detail


def selection_params(method: str, threshold: float, detail: dict[str, Any]) -> dict[str, Any]:
    """The bundle's ``threshold_selection.params`` of a :func:`choose_threshold` result."""
    if method == "fixed":
        return {"value": float(threshold)}
    return {k: detail[k] for k in PARAM_KEYS if k in detail}


def val_table(val_df: pd.DataFrame, out: EvalOutput, cfg: TrainConfig, pos: int) -> pd.DataFrame:
    """``val_predictions.csv``: identity columns, label, y_true and the positive probability."""
    y_true, score = out.positive(pos)
    table = pd.DataFrame(
        {
            c: val_df[c].astype(str).to_numpy()
            for c in ("sop_instance_uid", cfg.data.group_col, "path")
            if c in val_df.columns
        }
    )
    table["label"] = val_df[cfg.data.label_col].astype(str).to_numpy()
    table["y_true"] = y_true
    table["probability"] = score
    return table


def threshold_on_validation(
    cfg: TrainConfig, val_df: pd.DataFrame | None, best_probs: torch.Tensor | None, best_epoch: int | None, pos: int
) -> tuple[float, str, dict[str, Any], pd.DataFrame | None]:
    """(threshold, method, detail, validation table) from the best epoch's validation
    probabilities ``best_probs`` (``cfg.threshold.value``, method ``fixed``, without them)."""
    table = None
    threshold, method = cfg.threshold.value, "fixed"
    detail: dict[str, Any] = {"reason": "no validation data"}
    if val_df is not None and best_probs is not None:
        out = EvalOutput(
            probabilities=best_probs.numpy(),
            labels=label_indices(val_df, cfg.data.classes, cfg.data.label_col),
            loss=float("nan"),
        )
        table = val_table(val_df, out, cfg, pos)
        threshold, method, detail = choose_threshold(
            table["y_true"].to_numpy(), table["probability"].to_numpy(), cfg.threshold
        )
    detail.update(best_epoch=best_epoch, n_val=0 if val_df is None else len(val_df))
    return threshold, method, detail, table


def threshold_chosen_on(
    val_df: pd.DataFrame | None, how: str, best_epoch: int | None, detail: dict[str, Any]
) -> dict[str, Any] | None:
    """The bundle's ``threshold_chosen_on``: the validation rows (None without validation);
    ``how``: how they were chosen, ``detail``: :func:`choose_threshold`'s."""
    if val_df is None:
        return None
    chosen_on = {
        "manifest_hash": compute_manifest_hash(val_df),
        "n": len(val_df),
        "n_positive": detail.get("n_positive"),
        "n_negative": detail.get("n_negative"),
        "description": f"validation split ({how}), best epoch {best_epoch}",
    }
    if "warning" in detail:
        chosen_on["warning"] = detail["warning"]
    return chosen_on

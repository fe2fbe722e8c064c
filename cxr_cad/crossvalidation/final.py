"""The final model of a cross-validation (``final/model.pt``): the K fold models as one
ensemble bundle (:func:`ensemble_final`), or one more training run on every image for the
median best epoch (:func:`train_final`); either gets the pooled out-of-fold Youden threshold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from cxr_cad.config import ThresholdConfig, TrainConfig
from cxr_cad.errors import OutputError
from cxr_cad.manifest import manifest_hash
from cxr_cad.model import ProbabilityAverage, load_bundle, save_bundle, unwrap_model
from cxr_cad.modelcard import write_card_for_bundle
from cxr_cad.training import rundir
from cxr_cad.training.threshold import choose_threshold, selection_params
from cxr_cad.training.trainer import train_model

if TYPE_CHECKING:
    from cxr_cad.model import Bundle

log = logging.getLogger(__name__)

FINAL_DIR = "final"


@dataclass(frozen=True)
class PooledThreshold:
    """The final model's threshold: the configured policy (``threshold`` section) applied to the
    pooled out-of-fold predictions, else (one class, undefined) the mean of the folds' thresholds."""

    threshold: float
    method: str
    params: dict[str, Any]


def pooled_threshold(
    y_true: np.ndarray, probability: np.ndarray, policy: ThresholdConfig, fold_thresholds: list[float]
) -> PooledThreshold:
    """:class:`PooledThreshold` of the out-of-fold table. The out-of-fold probabilities come from
    several fold models, so a ``calibrated`` policy (one calibration for one model) falls back to
    Youden's J here, as ``cxr-cad adapt`` does for a refitted head."""
    if policy.method == "calibrated":
        policy = policy.replace(method="youden")
    if policy.method != "fixed":
        thr, method, detail = choose_threshold(np.asarray(y_true), np.asarray(probability), policy)
        if method != "fixed" and math.isfinite(thr):
            return PooledThreshold(float(thr), method, selection_params(method, thr, detail))
    mean = float(np.mean(fold_thresholds)) if policy.method != "fixed" else float(policy.value)
    return PooledThreshold(mean, "fixed", {"value": mean})


def _chosen_on(df: pd.DataFrame, n_folds: int) -> dict[str, Any]:
    """The final bundle's ``threshold_chosen_on``: the pooled out-of-fold predictions."""
    return {
        "manifest_hash": manifest_hash(df),
        "n": len(df),
        "description": f"pooled out-of-fold predictions of {n_folds}-fold patient-grouped "
        "cross-validation (crossval/oof_predictions.csv)",
    }


def _record(bundle: Path, threshold: float, method: str, fold_thresholds: list[float], **more: Any) -> dict[str, Any]:
    """What ``cv_metrics.json`` records under ``final``."""
    return {
        "bundle": str(bundle),
        **more,
        "threshold": float(threshold),
        "threshold_method": f"pooled out-of-fold {method}" if method != "fixed" else "mean of fold thresholds",
        "fold_threshold_mean": float(np.mean(fold_thresholds)),
    }


def _members(bundles: list[Bundle]) -> tuple[list[torch.nn.Module], bool]:
    """The networks of the fold bundles (a TTA bundle's members, with its hflip) for one ensemble.

    Raises OutputError when the fold bundles differ in classes or transform spec."""
    first = bundles[0]
    members: list[torch.nn.Module] = []
    hflip = False
    for b in bundles:
        net = unwrap_model(b.model)
        if isinstance(net, ProbabilityAverage):
            members += list(net.members)
            hflip = hflip or net.hflip
        else:
            members.append(net)
        if b.classes != first.classes or b.transform_spec != first.transform_spec:
            raise OutputError(
                f"fold bundle {b.path} differs from {first.path} in classes or transform spec; "
                "they cannot form one ensemble"
            )
    return members, hflip


def ensemble_final(
    df: pd.DataFrame, out_dir: Path, fold_bundles: list[Path], pooled: PooledThreshold, fold_thresholds: list[float]
) -> dict[str, Any]:
    """``final/model.pt``: the fold models as one bundle averaging their probabilities.

    The members are the fold networks (a fold bundle with hflip TTA keeps it: the ensemble
    then averages flipped views too). The threshold is ``pooled``: the configured policy on the
    pooled out-of-fold predictions (each image scored by the fold model that never saw its
    patient: the nearest unbiased stand-in for the ensemble's own scores).
    """
    bundles = [load_bundle(p) for p in fold_bundles]
    first = bundles[0]
    members, hflip = _members(bundles)
    threshold, method = pooled.threshold, pooled.method
    path = out_dir / FINAL_DIR / rundir.BUNDLE_FILE
    _save_like(
        path,
        ProbabilityAverage(members, hflip=hflip),
        first,
        pooled,
        _chosen_on(df, len(bundles)),
        manifest_hash=manifest_hash(df),
        extra={
            "crossval": {
                "final": "ensemble",
                "n_folds": len(bundles),
                "members": [b.sha256 for b in bundles],
                "fold_thresholds": fold_thresholds,
            },
            # the shift score taps the first member: fold 0's training-data summary matches it
            **({"shift": first.meta["extra"]["shift"]} if (first.meta.get("extra") or {}).get("shift") else {}),
        },
    )
    log.info(
        "final model: ensemble of the %d fold models (%d networks%s), threshold %.4f (pooled OOF %s)",
        len(bundles),
        len(members),
        ", hflip TTA" if hflip else "",
        threshold,
        method,
    )
    return _record(path, threshold, method, fold_thresholds, epochs=None, kind="ensemble", members=len(members))


def final_epochs(best_epochs: list[int | None], default: int) -> int:
    """Median of the folds' best epochs, rounded up; ``default`` when no fold had validation."""
    known = [int(b) for b in best_epochs if b is not None]
    return int(math.ceil(float(np.median(known)))) if known else int(default)


def train_final(
    df: pd.DataFrame,
    out_dir: Path,
    cfg: TrainConfig,
    cache_dir: Path,
    best: list[int | None],
    pooled: PooledThreshold,
    fold_thresholds: list[float],
    n_folds: int,
) -> dict[str, Any]:
    """Train on every image for the CV-chosen epochs; the bundle gets the ``pooled`` threshold."""
    epochs = final_epochs(best, cfg.epochs)
    threshold, method = pooled.threshold, pooled.method
    final_cfg = cfg.replace(
        epochs=epochs,
        data=cfg.data.replace(split="grouped", val_fraction=0.0, cache_dir=str(cache_dir)),
        early_stopping=cfg.early_stopping.replace(patience=0),
        threshold=cfg.threshold.replace(method="fixed", value=float(threshold)),
    )
    final_dir = out_dir / FINAL_DIR
    log.info(
        "final model: all %d images, %d epoch(s) (median best epoch), threshold %.4f (pooled OOF %s)",
        len(df),
        epochs,
        threshold,
        method,
    )
    result = train_model(df.drop(columns=["row"]), final_dir, final_cfg)
    chosen_on = _chosen_on(df, n_folds)
    bundle = load_bundle(result.bundle_path)
    if bundle.threshold_selection.get("chosen_on") != chosen_on:
        meta = bundle.meta
        extra = dict(meta.get("extra") or {})
        extra["crossval"] = {
            "n_folds": n_folds,
            "best_epochs": best,
            "epochs": epochs,
            "fold_thresholds": fold_thresholds,
            "fold_threshold_mean": float(np.mean(fold_thresholds)),
        }
        _save_like(
            result.bundle_path,
            bundle.model,
            bundle,
            pooled,
            chosen_on,
            manifest_hash=bundle.manifest_hash,
            parent_bundle_sha256=meta.get("parent_bundle_sha256"),
            extra=extra,
        )
    return _record(result.bundle_path, threshold, method, fold_thresholds, epochs=epochs)


def _save_like(
    path: Path,
    model: torch.nn.Module,
    like: Bundle,
    pooled: PooledThreshold,
    chosen_on: dict,
    **fields: Any,
) -> None:
    """``save_bundle`` with ``like``'s classes, transform spec, training config and init record, and
    the cross-validation threshold (``fields``: manifest hash, parent, extra)."""
    save_bundle(
        path,
        model,
        classes=like.classes,
        positive_class=like.positive_class,
        transform_spec=like.transform_spec,
        threshold=float(pooled.threshold),
        threshold_method=pooled.method,
        threshold_params=pooled.params,
        threshold_chosen_on=chosen_on,
        train_config=like.train_config,
        init_record=like.meta.get("init"),
        **fields,
    )
    write_card_for_bundle(path)  # model_card.md beside every bundle (docs/model.md)

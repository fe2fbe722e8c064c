"""The final model of a cross-validation (``final/model.pt``): the K fold models as one
ensemble bundle (:func:`ensemble_final`), or one more training run on every image for the
median best epoch (:func:`train_final`); either gets the pooled out-of-fold Youden threshold.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_cad.config import TrainConfig
from cxr_cad.engine import rundir
from cxr_cad.engine.train import train_model
from cxr_cad.engine.train_setup import with_changes
from cxr_cad.errors import OutputError
from cxr_cad.manifest import manifest_hash

log = logging.getLogger(__name__)

FINAL_DIR = "final"


def ensemble_final(
    df: pd.DataFrame, out_dir: Path, fold_bundles: list[Path], youden: float, fold_thresholds: list[float]
) -> dict:
    """``final/model.pt``: the fold models as one bundle averaging their probabilities.

    The members are the fold networks (a fold bundle with hflip TTA keeps it: the ensemble
    then averages flipped views too). The threshold is the pooled out-of-fold Youden
    threshold (each image scored by the fold model that never saw its patient: the nearest
    unbiased stand-in for the ensemble's own scores), else the mean of the fold thresholds.
    """
    from cxr_cad.model import ProbabilityAverage, load_bundle, save_bundle, unwrap_model

    bundles = [load_bundle(p) for p in fold_bundles]
    first = bundles[0]
    members, hflip = [], False
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
    threshold = youden if math.isfinite(youden) else float(np.mean(fold_thresholds))
    method = "youden" if math.isfinite(youden) else "fixed"
    chosen_on = {
        "manifest_hash": manifest_hash(df),
        "n": len(df),
        "description": f"pooled out-of-fold predictions of {len(bundles)}-fold patient-grouped "
        "cross-validation (crossval/oof_predictions.csv)",
    }
    path = out_dir / FINAL_DIR / rundir.BUNDLE_FILE
    save_bundle(
        path,
        ProbabilityAverage(members, hflip=hflip),
        classes=first.classes,
        positive_class=first.positive_class,
        transform_spec=first.transform_spec,
        threshold=float(threshold),
        threshold_method=method,
        threshold_params={} if method == "youden" else {"value": float(threshold)},
        threshold_chosen_on=chosen_on,
        manifest_hash=manifest_hash(df),
        train_config=first.train_config,
        init_record=first.meta.get("init"),
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
    return {
        "bundle": str(path),
        "epochs": None,
        "kind": "ensemble",
        "members": len(members),
        "threshold": float(threshold),
        "threshold_method": f"pooled out-of-fold {method}" if method == "youden" else "mean of fold thresholds",
        "fold_threshold_mean": float(np.mean(fold_thresholds)),
    }


def final_epochs(best_epochs: list[int | None], default: int) -> int:
    """Median of the folds' best epochs, rounded up; ``default`` when no fold had validation."""
    known = [int(b) for b in best_epochs if b is not None]
    return int(math.ceil(float(np.median(known)))) if known else int(default)


def train_final(
    df: pd.DataFrame,
    out_dir: Path,
    cfg: TrainConfig,
    cache_dir: Path,
    best: list,
    youden: float,
    fold_thresholds: list[float],
    n_folds: int,
) -> dict:
    """Train on every image for the CV-chosen epochs; the bundle gets the pooled OOF Youden threshold."""
    from cxr_cad.model import load_bundle, save_bundle

    epochs = final_epochs(best, cfg.epochs)
    threshold = youden if math.isfinite(youden) else float(np.mean(fold_thresholds))
    method = "youden" if math.isfinite(youden) else "fixed"
    final_cfg = with_changes(
        cfg,
        epochs=epochs,
        data=with_changes(cfg.data, split="grouped", val_fraction=0.0, cache_dir=str(cache_dir)),
        early_stopping=with_changes(cfg.early_stopping, patience=0),
        threshold=with_changes(cfg.threshold, method="fixed", value=float(threshold)),
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
    chosen_on = {
        "manifest_hash": manifest_hash(df),
        "n": len(df),
        "description": f"pooled out-of-fold predictions of {n_folds}-fold patient-grouped "
        "cross-validation (crossval/oof_predictions.csv)",
    }
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
        save_bundle(
            result.bundle_path,
            bundle.model,
            classes=bundle.classes,
            positive_class=bundle.positive_class,
            transform_spec=bundle.transform_spec,
            threshold=float(threshold),
            threshold_method=method,
            threshold_params={} if method == "youden" else {"value": float(threshold)},
            threshold_chosen_on=chosen_on,
            manifest_hash=bundle.manifest_hash,
            parent_bundle_sha256=meta.get("parent_bundle_sha256"),
            train_config=bundle.train_config,
            init_record=meta.get("init"),
            extra=extra,
        )
    return {
        "bundle": str(result.bundle_path),
        "epochs": epochs,
        "threshold": float(threshold),
        "threshold_method": f"pooled out-of-fold {method}" if method == "youden" else "mean of fold thresholds",
        "fold_threshold_mean": float(np.mean(fold_thresholds)),
    }

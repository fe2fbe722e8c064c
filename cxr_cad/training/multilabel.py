"""Multi-label training (``data.task: multilabel``): one logit per finding, sigmoid + binary
cross-entropy with per-finding positive weights and unknown labels masked out, model selection
on the mean validation AUC over findings with at least ``data.min_positives`` validation
positives, and one decision threshold per finding (``threshold`` policy) with its provenance.

The finding matrix ``y`` is ``(n, K)`` int8: 1, 0, or -1 = unknown (blank, or uncertain under
``data.uncertain: ignore``), masked from the loss, the AUC and the threshold of that finding.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr_cad.config import TrainConfig
from cxr_cad.errors import ConfigError, ManifestError
from cxr_cad.manifest import manifest_hash as compute_manifest_hash
from cxr_cad.manifest import multilabel_grouped_split
from cxr_cad.manifest.multilabel import finding_column, finding_matrix
from cxr_cad.metrics.multilabel import mean_auc
from cxr_cad.training.data import TrainData, _augment, split_train_val
from cxr_cad.training.threshold import choose_threshold, selection_params

log = logging.getLogger(__name__)

#: Upper bound of a finding's positive weight (n_negative / n_positive): keeps a finding with
#: one or two training positives from dominating the loss.
MAX_POS_WEIGHT = 50.0


def is_multilabel(cfg: TrainConfig) -> bool:
    return cfg.data.task == "multilabel"


def check_config(cfg: TrainConfig) -> None:
    """Settings that multi-label training cannot honour (ConfigError listing them)."""
    problems = []
    if cfg.model.tta != "none":
        problems.append("model.tta: hflip is not supported with data.task multilabel; use none")
    if cfg.data.imbalance == "weighted_sampler":
        problems.append("data.imbalance: weighted_sampler is for one label per image; use weighted_loss or none")
    if cfg.threshold.method == "calibrated":
        problems.append("threshold.method: calibrated is not supported with data.task multilabel yet")
    if problems:
        raise ConfigError(problems)


def labels(df: pd.DataFrame, cfg: TrainConfig) -> np.ndarray:
    """The ``(n, K)`` finding matrix of ``df`` for ``cfg.data.classes`` (the findings)."""
    return finding_matrix(df, cfg.data.classes, uncertain=cfg.data.uncertain)


def grouped_split(df: pd.DataFrame, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Patient-grouped train/validation split stratified over the findings."""
    return multilabel_grouped_split(
        df, labels(df, cfg), cfg.data.val_fraction, seed=cfg.seed, group_col=cfg.data.group_col
    )


def prepare_data(train_df: pd.DataFrame, val_df: pd.DataFrame | None, cfg: TrainConfig) -> TrainData:
    """:func:`cxr_cad.training.data.prepare_data` for findings: ``y_train``/``y_val`` are
    ``(n, K)`` finding matrices; a ``grouped`` split is stratified over the findings."""
    check_config(cfg)
    data = cfg.data
    if val_df is not None:
        train_df, how = train_df.reset_index(drop=True), "given by the caller"
        val_df = val_df.reset_index(drop=True)
    else:
        mode: str = data.split
        if mode == "auto":
            mode = "column" if "split" in train_df.columns else ("grouped" if data.val_fraction > 0 else "none")
        if mode == "grouped" and data.val_fraction > 0:
            tr, va = grouped_split(train_df, cfg)
            how = f"grouped by {data.group_col}, stratified over findings, val_fraction {data.val_fraction}, seed {cfg.seed}"
            train_df, val_df = train_df.iloc[tr].reset_index(drop=True), train_df.iloc[va].reset_index(drop=True)
        else:
            train_df, val_df, how = split_train_val(train_df, data, seed=cfg.seed)
    y_train = labels(train_df, cfg)
    check_training_labels(y_train, data.classes)
    y_val = labels(val_df, cfg) if val_df is not None else None
    all_rows = pd.concat([train_df, val_df], ignore_index=True) if val_df is not None else train_df
    y_all = np.concatenate([y_train, y_val]) if y_val is not None else y_train
    return TrainData(train_df, val_df, how, y_train, y_val, data_hash(all_rows, y_all), _augment(cfg))


def data_hash(df: pd.DataFrame, y: np.ndarray) -> str:
    """The manifest hash extended by the finding matrix (so an uncertainty policy change counts)."""
    h = hashlib.sha256(compute_manifest_hash(df).encode())
    order = np.argsort(df["sop_instance_uid"].astype(str).to_numpy(), kind="stable")
    h.update(np.ascontiguousarray(y[order]).tobytes())
    return h.hexdigest()


def check_training_labels(y: np.ndarray, findings: tuple[str, ...]) -> None:
    """A finding without any training positive cannot be learnt: ManifestError naming it."""
    absent = [f for k, f in enumerate(findings) if not (y[:, k] == 1).any()]
    if absent:
        raise ManifestError(
            [
                f"the training rows hold no positive image of finding(s) {absent}; drop them from "
                "data.classes (--findings) or add images"
            ]
        )


def cohort_problems(y_train: np.ndarray, y_val: np.ndarray | None, cfg: TrainConfig, how: str) -> list[str]:
    """Too small to select a model: no finding reaches ``min_positives`` validation positives."""
    if y_val is None:
        return []
    n = cfg.data.min_positives
    ok = [k for k in range(y_val.shape[1]) if (y_val[:, k] == 1).sum() >= n and (y_val[:, k] == 0).sum() >= n]
    if ok:
        return []
    return [
        f"the validation side ({how}) has no finding with {n} positive and {n} negative images "
        f"(data.min_positives); model selection needs at least one"
    ]


def pos_weights(y: np.ndarray) -> torch.Tensor:
    """Per-finding BCE positive weights ``n_negative / n_positive`` over known labels (1.0 for a
    finding without positives), at most :data:`MAX_POS_WEIGHT`."""
    pos = (y == 1).sum(axis=0).astype(np.float64)
    neg = (y == 0).sum(axis=0).astype(np.float64)
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return torch.tensor(np.clip(w, 1e-3, MAX_POS_WEIGHT), dtype=torch.float32)


class MaskedBCEWithLogits(torch.nn.Module):
    """Binary cross-entropy over ``(N, K)`` logits; targets 1/0 count, -1 (unknown) is masked.

    The loss is the mean over known (image, finding) pairs (0 when a batch has none), with
    ``pos_weight`` per finding as :class:`torch.nn.BCEWithLogitsLoss`."""

    def __init__(self, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mask = target >= 0
        pos_weight = self.pos_weight if isinstance(self.pos_weight, torch.Tensor) else None
        per = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, target.clamp_min(0).to(logits.dtype), pos_weight=pos_weight, reduction="none"
        )
        per = per * mask
        return per.sum() / mask.sum().clamp_min(1)


def masked_bce(probabilities: np.ndarray, y: np.ndarray) -> float:
    """Unweighted mean BCE of probabilities over known labels (the validation loss)."""
    known = y >= 0
    if not known.any():
        return float("nan")
    p = np.clip(probabilities[known].astype(np.float64), 1e-7, 1 - 1e-7)
    t = y[known].astype(np.float64)
    return float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))


def selection_auc(y_val: np.ndarray, probs: np.ndarray, cfg: TrainConfig) -> float:
    """Mean validation AUC over findings with ``data.min_positives`` positives and negatives."""
    if not np.isfinite(probs[y_val >= 0]).all():
        return math.nan
    return mean_auc(y_val, probs, min_positives=cfg.data.min_positives)[0]


def val_min_class(y_val: np.ndarray) -> int:
    """The largest, over findings, of the smaller class count (for the chance guard)."""
    return int(max(min((y_val[:, k] == 1).sum(), (y_val[:, k] == 0).sum()) for k in range(y_val.shape[1])))


def thresholds_on_validation(
    cfg: TrainConfig, val_df: pd.DataFrame | None, probs: np.ndarray | None, y_val: np.ndarray | None
) -> tuple[list[dict[str, Any]], pd.DataFrame | None]:
    """One threshold per finding (``cfg.threshold`` policy on that finding's known validation
    labels; ``threshold.value`` without validation or with one class): ``[{"finding",
    "threshold", "method", "params", "detail"}]`` and the validation table (identity columns,
    ``finding_<F>`` labels and ``probability_<F>``)."""
    out: list[dict[str, Any]] = []
    table = None
    for k, f in enumerate(cfg.data.classes):
        if probs is None or y_val is None:
            detail: dict[str, Any] = {"reason": "no validation data"}
            thr, method = float(cfg.threshold.value), "fixed"
        else:
            known = y_val[:, k] >= 0
            thr, method, detail = choose_threshold(y_val[known, k], probs[known, k], cfg.threshold)
            detail["n_unknown"] = int((~known).sum())
        out.append(
            {
                "finding": f,
                "threshold": float(thr),
                "method": method,
                "params": selection_params(method, thr, detail),
                "detail": detail,
            }
        )
    if val_df is not None and probs is not None and y_val is not None:
        cols = ("sop_instance_uid", cfg.data.group_col, "path")
        table = pd.DataFrame({c: val_df[c].astype(str).to_numpy() for c in cols if c in val_df.columns})
        table["label"] = val_df[cfg.data.label_col].astype(str).to_numpy()
        for k, f in enumerate(cfg.data.classes):
            table[finding_column(f)] = y_val[:, k]
            table[f"probability_{f}"] = probs[:, k]
    return out, table


def bundle_record(cfg: TrainConfig, thresholds: list[dict[str, Any]], chosen_on: dict | None) -> dict[str, Any]:
    """The bundle's ``extra["multilabel"]``: findings in logit order, activation, uncertainty
    policy, selection rule and each finding's threshold with how and where it was chosen."""
    return {
        "task": "multilabel",
        "findings": list(cfg.data.classes),
        "activation": "sigmoid",
        "uncertain": cfg.data.uncertain,
        "selection": f"mean validation AUC over findings with >= {cfg.data.min_positives} positives and negatives",
        "min_positives": cfg.data.min_positives,
        "thresholds": {
            t["finding"]: {
                "value": t["threshold"],
                "method": t["method"],
                "params": t["params"],
                "n_positive": t["detail"].get("n_positive"),
                "n_negative": t["detail"].get("n_negative"),
                "warning": t["detail"].get("warning"),
                "chosen_on": chosen_on,
            }
            for t in thresholds
        },
    }

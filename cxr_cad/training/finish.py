"""The outputs of a training run: hflip TTA of the best epoch, the bundle (``model.pt``, with
its model card and shift summary), ``val_predictions.csv`` and ``result.json``
(:class:`TrainResult`); and reading a finished run back.
Used by :func:`cxr_cad.training.trainer.train_model`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from cxr_cad.config import TrainConfig
from cxr_cad.export.variant import store_int8_variant
from cxr_cad.manifest import write_table
from cxr_cad.model import ProbabilityAverage, save_bundle
from cxr_cad.modelcard import write_card_for_bundle
from cxr_cad.runtime import RuntimeInfo, barrier
from cxr_cad.shift.monitor import summarise_training
from cxr_cad.training import multilabel as ml
from cxr_cad.training import rundir
from cxr_cad.training.data import TrainData
from cxr_cad.training.guards import FAILED_FILE
from cxr_cad.training.loop import evaluate
from cxr_cad.training.threshold import selection_params, threshold_chosen_on, threshold_on_validation

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from cxr_cad.transforms import TransformSpec

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced (also in ``out_dir/result.json``)."""

    out_dir: Path
    bundle_path: Path
    best_epoch: int | None  # 1-based; None without validation data
    val_auc: float  # NaN without validation data
    threshold: float
    threshold_method: str
    epochs_run: int
    stopped_early: bool
    resumed_from_epoch: int  # 0 = started fresh
    split: str  # how train/validation were chosen
    history: pd.DataFrame  # train_log.csv
    val_predictions: pd.DataFrame | None  # best epoch: identity columns, label, y_true, probability
    selection: dict[str, Any] = field(default_factory=dict)  # how the best epoch was chosen (criterion, ...)
    forced: list[str] = field(default_factory=list)  # guards overridden by force (empty = none)


@dataclass
class RunContext:
    """The fixed facts of a run that its end needs."""

    out_dir: Path
    cfg: TrainConfig
    info: RuntimeInfo
    spec: TransformSpec
    data: TrainData
    init_record: dict[str, Any]
    resumed_from: int
    forced: list[str] = field(default_factory=list)  # guards overridden by cfg.force (cxr_cad.training.guards)

    @property
    def pos(self) -> int:
        """Index of the positive class."""
        return list(self.cfg.data.classes).index(self.cfg.data.positive_class)


def load_finished(out_dir: Path) -> TrainResult:
    """The result of the finished run in ``out_dir`` (``result.json`` and its tables)."""
    r = rundir.read_json(out_dir / rundir.RESULT_FILE)
    preds = out_dir / rundir.VAL_PRED_FILE
    return TrainResult(
        out_dir=out_dir,
        bundle_path=out_dir / rundir.BUNDLE_FILE,
        best_epoch=r["best_epoch"],
        val_auc=float("nan") if r["val_auc"] is None else r["val_auc"],
        threshold=r["threshold"],
        threshold_method=r["threshold_method"],
        epochs_run=r["epochs_run"],
        stopped_early=r["stopped_early"],
        resumed_from_epoch=r["epochs_run"],
        split=r["split"],
        history=pd.read_csv(out_dir / rundir.LOG_FILE),
        val_predictions=_read_val_predictions(preds) if preds.exists() else None,
        selection=r.get("selection") or {},
        forced=list(r.get("forced") or []),
    )


def _read_val_predictions(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for c in table.columns:  # binary: y_true, probability; multi-label: finding_<F>, probability_<F>
        if c == "y_true" or c.startswith("finding_"):
            table[c] = table[c].astype(np.int64)
        elif c.startswith("probability"):
            table[c] = table[c].astype(np.float64)
    return table


def with_hflip_tta(
    model: torch.nn.Module, state: dict[str, Any], val_ds: Dataset | None, info: RuntimeInfo, cfg: TrainConfig
) -> dict[str, Any]:
    """The best epoch's network wrapped to average its probability with the horizontally
    flipped image's (``model.tta: hflip``); the threshold is then chosen on validation
    probabilities scored the same way. Returns ``state`` updated, with ``tta_model``."""
    model.load_state_dict(state["best_state"])
    wrapped = ProbabilityAverage([model], hflip=True)
    state = {**state, "best_state": None, "tta_model": wrapped}  # weights already in place
    if val_ds is not None:
        out = evaluate(
            wrapped, val_ds, info, batch_size=cfg.batch_size, workers=cfg.runtime.workers, desc="validate (hflip TTA)"
        )
        state["best_probs"] = torch.from_numpy(out.probabilities.copy())
    return state


def _shift_summary(model: torch.nn.Module, ctx: RunContext) -> dict[str, Any] | None:
    """Training-data summary for the shift score (cxr_cad.shift.monitor; docs/shift.md), or None."""
    cfg = ctx.cfg
    return summarise_training(
        model,
        ctx.spec,
        ctx.data.train_df,
        ctx.data.val_df,
        group_col=cfg.data.group_col,
        cache_dir=Path(cfg.data.cache_dir) if cfg.data.cache_dir else ctx.out_dir / "cache",
        batch_size=cfg.batch_size,
        workers=cfg.runtime.workers,
        autocast_dtype=ctx.info.autocast_dtype,
        seed=cfg.seed,
    )


def _save(
    ctx: RunContext, model: torch.nn.Module, state: dict[str, Any], result: dict[str, Any], detail: dict[str, Any]
) -> None:
    """Write the bundle (rank 0)."""
    cfg, method, threshold = ctx.cfg, result["threshold_method"], result["threshold"]
    params = selection_params(method, threshold, detail)  # a calibrated threshold's calibration too
    chosen_on = threshold_chosen_on(ctx.data.val_df, ctx.data.how, state["best_epoch"], detail)
    extra_ml: dict[str, Any] = {}
    positive = cfg.data.positive_class
    if ml.is_multilabel(cfg):  # per-finding thresholds; the bundle-level one is unused (0.5, "per_finding")
        extra_ml = {"multilabel": ml.bundle_record(cfg, result["thresholds"], chosen_on)}
        params = {"value": float(threshold)}
        positive = positive if positive in cfg.data.classes else cfg.data.classes[0]
    save_bundle(
        ctx.out_dir / rundir.BUNDLE_FILE,
        model,
        classes=list(cfg.data.classes),
        positive_class=positive,
        transform_spec=ctx.spec,
        threshold=float(threshold),
        threshold_method=method,
        threshold_params=params,
        threshold_chosen_on=chosen_on,
        manifest_hash=ctx.data.manifest_hash,
        parent_bundle_sha256=ctx.init_record.get("parent_bundle_sha256"),
        train_config=cfg.to_dict(),
        init_record=ctx.init_record,
        extra={
            "training": {
                **result,
                "n_train": len(ctx.data.train_df),
                "runtime": ctx.info.to_dict(),
                "threshold_detail": detail,
            },
            "shift": _shift_summary(model, ctx),
            **extra_ml,
        },
    )
    write_card_for_bundle(ctx.out_dir / rundir.BUNDLE_FILE)  # model_card.md beside every bundle (docs/model.md)
    if cfg.int8:  # model.int8/ beside the bundle, verified on the validation split (cxr_cad.export.variant)
        store_int8_variant(ctx.out_dir / rundir.BUNDLE_FILE, ctx.data.train_df, ctx.data.val_df, seed=cfg.seed)


def finish(ctx: RunContext, model: torch.nn.Module, state: dict[str, Any]) -> TrainResult:
    """Best weights in place, threshold chosen, bundle and ``result.json`` written (rank 0)."""
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    per_finding: list[dict[str, Any]] | None = None
    if ml.is_multilabel(ctx.cfg):
        probs = None if state["best_probs"] is None else state["best_probs"].numpy()
        per_finding, table = ml.thresholds_on_validation(ctx.cfg, ctx.data.val_df, probs, ctx.data.y_val)
        threshold, method = 0.5, "per_finding"
        detail = {"best_epoch": state["best_epoch"], "n_val": 0 if ctx.data.val_df is None else len(ctx.data.val_df)}
        if ctx.data.y_val is not None:
            detail.update(n_positive=int((ctx.data.y_val == 1).sum()), n_negative=int((ctx.data.y_val == 0).sum()))
    else:
        threshold, method, detail, table = threshold_on_validation(
            ctx.cfg, ctx.data.val_df, state["best_probs"], state["best_epoch"], ctx.pos
        )
    has_val = state["best_epoch"] is not None and ctx.data.val_df is not None
    best_auc = state["best_auc"] if has_val else float("nan")
    stop = ctx.cfg.early_stopping
    best_loss = float(state.get("best_loss", float("nan"))) if has_val else float("nan")
    selection = {
        "criterion": stop.criterion if ctx.data.val_df is not None else "last epoch (no validation data)",
        "min_delta": stop.min_delta,
        "best_val_loss": best_loss if math.isfinite(best_loss) else None,
    }
    if ml.is_multilabel(ctx.cfg):
        selection["auc"] = ml.bundle_record(ctx.cfg, [], None)["selection"]
    result = {
        "best_epoch": state["best_epoch"],
        "val_auc": None if math.isnan(best_auc) else best_auc,
        "selection": selection,
        "forced": list(ctx.forced),
        "threshold": threshold,
        "threshold_method": method,
        "threshold_detail": detail,
        **({"thresholds": per_finding} if per_finding is not None else {}),
        "epochs_run": state["epoch"],
        "stopped_early": state["stopped_early"],
        "split": ctx.data.how,
        "manifest_hash": ctx.data.manifest_hash,
        "parent_bundle": (
            {"path": ctx.init_record.get("source"), "sha256": ctx.init_record.get("parent_bundle_sha256")}
            if ctx.init_record.get("init") == "bundle"
            else None
        ),
    }
    if ctx.info.is_main:
        if table is not None:
            write_table(table, ctx.out_dir / rundir.VAL_PRED_FILE)
        _save(ctx, model, state, result, detail)
        rundir.write_json(ctx.out_dir / rundir.RESULT_FILE, result)
        (ctx.out_dir / FAILED_FILE).unlink(missing_ok=True)  # a refused run finished later (--force)
    barrier(ctx.info)
    bundle_path = ctx.out_dir / rundir.BUNDLE_FILE
    log.log(
        logging.INFO if ctx.info.is_main else logging.DEBUG,
        "training done: best epoch %s, validation AUC %.4f, threshold %.4f (%s); bundle %s",
        state["best_epoch"],
        best_auc,
        threshold,
        method,
        bundle_path,
    )
    return TrainResult(
        out_dir=ctx.out_dir,
        bundle_path=bundle_path,
        best_epoch=state["best_epoch"],
        val_auc=best_auc,
        threshold=float(threshold),
        threshold_method=method,
        epochs_run=state["epoch"],
        stopped_early=state["stopped_early"],
        resumed_from_epoch=ctx.resumed_from,
        split=ctx.data.how,
        history=pd.DataFrame(state["history"], columns=rundir.LOG_COLUMNS),
        val_predictions=table,
        selection=selection,
        forced=list(ctx.forced),
    )

"""Train a ResNet18 on a labelled manifest: :func:`train_model` (used by ``cxr-cad train`` and
by cross-validation, one call per fold).

Per epoch: one pass over the training images (class imbalance handled by a weighted loss
or a class-balanced sampler), the learning-rate schedule steps, the validation images are
scored (gathered over all ranks under torchrun), validation AUC decides the best epoch and
early stopping, ``train_log.csv`` gets a row and ``checkpoint.pt`` is replaced atomically.
At the end the best epoch's weights go into the bundle (``model.pt``) together with the
decision threshold chosen on the validation predictions and how it was chosen.

Rerunning on the same run folder with the same config and data resumes after the last
finished epoch (or returns the finished result); anything else is a ConfigError.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_cad.config import TrainConfig
from cxr_cad.engine import checkpoint as ckpt
from cxr_cad.engine import rundir
from cxr_cad.engine.data import (
    EpochSampler,
    class_weights,
    label_indices,
    make_items,
    sample_weights,
    split_train_val,
    train_loader,
)
from cxr_cad.engine.loop import EvalOutput, evaluate, predict_probabilities, train_epoch
from cxr_cad.engine.optim import build_optimizer, build_scheduler, choose_threshold, set_backbone_frozen, wrap_model
from cxr_cad.engine.runtime import (
    RuntimeInfo,
    barrier,
    cleanup_distributed,
    init_distributed,
    prepare_model,
    resolve_runtime,
    seed_everything,
)
from cxr_cad.errors import ConfigError, ManifestError, OutputError, WeightsError
from cxr_cad.manifest import manifest_hash as compute_manifest_hash
from cxr_cad.manifest import write_table
from cxr_cad.metrics import roc_auc
from cxr_cad.progress import progress

__all__ = ["TrainResult", "train_model", "predict_probabilities", "EpochCallback"]

log = logging.getLogger(__name__)

#: Called after every finished (and checkpointed) epoch with (epoch 1-based, log record).
EpochCallback = Callable[[int, dict], None]


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


def _runtime(cfg: TrainConfig) -> RuntimeInfo:
    try:
        return resolve_runtime(cfg.runtime.device, cfg.runtime.precision)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from exc


def _val_table(val_df: pd.DataFrame, out: EvalOutput, cfg: TrainConfig, pos: int) -> pd.DataFrame:
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


def _load_finished(out_dir: Path) -> TrainResult:
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
    )


def _read_val_predictions(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table["y_true"] = table["y_true"].astype(np.int64)
    table["probability"] = table["probability"].astype(np.float64)
    return table


def train_model(
    train_df: pd.DataFrame,
    out_dir: str | Path,
    cfg: TrainConfig,
    *,
    val_df: pd.DataFrame | None = None,
    init: str | None = None,
    callbacks: Sequence[EpochCallback] = (),
) -> TrainResult:
    """Train, validate, checkpoint and write the bundle into ``out_dir``.

    Args:
        train_df: labelled manifest rows (``path`` readable as given: absolute or relative to
            the current folder, e.g. from ``read_manifest``). Without ``val_df`` it is split
            into training and validation by ``cfg.data`` (patient-grouped by default).
        out_dir: the run folder (created). Rerunning with the same config and rows resumes.
        cfg: the training config.
        val_df: validation rows given by the caller (a cross-validation fold); then
            ``train_df`` is used whole for training.
        init: overrides ``cfg.model.init`` (``imagenet``, ``none`` or a bundle path).
        callbacks: called on every rank after each finished, checkpointed epoch.

    Raises:
        ConfigError: bad runtime settings, or ``out_dir`` holds a run with another config/data.
        ManifestError: missing or unknown labels, an empty split side.
        WeightsError/BundleError: initial weights that cannot be loaded or whose classes differ.
        OutputError: the run folder cannot be written.
    """
    if init is not None:
        cfg = replace(cfg, model=replace(cfg.model, init=str(init)))
    out_dir = Path(out_dir).resolve()
    info = _runtime(cfg)
    created_group = init_distributed(info)
    try:
        return _train(train_df, val_df, out_dir, cfg, info, callbacks)
    finally:
        if created_group:
            cleanup_distributed()


def _train(train_df, val_df, out_dir: Path, cfg: TrainConfig, info: RuntimeInfo, callbacks) -> TrainResult:
    from cxr_cad.transforms import AugmentSpec, TransformSpec, make_dataset

    data = cfg.data
    if val_df is not None:
        train_df, how = train_df.reset_index(drop=True), "given by the caller"
        val_df = val_df.reset_index(drop=True)
    else:
        train_df, val_df, how = split_train_val(train_df, data, seed=cfg.seed)
    y_train = label_indices(train_df, data.classes, data.label_col, what="training")
    absent = [c for i, c in enumerate(data.classes) if not (y_train == i).any()]
    if absent:  # a one-class manifest would train a model that never predicts the other class
        raise ManifestError(
            [
                f"the training rows hold no image of class(es) {absent}; training needs every "
                f"one of {list(data.classes)} (check the labels, or --classes)"
            ]
        )
    y_val = label_indices(val_df, data.classes, data.label_col, what="validation") if val_df is not None else None
    all_rows = pd.concat([train_df, val_df], ignore_index=True) if val_df is not None else train_df
    m_hash = compute_manifest_hash(all_rows)
    try:
        augment = AugmentSpec.from_dict(dict(cfg.augment))
    except ConfigError as exc:
        raise ConfigError([f"augment: {p}" for p in exc.problems]) from exc
    except TypeError as exc:  # e.g. a number where (low, high) is expected
        raise ConfigError([f"augment: {exc}"]) from exc

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run folder {out_dir}: {exc.strerror or exc}") from exc
    resuming = rundir.check_resumable(out_dir, cfg, m_hash)
    barrier(info)  # every rank has decided before rank 0 writes run.json
    if resuming and (out_dir / rundir.RESULT_FILE).exists():
        log.info("%s already holds this finished run; nothing to do", out_dir)
        return _load_finished(out_dir)

    seed_everything(cfg.seed)
    pos = data.classes.index(data.positive_class)
    model, init_record = _init_model(cfg)
    spec = TransformSpec.for_init(
        cfg.model.in_channels,
        image_size=cfg.model.image_size,
        aspect=cfg.model.aspect,
        intensity=cfg.model.intensity,
        intensity_percentiles=tuple(cfg.model.intensity_percentiles),
    )
    if info.is_main and not resuming:
        run = {
            "fingerprint": cfg.fingerprint(),
            "manifest_hash": m_hash,
            "seed": cfg.seed,
            "split": how,
            "n_train": len(train_df),
            "n_val": 0 if val_df is None else len(val_df),
            "init": init_record,
            "versions": rundir.package_versions(),
            "runtime": info.to_dict(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        rundir.write_run_files(out_dir, cfg, run, rundir.split_table(train_df, val_df, data.label_col, data.group_col))
    cache_dir = Path(data.cache_dir) if data.cache_dir else out_dir / "cache"
    train_ds = make_dataset(make_items(train_df, y_train), spec, augment=augment, cache_dir=cache_dir, seed=cfg.seed)
    val_ds = make_dataset(make_items(val_df, y_val), spec, cache_dir=cache_dir) if val_df is not None else None

    prepare_model(model, info)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.epochs)
    scaler = torch.amp.GradScaler("cuda") if info.precision == "fp16" else None
    weight = None
    if data.imbalance == "weighted_loss":
        weight = class_weights(y_train, len(data.classes)).to(info.torch_device)
    criterion = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.optim.label_smoothing)
    sampler = EpochSampler(
        len(train_ds),
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        weights=sample_weights(y_train, len(data.classes)) if data.imbalance == "weighted_sampler" else None,
    )

    state = {
        "epoch": 0,
        "best_epoch": None,
        "best_auc": float("-inf"),
        "best_state": None,
        "best_probs": None,
        "bad_epochs": 0,
        "history": [],
        "stopped_early": False,
    }
    barrier(info)
    saved = ckpt.load_checkpoint(out_dir) if resuming else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        ckpt.set_rng_states(saved["rng"])
        state.update({k: saved[k] for k in state})
        log.info("resuming %s after epoch %d of %d", out_dir, state["epoch"], cfg.epochs)
    resumed_from = state["epoch"]

    frozen = None
    train_module = model
    epochs = (
        progress(
            range(state["epoch"], cfg.epochs), total=cfg.epochs, initial=state["epoch"], desc="epochs", unit="epoch"
        )
        if info.is_main
        else range(state["epoch"], cfg.epochs)
    )
    for epoch in epochs:
        if state["stopped_early"]:
            break
        want_frozen = epoch < cfg.model.freeze_backbone_epochs
        if want_frozen != frozen:
            set_backbone_frozen(model, want_frozen)
            frozen = want_frozen
            train_module = wrap_model(model, info, compile_model=cfg.runtime.compile)
        lr = optimizer.param_groups[0]["lr"]
        t_epoch = time.perf_counter()
        loader = train_loader(
            train_ds,
            sampler,
            batch_size=cfg.batch_size,
            workers=cfg.runtime.workers,
            seed=cfg.seed,
            epoch=epoch,
            rank=info.rank,
            pin_memory=info.device != "cpu",
        )
        stats = train_epoch(
            train_module,
            loader,
            criterion,
            optimizer,
            info,
            scaler=scaler,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            on_train_mode=(lambda m: set_backbone_frozen(model, True)) if want_frozen else None,
        )
        scheduler.step()
        record = {
            "epoch": epoch + 1,
            "train_loss": stats.loss,
            "val_loss": float("nan"),
            "val_auc": float("nan"),
            "lr": lr,
            "seconds": round(stats.seconds, 3),
            "images_per_s": round(stats.images_per_s, 2),
            "best": False,
            "frozen_backbone": want_frozen,
        }
        improved = val_ds is None
        if val_ds is not None:
            out = evaluate(model, val_ds, info, batch_size=cfg.batch_size, workers=cfg.runtime.workers)
            y_true, score = out.positive(pos)
            auc = roc_auc(y_true, score)
            record.update(val_loss=out.loss, val_auc=auc)
            improved = not math.isnan(auc) and (
                state["best_epoch"] is None or auc > state["best_auc"] + cfg.early_stopping.min_delta
            )
            if improved:
                state["best_probs"] = torch.from_numpy(out.probabilities.copy())
        record["seconds"] = round(time.perf_counter() - t_epoch, 3)
        if improved:
            state.update(
                best_epoch=epoch + 1,
                best_auc=record["val_auc"],
                bad_epochs=0,
                best_state={k: v.detach().clone().cpu() for k, v in model.state_dict().items()},
            )
            record["best"] = True
        else:
            state["bad_epochs"] += 1
        state["history"].append(record)
        state["epoch"] = epoch + 1
        patience = cfg.early_stopping.patience
        state["stopped_early"] = bool(patience and state["bad_epochs"] >= patience and epoch + 1 < cfg.epochs)
        if info.is_main:
            ckpt.save_checkpoint(
                out_dir,
                {
                    **state,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler else None,
                    "rng": ckpt.rng_states(),
                    "fingerprint": cfg.fingerprint(),
                },
            )
            rundir.write_log(out_dir, state["history"])
            if hasattr(epochs, "set_postfix"):
                epochs.set_postfix(loss=f"{stats.loss:.4f}", val_auc=f"{record['val_auc']:.4f}")
        log.log(
            logging.INFO if info.is_main else logging.DEBUG,
            "epoch %d/%d: train_loss %.4f val_loss %.4f val_auc %.4f lr %.3g %.1f images/s%s",
            epoch + 1,
            cfg.epochs,
            stats.loss,
            record["val_loss"],
            record["val_auc"],
            lr,
            stats.images_per_s,
            " (best)" if record["best"] else "",
        )
        barrier(info)
        for cb in callbacks:
            cb(epoch + 1, record)
        if state["stopped_early"]:
            log.info("early stopping: validation AUC has not improved for %d epochs", patience)
    if hasattr(epochs, "close"):
        epochs.close()
    if cfg.model.tta == "hflip" and state["best_state"] is not None:
        state = _with_hflip_tta(model, state, val_ds, info, cfg)
        model = state.pop("tta_model")
    return _finish(
        out_dir, cfg, info, model, state, spec, train_df, val_df, how, m_hash, resumed_from, init_record, pos
    )


def _with_hflip_tta(model, state: dict, val_ds, info: RuntimeInfo, cfg: TrainConfig) -> dict:
    """The best epoch's network wrapped to average its probability with the horizontally
    flipped image's (``model.tta: hflip``); the threshold is then chosen on validation
    probabilities scored the same way. Returns ``state`` updated, with ``tta_model``."""
    from cxr_cad.model import ProbabilityAverage

    model.load_state_dict(state["best_state"])
    wrapped = ProbabilityAverage([model], hflip=True)
    state = {**state, "best_state": None, "tta_model": wrapped}  # weights already in place
    if val_ds is not None:
        out = evaluate(
            wrapped, val_ds, info, batch_size=cfg.batch_size, workers=cfg.runtime.workers, desc="validate (hflip TTA)"
        )
        state["best_probs"] = torch.from_numpy(out.probabilities.copy())
    return state


def _init_model(cfg: TrainConfig):
    """(model, init_record); a parent bundle must have exactly ``data.classes``."""
    from cxr_cad.model import init_model

    model, record = init_model(
        cfg.model.init, len(cfg.data.classes), cfg.model.in_channels, seed=cfg.seed, classes=list(cfg.data.classes)
    )
    parent = record.get("parent_classes")
    if record.get("init") == "bundle" and list(parent or []) != list(cfg.data.classes):
        raise WeightsError(
            f"--init {cfg.model.init}: the parent bundle's classes {parent} differ from this "
            f"run's data.classes {list(cfg.data.classes)}; fine-tuning needs the same classes "
            "in the same order (set data.classes, or start from imagenet)"
        )
    return model, record


def _shift_summary(model, spec, train_df, val_df, cfg: TrainConfig, info: RuntimeInfo, out_dir: Path):
    """Training-data summary for the shift score (cxr_cad.model.shift; docs/shift.md), or None."""
    from cxr_cad.model.shift import summarise_training

    return summarise_training(
        model,
        spec,
        train_df,
        val_df,
        group_col=cfg.data.group_col,
        cache_dir=Path(cfg.data.cache_dir) if cfg.data.cache_dir else out_dir / "cache",
        batch_size=cfg.batch_size,
        workers=cfg.runtime.workers,
        autocast_dtype=info.autocast_dtype,
        seed=cfg.seed,
    )


def _finish(
    out_dir, cfg, info, model, state, spec, train_df, val_df, how, m_hash, resumed_from, init_record, pos
) -> TrainResult:
    from cxr_cad.model import save_bundle

    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    val_table = None
    threshold, method, detail = cfg.threshold.value, "fixed", {"reason": "no validation data"}
    if val_df is not None and state["best_probs"] is not None:
        out = EvalOutput(
            probabilities=state["best_probs"].numpy(),
            labels=label_indices(val_df, cfg.data.classes, cfg.data.label_col),
            loss=float("nan"),
        )
        val_table = _val_table(val_df, out, cfg, pos)
        threshold, method, detail = choose_threshold(
            val_table["y_true"].to_numpy(), val_table["probability"].to_numpy(), cfg.threshold
        )
    detail.update(best_epoch=state["best_epoch"], n_val=0 if val_df is None else len(val_df))
    bundle_path = out_dir / rundir.BUNDLE_FILE
    best_auc = state["best_auc"] if state["best_epoch"] is not None and val_df is not None else float("nan")
    result = {
        "best_epoch": state["best_epoch"],
        "val_auc": None if math.isnan(best_auc) else best_auc,
        "threshold": threshold,
        "threshold_method": method,
        "threshold_detail": detail,
        "epochs_run": state["epoch"],
        "stopped_early": state["stopped_early"],
        "split": how,
        "manifest_hash": m_hash,
        "parent_bundle": (
            {"path": init_record.get("source"), "sha256": init_record.get("parent_bundle_sha256")}
            if init_record.get("init") == "bundle"
            else None
        ),
    }
    if info.is_main:
        if val_table is not None:
            write_table(val_table, out_dir / rundir.VAL_PRED_FILE)
        params = {k: detail[k] for k in ("target", "tie_range", "n_tied") if k in detail}
        if method == "fixed":
            params = {"value": float(threshold)}
        chosen_on = None
        if val_df is not None:
            chosen_on = {
                "manifest_hash": compute_manifest_hash(val_df),
                "n": len(val_df),
                "n_positive": detail.get("n_positive"),
                "n_negative": detail.get("n_negative"),
                "description": f"validation split ({how}), best epoch {state['best_epoch']}",
            }
            if "warning" in detail:
                chosen_on["warning"] = detail["warning"]
        save_bundle(
            bundle_path,
            model,
            classes=list(cfg.data.classes),
            positive_class=cfg.data.positive_class,
            transform_spec=spec,
            threshold=float(threshold),
            threshold_method=method,
            threshold_params=params,
            threshold_chosen_on=chosen_on,
            manifest_hash=m_hash,
            parent_bundle_sha256=init_record.get("parent_bundle_sha256"),
            train_config=cfg.to_dict(),
            init_record=init_record,
            extra={
                "training": {**result, "n_train": len(train_df), "runtime": info.to_dict(), "threshold_detail": detail},
                "shift": _shift_summary(model, spec, train_df, val_df, cfg, info, out_dir),
            },
        )
        rundir.write_json(out_dir / rundir.RESULT_FILE, result)
    barrier(info)
    log.log(
        logging.INFO if info.is_main else logging.DEBUG,
        "training done: best epoch %s, validation AUC %.4f, threshold %.4f (%s); bundle %s",
        state["best_epoch"],
        best_auc,
        threshold,
        method,
        bundle_path,
    )
    return TrainResult(
        out_dir=out_dir,
        bundle_path=bundle_path,
        best_epoch=state["best_epoch"],
        val_auc=best_auc,
        threshold=float(threshold),
        threshold_method=method,
        epochs_run=state["epoch"],
        stopped_early=state["stopped_early"],
        resumed_from_epoch=resumed_from,
        split=how,
        history=pd.DataFrame(state["history"], columns=rundir.LOG_COLUMNS),
        val_predictions=val_table,
    )

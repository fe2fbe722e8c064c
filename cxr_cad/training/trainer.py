"""Train a registered network (``model.arch``; ResNet18 by default) on a labelled manifest: :func:`train_model` (used by ``cxr-cad train`` and
by cross-validation, one call per fold).

Per epoch: one pass over the training images (class imbalance handled by a weighted loss
or a class-balanced sampler), the learning-rate schedule steps, the validation images are
scored (gathered over all ranks under torchrun), validation AUC with validation loss as the
tie-break (``early_stopping.criterion``) decides the best epoch and early stopping,
``train_log.csv`` gets a row and ``checkpoint.pt`` is replaced atomically. At the end the
best epoch's weights go into the bundle (``model.pt``) together with the decision threshold
chosen on the validation predictions and how it was chosen.

Guards (:mod:`cxr_cad.training.guards`): a cohort too small to select a model or a threshold
is refused before the network is built; a run whose loss is not finite or whose validation
AUC never beats chance fails without a bundle (``failed.json`` says why); ``force`` keeps
such a model, recorded in the bundle.

Rerunning on the same run folder with the same config and data resumes after the last
finished epoch (or returns the finished result); anything else is a ConfigError.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxr_cad.config import TrainConfig
from cxr_cad.core.progress import progress
from cxr_cad.errors import ManifestError, OutputError
from cxr_cad.metrics import roc_auc
from cxr_cad.runtime import (
    RuntimeInfo,
    barrier,
    cleanup_distributed,
    init_distributed,
    prepare_model,
    resolve_runtime,
    seed_everything,
)
from cxr_cad.training import checkpoint as ckpt
from cxr_cad.training import guards, rundir
from cxr_cad.training import multilabel as ml
from cxr_cad.training.checkpoint import checkpoint_state, new_state, restore
from cxr_cad.training.data import TrainData, make_items, prepare_data, train_loader
from cxr_cad.training.finish import RunContext, TrainResult, finish, load_finished, with_hflip_tta
from cxr_cad.training.loop import EpochStats, evaluate, predict_probabilities, train_epoch
from cxr_cad.training.mixup import Mixup
from cxr_cad.training.network import check_init, init_model, parent_guard, transform_spec
from cxr_cad.training.optim import Training, build_training, set_backbone_frozen, wrap_model
from cxr_cad.training.rundir import run_record
from cxr_cad.transforms import make_dataset

__all__ = ["TrainResult", "train_model", "predict_probabilities", "EpochCallback"]

log = logging.getLogger(__name__)

#: Called after every finished (and checkpointed) epoch with (epoch 1-based, log record).
EpochCallback = Callable[[int, dict], None]


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
        cfg: the training config (``cfg.model.arch`` names the network).
        val_df: validation rows given by the caller (a cross-validation fold); then
            ``train_df`` is used whole for training.
        init: overrides ``cfg.model.init`` (``imagenet``, ``none`` or a bundle path).
        callbacks: called on every rank after each finished, checkpointed epoch.

    Raises:
        ConfigError: bad runtime settings, or ``out_dir`` holds a run with another config/data.
        ManifestError: missing or unknown labels, an empty split side, unreadable images, a
            cohort too small to select a model or a threshold (unless ``cfg.force``).
        ConfigError: a parent bundle (``init``) with other input settings (unless ``cfg.force``).
        WeightsError/BundleError: initial weights that cannot be loaded or whose classes differ.
        TrainingFailed: the loss became non-finite, or validation AUC never beat chance
            (unless ``cfg.force``); no bundle is written, ``out_dir/failed.json`` says why.
        OutputError: the run folder (or the image cache) cannot be written; it is named.
    """
    if init is not None:
        cfg = cfg.replace(model=cfg.model.replace(init=str(init)))
    out_dir = Path(out_dir).resolve()
    info = resolve_runtime(cfg.runtime.device, cfg.runtime.precision)
    created_group = init_distributed(info)
    try:
        return _train(train_df, val_df, out_dir, cfg, info, callbacks)
    except OSError as exc:
        if exc.errno not in _FULL_ERRNOS:
            raise
        cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out_dir / "cache"
        raise OutputError(
            f"cannot write in the run folder {out_dir} (image cache {cache}): {exc.strerror or exc}; free space "
            "there or choose another --out / --cache-dir, then run the same command again (finished epochs are kept)"
        ) from exc
    finally:
        if created_group:
            cleanup_distributed()


#: errno values of a full or read-only disk: reported as the run folder's, never a temporary file's
#: (MONAI writes each cache file to a system temporary folder first, then moves it into the cache).
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _cohort_guard(data: TrainData, cfg: TrainConfig) -> list[str]:
    """Refuse (ManifestError, exit 2) rows too small to select a model or a threshold; with
    ``cfg.force`` return the problems as forced instead."""
    problems = (
        ml.cohort_problems(data.y_train, data.y_val, cfg, data.how)
        if ml.is_multilabel(cfg)
        else guards.cohort_problems(
            data.train_df,
            data.val_df,
            classes=cfg.data.classes,
            label_col=cfg.data.label_col,
            group_col=cfg.data.group_col,
            how=data.how,
        )
    )
    if problems and not cfg.force:
        raise ManifestError([*problems, guards.FORCE_HINT])
    for p in problems:
        log.warning("forced: %s", p)
    return [f"cohort: {p}" for p in problems]


def _train(
    train_df: pd.DataFrame,
    val_df: pd.DataFrame | None,
    out_dir: Path,
    cfg: TrainConfig,
    info: RuntimeInfo,
    callbacks: Sequence[EpochCallback],
) -> TrainResult:
    data = ml.prepare_data(train_df, val_df, cfg) if ml.is_multilabel(cfg) else prepare_data(train_df, val_df, cfg)
    check_init(cfg)  # a mistyped --init is named before anything else
    forced = _cohort_guard(data, cfg)  # before the network is built
    forced += parent_guard(cfg)  # a parent bundle with other input settings; before anything is written
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run folder {out_dir}: {exc.strerror or exc}") from exc
    resuming = rundir.check_resumable(out_dir, cfg, data.manifest_hash)
    barrier(info)  # every rank has decided before rank 0 writes run.json
    if resuming and (out_dir / rundir.RESULT_FILE).exists():
        log.info("%s already holds this finished run; nothing to do", out_dir)
        return load_finished(out_dir)

    seed_everything(cfg.seed)
    model, init_record = init_model(cfg)
    spec = transform_spec(cfg)
    if info.is_main and not resuming:
        split = rundir.split_table(data.train_df, data.val_df, cfg.data.label_col, cfg.data.group_col)
        rundir.write_run_files(out_dir, cfg, run_record(cfg, data, init_record, info), split)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out_dir / "cache"
    train_ds = make_dataset(
        make_items(data.train_df, data.y_train), spec, augment=data.augment, cache_dir=cache_dir, seed=cfg.seed
    )
    val_ds = None
    if data.val_df is not None and data.y_val is not None:
        val_ds = make_dataset(make_items(data.val_df, data.y_val), spec, cache_dir=cache_dir)

    prepare_model(model, info)
    training = build_training(model, cfg, data, info)
    state = new_state()
    barrier(info)
    saved = ckpt.load_checkpoint(out_dir) if resuming else None
    if saved is not None:
        restore(saved, model, training, state)
        log.info("resuming %s after epoch %d of %d", out_dir, state["epoch"], cfg.epochs)
    ctx = RunContext(out_dir, cfg, info, spec, data, init_record, resumed_from=state["epoch"], forced=forced)
    _Epochs(ctx, model, training, train_ds, val_ds, callbacks).run(state)
    if cfg.model.tta == "hflip" and state["best_state"] is not None:
        state = with_hflip_tta(model, state, val_ds, info, cfg)
        model = state.pop("tta_model")
    return finish(ctx, model, state)


@dataclass
class _Epochs:
    """The epoch loop of a run: train, step the schedule, validate, keep the best, checkpoint."""

    ctx: RunContext
    model: torch.nn.Module
    training: Training
    train_ds: Dataset
    val_ds: Dataset | None
    callbacks: Sequence[EpochCallback]

    def run(self, state: dict[str, Any]) -> None:
        """Epochs ``state["epoch"]`` .. ``cfg.epochs - 1`` (or until early stopping); updates ``state``."""
        cfg, info = self.ctx.cfg, self.ctx.info
        self._guard(state, finished=False)  # a resumed run that had diverged fails before another epoch
        frozen: bool | None = None
        train_module = self.model
        todo = range(state["epoch"], cfg.epochs)
        epochs: Iterable[int] = (
            progress(todo, total=cfg.epochs, initial=state["epoch"], desc="epochs", unit="epoch")
            if info.is_main
            else todo
        )
        for epoch in epochs:
            if state["stopped_early"]:
                break
            want_frozen = epoch < cfg.model.freeze_backbone_epochs
            if want_frozen != frozen:
                set_backbone_frozen(self.model, want_frozen)
                frozen = want_frozen
                train_module = wrap_model(self.model, info, compile_model=cfg.runtime.compile)
            stats, record = self._epoch(epoch, train_module, want_frozen)
            self._keep_best(state, epoch, record)
            if info.is_main:
                ckpt.save_checkpoint(self.ctx.out_dir, checkpoint_state(state, self.model, self.training, cfg))
                rundir.write_log(self.ctx.out_dir, state["history"])
                if hasattr(epochs, "set_postfix"):
                    epochs.set_postfix(loss=f"{stats.loss:.4f}", val_auc=f"{record['val_auc']:.4f}")
            self._log(epoch, stats, record)
            barrier(info)
            for cb in self.callbacks:
                cb(epoch + 1, record)
            self._guard(state, finished=False)
            if state["stopped_early"]:
                log.info(
                    "early stopping: no better epoch (%s) for %d epochs",
                    cfg.early_stopping.criterion,
                    cfg.early_stopping.patience,
                )
        if hasattr(epochs, "close"):
            epochs.close()
        self._guard(state, finished=True)

    def _guard(self, state: dict[str, Any], *, finished: bool) -> None:
        """Fail the run (:class:`~cxr_cad.training.guards.TrainingFailed`, ``failed.json``) when it
        diverged or never beat chance; with ``cfg.force`` record it as forced and go on."""
        ctx = self.ctx
        y_val = ctx.data.y_val
        if y_val is not None and y_val.ndim == 2:  # multi-label: the best-represented finding
            min_class: int | None = ml.val_min_class(y_val)
        else:
            min_class = None if y_val is None else int(np.bincount(y_val, minlength=len(ctx.cfg.data.classes)).min())
        reason = guards.divergence(
            state["history"],
            has_validation=self.val_ds is not None,
            finished=finished,
            val_min_class=min_class,
        )
        if reason is None:
            return
        if ctx.cfg.force:
            if f"training: {reason}" not in ctx.forced:
                log.warning("forced: %s", reason)
                ctx.forced.append(f"training: {reason}")
            return
        where = ctx.out_dir / guards.FAILED_FILE
        if ctx.info.is_main:
            guards.write_failure(ctx.out_dir, reason, history=state["history"])
        raise guards.TrainingFailed(
            f"{ctx.out_dir}: {reason}. No bundle was written ({where} says why); {guards.FORCE_HINT}"
        )

    def _epoch(self, epoch: int, train_module: torch.nn.Module, want_frozen: bool) -> tuple[EpochStats, dict]:
        """Train one epoch and validate; (training stats, log record with ``improved`` probabilities)."""
        cfg, info, training = self.ctx.cfg, self.ctx.info, self.training
        lr = training.optimizer.param_groups[0]["lr"]
        t_epoch = time.perf_counter()
        loader = train_loader(
            self.train_ds,
            training.sampler,
            batch_size=cfg.batch_size,
            workers=cfg.runtime.workers,
            seed=cfg.seed,
            epoch=epoch,
            rank=info.rank,
            pin_memory=info.device != "cpu",
        )
        model = self.model
        stats = train_epoch(
            train_module,
            loader,
            training.criterion,
            training.optimizer,
            info,
            scaler=training.scaler,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            on_train_mode=(lambda m: set_backbone_frozen(model, True)) if want_frozen else None,
            mixup=self._mixup(epoch),
        )
        training.scheduler.step()
        record: dict[str, Any] = {
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
        record["probs"] = self._validate(record)
        record["seconds"] = round(time.perf_counter() - t_epoch, 3)
        return stats, record

    def _mixup(self, epoch: int) -> Mixup | None:
        """The epoch's batch mixup (``augment.mixup_alpha`` > 0), seeded by seed, epoch and rank."""
        alpha = float(self.ctx.data.augment.mixup_alpha)
        return Mixup(alpha, self.ctx.cfg.seed, epoch, self.ctx.info.rank) if alpha > 0 else None

    def _validate(self, record: dict[str, Any]) -> torch.Tensor | None:
        """Score the validation set into ``record``; its probabilities (None without validation)."""
        if self.val_ds is None:
            return None
        cfg = self.ctx.cfg
        multilabel = ml.is_multilabel(cfg)
        out = evaluate(
            self.model,
            self.val_ds,
            self.ctx.info,
            batch_size=cfg.batch_size,
            workers=cfg.runtime.workers,
            activation="sigmoid" if multilabel else "softmax",
        )
        if multilabel:  # mean AUC over findings with data.min_positives validation positives
            auc = ml.selection_auc(out.labels, out.probabilities, cfg)
            record.update(val_loss=out.loss if np.isfinite(out.probabilities).all() else float("nan"), val_auc=auc)
            return torch.from_numpy(out.probabilities.copy())
        y_true, score = out.positive(self.ctx.pos)
        finite = bool(np.isfinite(score).all())  # a diverged network scores NaN: AUC undefined, loss NaN
        record.update(
            val_loss=out.loss if finite else float("nan"), val_auc=roc_auc(y_true, score) if finite else math.nan
        )
        return torch.from_numpy(out.probabilities.copy())

    def _keep_best(self, state: dict[str, Any], epoch: int, record: dict[str, Any]) -> None:
        """Update the best epoch, the early-stopping count and the history with ``record``."""
        cfg = self.ctx.cfg
        probs = record.pop("probs")
        auc, loss = record["val_auc"], record["val_loss"]
        stop = cfg.early_stopping
        improved = self.val_ds is None or guards.selection_better(
            auc, loss, state["best_auc"], state["best_loss"], criterion=stop.criterion, min_delta=stop.min_delta
        )
        if improved:
            if self.val_ds is not None:
                state["best_probs"] = probs
            state.update(
                best_epoch=epoch + 1,
                best_auc=auc,
                best_loss=loss,
                bad_epochs=0,
                best_state={k: v.detach().clone().cpu() for k, v in self.model.state_dict().items()},
            )
            record["best"] = True
        else:
            state["bad_epochs"] += 1
        state["history"].append(record)
        state["epoch"] = epoch + 1
        patience = cfg.early_stopping.patience
        state["stopped_early"] = bool(patience and state["bad_epochs"] >= patience and epoch + 1 < cfg.epochs)

    def _log(self, epoch: int, stats: EpochStats, record: dict[str, Any]) -> None:
        info = self.ctx.info
        log.log(
            logging.INFO if info.is_main else logging.DEBUG,
            "epoch %d/%d: train_loss %.4f val_loss %.4f val_auc %.4f lr %.3g %.1f images/s%s",
            epoch + 1,
            self.ctx.cfg.epochs,
            stats.loss,
            record["val_loss"],
            record["val_auc"],
            record["lr"],
            stats.images_per_s,
            " (best)" if record["best"] else "",
        )

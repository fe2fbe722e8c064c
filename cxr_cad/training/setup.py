"""What a training run sets up before its first epoch: the data split and labels, the network
and its initial weights, the transform spec, the optimizer and friends, and the per-epoch state
(fresh or restored from ``checkpoint.pt``). Used by :func:`cxr_cad.training.trainer.train_model`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import torch

from cxr_cad.config import TrainConfig
from cxr_cad.errors import ConfigError, ManifestError, WeightsError
from cxr_cad.manifest import manifest_hash as compute_manifest_hash
from cxr_cad.runtime import RuntimeInfo
from cxr_cad.training import checkpoint as ckpt
from cxr_cad.training import rundir
from cxr_cad.training.data import EpochSampler, class_weights, label_indices, sample_weights, split_train_val
from cxr_cad.training.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from cxr_cad.transforms import AugmentSpec, TransformSpec

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class TrainData:
    """The rows a run trains and validates on, their class indices, and how they were chosen."""

    train_df: pd.DataFrame
    val_df: pd.DataFrame | None
    how: str
    y_train: np.ndarray
    y_val: np.ndarray | None
    manifest_hash: str
    augment: AugmentSpec


def prepare_data(train_df: pd.DataFrame, val_df: pd.DataFrame | None, cfg: TrainConfig) -> TrainData:
    """Split (unless ``val_df`` is given), check labels, hash the rows, parse ``cfg.augment``.

    Raises:
        ManifestError: missing or unknown labels, an empty split side, an absent class.
        ConfigError: bad augmentation settings.
    """
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
    return TrainData(train_df, val_df, how, y_train, y_val, compute_manifest_hash(all_rows), _augment(cfg))


def _augment(cfg: TrainConfig) -> AugmentSpec:
    from cxr_cad.transforms import AugmentSpec

    try:
        return AugmentSpec.from_dict(dict(cfg.augment))
    except ConfigError as exc:
        raise ConfigError([f"augment: {p}" for p in exc.problems]) from exc
    except TypeError as exc:  # e.g. a number where (low, high) is expected
        raise ConfigError([f"augment: {exc}"]) from exc


def init_model(cfg: TrainConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(network ``cfg.model.arch``, init record); a parent bundle must have exactly ``data.classes``."""
    from cxr_cad.model import init_model as build

    model, record = build(
        cfg.model.init,
        len(cfg.data.classes),
        cfg.model.in_channels,
        seed=cfg.seed,
        classes=list(cfg.data.classes),
        arch=cfg.model.arch,
    )
    parent = record.get("parent_classes")
    if record.get("init") == "bundle" and list(parent or []) != list(cfg.data.classes):
        raise WeightsError(
            f"--init {cfg.model.init}: the parent bundle's classes {parent} differ from this "
            f"run's data.classes {list(cfg.data.classes)}; fine-tuning needs the same classes "
            "in the same order (set data.classes, or start from imagenet)"
        )
    return model, record


def transform_spec(cfg: TrainConfig) -> TransformSpec:
    """The eval transform spec of ``cfg.model`` (stored in the bundle)."""
    from cxr_cad.transforms import TransformSpec

    return TransformSpec.for_init(
        cfg.model.in_channels,
        image_size=cfg.model.image_size,
        aspect=cfg.model.aspect,
        intensity=cfg.model.intensity,
        intensity_percentiles=tuple(cfg.model.intensity_percentiles),
    )


def run_record(cfg: TrainConfig, data: TrainData, init_record: dict[str, Any], info: RuntimeInfo) -> dict[str, Any]:
    """``run.json``: what this run is (fingerprint, data hash, split, init, versions, runtime)."""
    return {
        "fingerprint": cfg.fingerprint(),
        "manifest_hash": data.manifest_hash,
        "seed": cfg.seed,
        "split": data.how,
        "n_train": len(data.train_df),
        "n_val": 0 if data.val_df is None else len(data.val_df),
        "init": init_record,
        "versions": rundir.package_versions(),
        "runtime": info.to_dict(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@dataclass
class Training:
    """The optimisation machinery of a run."""

    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch.optim.lr_scheduler.LRScheduler (SequentialLR is not one in the stubs)
    scaler: torch.amp.GradScaler | None
    criterion: torch.nn.Module
    sampler: EpochSampler


def build_training(model: torch.nn.Module, cfg: TrainConfig, data: TrainData, info: RuntimeInfo) -> Training:
    """Optimizer, schedule, GradScaler (fp16 only), loss (class-weighted on request), sampler."""
    n_classes = len(cfg.data.classes)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.epochs)
    scaler = torch.amp.GradScaler("cuda") if info.precision == "fp16" else None
    weight = None
    if cfg.data.imbalance == "weighted_loss":
        weight = class_weights(data.y_train, n_classes).to(info.torch_device)
    criterion = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.optim.label_smoothing)
    sampler = EpochSampler(
        len(data.train_df),
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        weights=sample_weights(data.y_train, n_classes) if cfg.data.imbalance == "weighted_sampler" else None,
    )
    return Training(optimizer, scheduler, scaler, criterion, sampler)


def new_state() -> dict[str, Any]:
    """The per-epoch state of a fresh run (what ``checkpoint.pt`` carries besides the weights)."""
    return {
        "epoch": 0,
        "best_epoch": None,
        "best_auc": float("-inf"),
        "best_state": None,
        "best_probs": None,
        "bad_epochs": 0,
        "history": [],
        "stopped_early": False,
    }


def restore(saved: dict[str, Any], model: torch.nn.Module, training: Training, state: dict[str, Any]) -> None:
    """Load a checkpoint's weights, optimizer, schedule, scaler and RNG states; update ``state``."""
    model.load_state_dict(saved["model"])
    training.optimizer.load_state_dict(saved["optimizer"])
    training.scheduler.load_state_dict(saved["scheduler"])
    if training.scaler is not None and saved.get("scaler"):
        training.scaler.load_state_dict(saved["scaler"])
    ckpt.set_rng_states(saved["rng"])
    state.update({k: saved[k] for k in state})


def checkpoint_state(
    state: dict[str, Any], model: torch.nn.Module, training: Training, cfg: TrainConfig
) -> dict[str, Any]:
    """Everything ``checkpoint.pt`` holds after an epoch (see :mod:`cxr_cad.training.checkpoint`)."""
    return {
        **state,
        "model": model.state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(),
        "scaler": training.scaler.state_dict() if training.scaler else None,
        "rng": ckpt.rng_states(),
        "fingerprint": cfg.fingerprint(),
    }

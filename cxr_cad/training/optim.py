"""The optimisation machinery of a run: optimizer, learning-rate schedule, GradScaler, loss and
sampler (:class:`Training`), backbone freezing and DDP / ``torch.compile`` wrapping."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import torch

from cxr_cad.config import OptimConfig, ScheduleConfig, TrainConfig
from cxr_cad.model import set_trainable
from cxr_cad.runtime import RuntimeInfo
from cxr_cad.training.data import EpochSampler, TrainData, class_weights, sample_weights
from cxr_cad.training.multilabel import MaskedBCEWithLogits, pos_weights

log = logging.getLogger(__name__)


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over all parameters.

    Frozen parameters (``requires_grad=False``) stay in the optimizer; they get no
    gradient, so they are neither updated nor decayed while frozen.
    """
    params = list(model.parameters())
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int):
    """An epoch-stepped schedule: cosine to 0 over ``epochs``, step decay, or constant,
    after ``cfg.warmup_epochs`` epochs of linear warm-up from a tenth of the rate."""
    sched = torch.optim.lr_scheduler
    warmup = min(cfg.warmup_epochs, max(epochs - 1, 0))
    main: sched.LRScheduler
    if cfg.name == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=max(epochs - warmup, 1))
    elif cfg.name == "step":
        main = sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    else:
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup == 0:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def set_backbone_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) everything but the classification head ``fc``
    (:func:`cxr_cad.model.set_trainable`; frozen backbone BatchNorm layers run in eval mode,
    so call this again after every ``model.train()`` while frozen)."""
    n = set_trainable(model, "head" if frozen else "all")
    log.debug("backbone %s: %d trainable parameters", "frozen" if frozen else "trainable", n)


def wrap_model(model: torch.nn.Module, info: RuntimeInfo, *, compile_model: bool = False) -> torch.nn.Module:
    """The module the training step calls: DDP under torchrun (built after freezing changes,
    since DDP only synchronises parameters that require grad when it is built), optionally
    ``torch.compile``d. The plain ``model`` keeps the weights (state_dict, validation)."""
    module: torch.nn.Module = model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [info.torch_device.index] if info.device.startswith("cuda") else None
        module = DistributedDataParallel(model, device_ids=device_ids)
    if compile_model:
        module = cast(torch.nn.Module, torch.compile(module))  # an OptimizedModule at run time
    return module


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
    if cfg.data.imbalance == "weighted_loss" and cfg.data.task != "multilabel":
        weight = class_weights(data.y_train, n_classes).to(info.torch_device)
    criterion: torch.nn.Module
    if cfg.data.task == "multilabel":  # sigmoid + BCE, per-finding positive weights, unknown labels masked
        pos_weight = pos_weights(data.y_train).to(info.torch_device) if cfg.data.imbalance == "weighted_loss" else None
        criterion = MaskedBCEWithLogits(pos_weight)
    else:
        criterion = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.optim.label_smoothing)
    sampler = EpochSampler(
        len(data.train_df),
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        weights=sample_weights(data.y_train, n_classes) if cfg.data.imbalance == "weighted_sampler" else None,
    )
    return Training(optimizer, scheduler, scaler, criterion, sampler)

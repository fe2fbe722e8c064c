"""Optimizer, learning-rate schedule, backbone freezing, DDP wrapping and threshold choice."""

from __future__ import annotations

import logging
import math
from typing import cast

import numpy as np
import torch

from cxr_cad.config import OptimConfig, ScheduleConfig, ThresholdConfig
from cxr_cad.metrics import threshold_for_sensitivity
from cxr_cad.runtime import RuntimeInfo

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
    from cxr_cad.model import set_trainable

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


def choose_threshold(y_true: np.ndarray, y_score: np.ndarray, cfg: ThresholdConfig) -> tuple[float, str, dict]:
    """The decision threshold on validation predictions: (threshold, method, detail).

    ``method`` is what goes into the bundle: ``youden``, ``sensitivity`` or ``fixed``;
    ``detail`` records the inputs (counts ``n``, ``n_positive``, ``n_negative``, ``target``
    sensitivity, Youden's ``tie_range``/``n_tied``, a fallback ``reason``, and ``warning``
    when either class has fewer than :data:`cxr_cad.metrics.MIN_CLASS_COUNT` images, which
    is also logged). When validation has a single class the configured ``value`` is used
    with method ``fixed``.
    """
    from cxr_cad.metrics import small_class_warning, youden_choice

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
    else:
        thr = threshold_for_sensitivity(y_true, y_score, cfg.target_sensitivity)
        method = "sensitivity"
        detail["target"] = cfg.target_sensitivity
    if not math.isfinite(thr):
        detail["reason"] = "threshold undefined; threshold.value used"
        return float(cfg.value), "fixed", detail
    return float(thr), method, detail

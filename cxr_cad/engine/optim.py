"""Optimizer, learning-rate schedule, backbone freezing, DDP wrapping and threshold choice."""
from __future__ import annotations

import logging
import math

import numpy as np
import torch

from cxr_cad.config import OptimConfig, ScheduleConfig, ThresholdConfig
from cxr_cad.engine.runtime import RuntimeInfo
from cxr_cad.metrics import threshold_for_sensitivity, youden_threshold

log = logging.getLogger(__name__)


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over all parameters.

    Frozen parameters (``requires_grad=False``) stay in the optimizer; they get no
    gradient, so they are neither updated nor decayed while frozen.
    """
    params = list(model.parameters())
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int):
    """An epoch-stepped schedule: cosine to 0 over ``epochs``, step decay, or constant."""
    if cfg.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


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
        module = torch.compile(module)
    return module


def choose_threshold(y_true: np.ndarray, y_score: np.ndarray, cfg: ThresholdConfig) -> tuple[float, str, dict]:
    """The decision threshold on validation predictions: (threshold, method, detail).

    ``method`` is what goes into the bundle: ``youden``, ``sensitivity`` or ``fixed``;
    ``detail`` records the inputs (counts, ``target`` sensitivity, and a fallback reason).
    When validation has a single class the configured ``value`` is used with method ``fixed``.
    """
    n_pos = int(np.sum(y_true))
    detail: dict = {"n": int(len(y_true)), "n_positive": n_pos, "configured": cfg.method}
    if cfg.method == "fixed":
        return float(cfg.value), "fixed", detail
    if n_pos == 0 or n_pos == len(y_true):
        detail["reason"] = "validation data has one class; threshold.value used"
        log.warning("validation data has one class: decision threshold falls back to %.3f", cfg.value)
        return float(cfg.value), "fixed", detail
    if cfg.method == "youden":
        thr, method = youden_threshold(y_true, y_score), "youden"
    else:
        thr = threshold_for_sensitivity(y_true, y_score, cfg.target_sensitivity)
        method = "sensitivity"
        detail["target"] = cfg.target_sensitivity
    if not math.isfinite(thr):
        detail["reason"] = "threshold undefined; threshold.value used"
        return float(cfg.value), "fixed", detail
    return float(thr), method, detail

"""The network a training run starts from (``model.arch``, ``model.init``) and the eval
transform spec stored with it in the bundle."""

from __future__ import annotations

from typing import Any

import torch

from cxr_cad.config import TrainConfig
from cxr_cad.errors import WeightsError
from cxr_cad.model import init_model as build
from cxr_cad.transforms import TransformSpec

__all__ = ["init_model", "transform_spec"]


def init_model(cfg: TrainConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(network ``cfg.model.arch``, init record); a parent bundle must have exactly ``data.classes``."""
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
    return TransformSpec.for_init(
        cfg.model.in_channels,
        image_size=cfg.model.image_size,
        aspect=cfg.model.aspect,
        intensity=cfg.model.intensity,
        intensity_percentiles=tuple(cfg.model.intensity_percentiles),
    )

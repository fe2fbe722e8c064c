"""The network a training run starts from (``model.arch``, ``model.init``) and the eval
transform spec stored with it in the bundle."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from cxr_cad.config import TrainConfig
from cxr_cad.errors import BundleError, ConfigError, WeightsError
from cxr_cad.model import init_model as build
from cxr_cad.model import load_bundle
from cxr_cad.training.guards import FORCE_HINT, parent_spec_problems
from cxr_cad.transforms import TransformSpec

__all__ = ["check_init", "init_model", "parent_guard", "transform_spec"]

log = logging.getLogger(__name__)


def _init_file(cfg: TrainConfig) -> Path | None:
    """The file ``model.init`` names (a bundle or weights file), or None for ``none``/``imagenet``."""
    spec = str(cfg.model.init)
    if spec == "none" or spec == "imagenet" or spec.startswith("imagenet:"):
        return None
    return Path(spec).expanduser()


def check_init(cfg: TrainConfig) -> None:
    """ConfigError for a ``model.init`` that is none of its forms (checked before the cohort,
    so a mistyped ``--init`` is the error named; the same check as :func:`cxr_cad.model.init_model`)."""
    path = _init_file(cfg)
    if path is not None and not path.is_file():
        raise ConfigError(
            f"--init {cfg.model.init!r}: not 'imagenet', 'imagenet:/path', 'none', or an existing bundle / weights file"
        )


def parent_guard(cfg: TrainConfig) -> list[str]:
    """Fine-tuning a bundle (``model.init``) at other input settings than it was trained with
    (image size, resize mode, intensity standardisation, normalisation) is refused with a
    ConfigError naming each; with ``cfg.force`` it is logged and returned as forced."""
    path = _init_file(cfg)
    if path is None:
        return []
    try:
        parent = load_bundle(path)
    except BundleError:
        return []  # a weights file, not a bundle (or a broken bundle: init_model names it)
    problems = parent_spec_problems(parent.transform_spec.to_dict(), transform_spec(cfg).to_dict())
    if not problems:
        return []
    lines = [f"--init {path}: the parent bundle's input settings differ from this run's ({p})" for p in problems]
    if not cfg.force:
        raise ConfigError(
            [
                *lines,
                "the parent's weights were learnt on the parent's inputs: set the same model.image_size / "
                "model.aspect / model.intensity / model.intensity_percentiles, or " + FORCE_HINT,
            ]
        )
    for line in lines:
        log.warning("forced: %s", line)
    return [f"parent bundle: {line}" for line in lines]


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

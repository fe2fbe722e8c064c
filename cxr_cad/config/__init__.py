"""Typed options (pydantic v2, frozen, validated on construction; no torch): the training
configuration (:mod:`.train`, its sections :mod:`.sections`), the transform chain
(:mod:`.transforms`), which files are accepted (:mod:`.accept`) and the prediction settings
(:mod:`.predict`).

A config file is a YAML mapping whose sections mirror :class:`TrainConfig`::

    epochs: 20
    batch_size: 32
    seed: 0
    data:      {classes: [NORMAL, PNEUMONIA], positive_class: PNEUMONIA, val_fraction: 0.2}
    model:     {arch: resnet18, init: imagenet, image_size: 224}
    optim:     {name: sgd, lr: 0.001, momentum: 0.9}
    schedule:  {name: cosine}
    early_stopping: {patience: 5}
    threshold: {method: youden}
    runtime:   {device: auto, precision: auto, workers: 2}

Every value has a default (the study defaults, see docs/train.md); a file only names what it
changes (:func:`load_config`, :func:`apply_overrides`; every problem is raised together as one
:class:`~cxr_cad.errors.ConfigError`). This module only re-exports.
"""

from __future__ import annotations

from cxr_cad.config.accept import AcceptPolicy
from cxr_cad.config.predict import PredictOptions
from cxr_cad.config.sections import (
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    ScheduleConfig,
    ThresholdConfig,
)
from cxr_cad.config.train import (
    RESUME_FREE_KEYS,
    SCRATCH_RECIPE,
    TrainConfig,
    apply_overrides,
    config_diff,
    load_config,
    read_yaml_mapping,
    recipe_defaults,
)

__all__ = [
    "AcceptPolicy",
    "PredictOptions",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "EarlyStoppingConfig",
    "ThresholdConfig",
    "RuntimeConfig",
    "TrainConfig",
    "load_config",
    "RESUME_FREE_KEYS",
    "apply_overrides",
    "config_diff",
    "read_yaml_mapping",
    "SCRATCH_RECIPE",
    "recipe_defaults",
]

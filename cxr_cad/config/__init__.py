"""Typed options (pydantic v2, frozen, validated on construction; no torch): the training
configuration (:mod:`.train`, its sections :mod:`.sections`; the YAML layout is in
:mod:`.train`'s docstring and docs/train.md), the transform chain (:mod:`.transforms`), which
files are accepted (:mod:`.accept`) and the prediction settings (:mod:`.predict`).
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

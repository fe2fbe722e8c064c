"""The training configuration :class:`TrainConfig`: frozen pydantic models loaded from YAML, validated on construction.

A config file is a YAML mapping whose sections mirror :class:`TrainConfig`::

    epochs: 20
    batch_size: 32
    seed: 0
    data:      {classes: [NORMAL, PNEUMONIA], positive_class: PNEUMONIA, val_fraction: 0.2}
    model:     {arch: resnet18, init: imagenet, image_size: 224}
    optim:     {name: sgd, lr: 0.001, momentum: 0.9}
    schedule:  {name: cosine}
    early_stopping: {patience: 5}
    threshold: {method: sensitivity, target_sensitivity: 0.95}
    runtime:   {device: auto, precision: auto, workers: 2}

Every value has a default (the study defaults, see docs/train.md); a file only names what
it changes. Files are read with ``yaml.safe_load``; command-line flags override the file
through dotted keys (``{"optim.lr": 0.01}``; text values such as ``"0.01"``, ``"none"`` or
``"NORMAL,PNEUMONIA"`` are converted to the setting's type). Every problem found (unknown
keys, wrong types, values out of range) is collected and raised together as one
:class:`~cxr_cad.errors.ConfigError`, each with its location (``optim.lr: ...``).

Objects are frozen: ``cfg.replace(epochs=3)`` returns a validated copy.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator, Field

from cxr_cad.config.base import parse_model
from cxr_cad.config.choices import DEFAULT_ARCH
from cxr_cad.config.sections import (
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    ScheduleConfig,
    ThresholdConfig,
)
from cxr_cad.config.types import ConfigModel, Int, section_default
from cxr_cad.core.yamlfile import read_yaml_file  # regular files only; size/alias/UTF-8 limits
from cxr_cad.errors import ConfigError

__all__ = [
    "TrainConfig",
    "load_config",
    "RESUME_FREE_KEYS",
    "apply_overrides",
    "config_diff",
    "read_yaml_mapping",
    "SCRATCH_RECIPE",
    "recipe_defaults",
]

#: The recommended recipe for training from random initialisation (``model.init: none``):
#: these values replace the (fine-tuning) defaults wherever a file or the command line does
#: not set the key. Chosen by measurement on unseen patients (docs/train.md,
#: benchmarks/generalisation.py).
SCRATCH_RECIPE: dict[str, Any] = {
    "epochs": 12,
    "optim": {"name": "adamw", "lr": 3e-4, "weight_decay": 0.05},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "early_stopping": {"patience": 4},
    "augment": {
        "rotate_deg": 10.0,
        "translate_frac": 0.06,
        "scale": [0.9, 1.1],
        "affine_prob": 0.8,
        "brightness": 0.1,
        "contrast": 0.3,
        "gamma": [0.7, 1.5],
        "blur_sigma": [0.3, 1.2],
        "lowres_zoom": [0.4, 1.0],
        "noise_std": 0.03,
        "intensity_prob": 0.4,
    },
}


def recipe_defaults(d: Mapping[str, Any]) -> dict:
    """``d`` with :data:`SCRATCH_RECIPE` filled in under it when ``d`` asks for ``model.init: none``.

    Keys ``d`` sets win (section by section, and inside ``augment`` option by option).
    """
    d = dict(d)
    model = d.get("model")
    if not (isinstance(model, Mapping) and str(model.get("init", "")).strip().lower() == "none"):
        return d
    out: dict[str, Any] = {}
    for key, value in SCRATCH_RECIPE.items():
        given = d.get(key)
        if isinstance(value, dict) and isinstance(given, Mapping):
            out[key] = {**value, **given}
        elif given is None:
            out[key] = value
    return {**d, **out}


#: Dotted keys that may change between an interrupted run and its resumption
#: (they change speed or storage, not the numbers).
#: ``force`` changes whether a refused run may finish, not its numbers: rerun a refused run
#: folder with ``--force`` to finish it.
RESUME_FREE_KEYS = frozenset({"runtime.workers", "data.cache_dir", "force", "int8"})  # int8: a variant beside


def _mapping_or_empty(value: Any) -> Any:
    """A section or ``augment`` given as null (``optim:`` with nothing under it) is empty."""
    return {} if value is None else value


_Empty = BeforeValidator(_mapping_or_empty)


class TrainConfig(ConfigModel):
    """Everything ``cxr-cad train`` needs besides the manifest and the output folder.

    ``augment`` holds keyword arguments for :class:`cxr_cad.transforms.AugmentSpec`
    (empty = its defaults); they are checked when training starts (this module imports
    neither torch nor MONAI). ``force`` (``--force``): keep a model the guards of
    :mod:`cxr_cad.training.guards` would refuse (a cohort too small to select a model or a
    threshold, a run that diverged or never beat chance, a parent bundle with other input
    settings); what was forced is recorded in the bundle and its model card.
    """

    epochs: Int = Field(default=20, ge=1, le=10000)
    batch_size: Int = Field(default=32, ge=1, le=4096)
    seed: Int = Field(default=0, ge=0, lt=2**32)
    data: Annotated[DataConfig, _Empty] = section_default(DataConfig)
    model: Annotated[ModelConfig, _Empty] = section_default(ModelConfig)
    optim: Annotated[OptimConfig, _Empty] = section_default(OptimConfig)
    schedule: Annotated[ScheduleConfig, _Empty] = section_default(ScheduleConfig)
    early_stopping: Annotated[EarlyStoppingConfig, _Empty] = section_default(EarlyStoppingConfig)
    threshold: Annotated[ThresholdConfig, _Empty] = section_default(ThresholdConfig)
    runtime: Annotated[RuntimeConfig, _Empty] = section_default(RuntimeConfig)
    augment: Annotated[dict[str, Any], _Empty] = Field(default_factory=dict)
    force: bool = False
    int8: bool = False  # store a calibrated, verified int8 variant beside the bundle (cxr_cad.export.variant)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, *, source: str | None = None, prefix: str = "") -> TrainConfig:
        """Build from a (YAML) mapping; raises ConfigError listing every problem, each located
        (``prefix.optim.lr: ...``).

        With ``model.init: none`` the options the mapping does not set come from
        :data:`SCRATCH_RECIPE` (the recommended from-scratch recipe), not the class defaults.
        """
        return parse_model(cls, recipe_defaults(dict(d or {})), source=source, prefix=prefix)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, e.g. ``{"optim.lr": 0.001, ...}`` (for diffs and resume checks)."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict) and key != "augment":
                for k, v in value.items():
                    out[f"{key}.{k}"] = v
            else:
                out[key] = value
        return out

    def fingerprint(self) -> str:
        """sha256 of the settings that change the numbers (everything but RESUME_FREE_KEYS).

        Settings added later (:data:`_ADDED_KEYS`) count only when they differ from their
        default, so run folders written before them keep their fingerprint.
        """
        flat = {
            k: v
            for k, v in self.flat().items()
            if k not in RESUME_FREE_KEYS and not (k in _ADDED_KEYS and v == _ADDED_KEYS[k])
        }
        return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


#: Settings added after run folders were first written -> the value they had implicitly.
_ADDED_KEYS: dict[str, Any] = {
    "model.arch": DEFAULT_ARCH,
    "threshold.calibration": "platt",
    "threshold.cutoff": 0.5,
    "early_stopping.criterion": "auc_then_loss",
    "data.task": "multiclass",
    "data.uncertain": "ignore",
    "data.min_positives": 5,
}


def apply_overrides(d: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict:
    """Return a copy of the nested dict ``d`` with dotted-key ``overrides`` applied.

    ``None`` values in ``overrides`` mean "not given" and are skipped.
    """
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in dict(d).items()}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if "." in key:
            section, name = key.split(".", 1)
            sub = out.get(section)
            if not isinstance(sub, dict):
                sub = {}
            sub[name] = value
            out[section] = sub
        else:
            out[key] = value
    return out


def read_yaml_mapping(path: str | os.PathLike, *, what: str, must_hold: str) -> dict:
    """Read a YAML file that must hold a mapping (an empty file reads as ``{}``).

    Args:
        path: the file; it names every error.
        what: what the file is, for the unreadable-file message (e.g. ``"config file"``).
        must_hold: start of the message when the top level is not a mapping (e.g. ``"the file
            must hold a mapping of options"``); ``", not <type>"`` is appended.

    Raises:
        ConfigError: the file cannot be read, is not valid YAML, or is not a mapping.
    """
    source = str(path)
    loaded = read_yaml_file(path, what=what)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError([f"{must_hold}, not {type(loaded).__name__}"], source)
    return loaded


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (``None`` = all defaults) and apply dotted-key ``overrides``.

    Raises ConfigError (naming the file) for a missing/unreadable file, YAML that is not a
    mapping, unknown keys, wrong types and values out of range — every problem at once.
    """
    data: dict = {}
    source = str(path) if path is not None else "command line"
    if path is not None:
        data = read_yaml_mapping(path, what="config file", must_hold="the file must hold a mapping of options")
    return TrainConfig.from_dict(apply_overrides(data, overrides), source=source)


def config_diff(a: TrainConfig, b: TrainConfig, *, ignore: frozenset[str] = RESUME_FREE_KEYS) -> list[str]:
    """Human lines ``key: a -> b`` for every setting that differs (except ``ignore``)."""
    fa, fb = a.flat(), b.flat()
    return [
        f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}"
        for k in sorted(set(fa) | set(fb))
        if k not in ignore and fa.get(k) != fb.get(k)
    ]

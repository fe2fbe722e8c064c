"""Training configuration: frozen dataclasses loaded from YAML, validated on construction.

A config file is a YAML mapping whose sections mirror :class:`TrainConfig`::

    epochs: 20
    batch_size: 32
    seed: 0
    data:      {classes: [NORMAL, PNEUMONIA], positive_class: PNEUMONIA, val_fraction: 0.2}
    model:     {init: imagenet, image_size: 224}
    optim:     {name: sgd, lr: 0.001, momentum: 0.9}
    schedule:  {name: cosine}
    early_stopping: {patience: 5}
    threshold: {method: youden}
    runtime:   {device: auto, precision: auto, workers: 2}

Every value has a default (the study defaults, see docs/train.md); a file only names what
it changes. Files are read with ``yaml.safe_load``; command-line flags override the file
through dotted keys (``{"optim.lr": 0.01}``). Every problem found (unknown keys, wrong
types, values out of range) is collected and raised together as one
:class:`~cxr_cad.errors.ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxr_cad.config._validate import _build, _check, _coerce, _Section, _type_name
from cxr_cad.config.sections import (
    _SECTIONS,
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    ScheduleConfig,
    ThresholdConfig,
)
from cxr_cad.errors import ConfigError

__all__ = [
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
RESUME_FREE_KEYS = frozenset({"runtime.workers", "data.cache_dir"})


@dataclass(frozen=True)
class TrainConfig(_Section):
    """Everything ``cxr-cad train`` needs besides the manifest and the output folder.

    ``augment`` holds keyword arguments for :class:`cxr_cad.transforms.AugmentSpec`
    (empty = its defaults); they are checked when training starts (this module imports
    neither torch nor MONAI).
    """

    epochs: int = 20
    batch_size: int = 32
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    augment: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "augment", dict(self.augment))
        super().__post_init__()

    def problems(self) -> list[str]:
        p: list[str] = []
        _check(p, 1 <= self.epochs <= 10000, f"epochs must be in [1, 10000], not {self.epochs}")
        _check(p, 1 <= self.batch_size <= 4096, f"batch_size must be in [1, 4096], not {self.batch_size}")
        _check(p, 0 <= self.seed < 2**32, f"seed must be in [0, 2**32), not {self.seed}")
        return p

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, *, source: str | None = None) -> TrainConfig:
        """Build from a (YAML) mapping; raises ConfigError listing every problem.

        With ``model.init: none`` the options the mapping does not set come from
        :data:`SCRATCH_RECIPE` (the recommended from-scratch recipe), not the class defaults.
        """
        d = recipe_defaults(dict(d or {}))
        problems: list[str] = []
        kwargs: dict[str, Any] = {}
        top_hints = typing.get_type_hints(cls)
        for key, value in d.items():
            if key in _SECTIONS:
                if value is None:
                    value = {}
                if not isinstance(value, Mapping):
                    problems.append(f"{key} must be a mapping of options, not {type(value).__name__}")
                    continue
                section, sp = _build(_SECTIONS[key], value, prefix=f"{key}.")
                problems += sp
                if section is not None:
                    kwargs[key] = section
            elif key == "augment":
                if value is not None and not isinstance(value, Mapping):
                    problems.append(f"augment must be a mapping of AugmentSpec options, not {type(value).__name__}")
                else:
                    kwargs[key] = dict(value or {})
            elif key in top_hints:
                ok, conv = _coerce(value, top_hints[key])
                if ok:
                    kwargs[key] = conv
                else:
                    problems.append(f"{key} must be {_type_name(top_hints[key])}, not {value!r}")
            else:
                problems.append(f"unknown option {key!r} (known: {', '.join(sorted(top_hints))})")
        try:
            cfg = cls(**kwargs)
        except ConfigError as exc:
            problems += exc.problems
            cfg = None
        if problems:
            raise ConfigError(problems, source)
        return cfg

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
        """sha256 of the settings that change the numbers (everything but RESUME_FREE_KEYS)."""
        flat = {k: v for k, v in self.flat().items() if k not in RESUME_FREE_KEYS}
        return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


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
    from cxr_cad.io.yamlfile import read_yaml_file  # regular files only; size/alias/UTF-8 limits

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

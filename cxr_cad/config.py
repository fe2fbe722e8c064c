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
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from cxr_cad.errors import ConfigError

__all__ = [
    "DataConfig", "ModelConfig", "OptimConfig", "ScheduleConfig", "EarlyStoppingConfig",
    "ThresholdConfig", "RuntimeConfig", "TrainConfig", "load_config", "RESUME_FREE_KEYS",
]

#: Dotted keys that may change between an interrupted run and its resumption
#: (they change speed or storage, not the numbers).
RESUME_FREE_KEYS = frozenset({"runtime.workers", "data.cache_dir"})


def _check(problems: list[str], ok: bool, msg: str) -> None:
    if not ok:
        problems.append(msg)


class _Section:
    """Mixin: validation on construction, dict round trip."""

    def problems(self) -> list[str]:  # overridden
        return []

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, _Section):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Mapping):
                v = dict(v)
            out[f.name] = v
        return out


@dataclass(frozen=True)
class DataConfig(_Section):
    """Which rows train, which validate, which class is positive, how imbalance is handled.

    ``split``: ``auto`` (a ``split`` column with train/val values if the table has one, else a
    patient-grouped stratified split), ``grouped`` (always split by ``group_col``), ``column``
    (the ``split`` column must exist), ``fold`` (rows whose ``fold`` column equals ``val_fold``
    validate). ``val_fraction`` = 0 trains on everything, without validation.
    ``imbalance``: ``weighted_loss`` (cross-entropy weighted by inverse class frequency),
    ``weighted_sampler`` (class-balanced sampling with replacement) or ``none``.
    """

    classes: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
    positive_class: str = "PNEUMONIA"
    label_col: str = "label"
    group_col: str = "patient_id"
    split: str = "auto"
    val_fraction: float = 0.2
    val_fold: int | None = None
    imbalance: str = "weighted_loss"
    cache_dir: str | None = None     # None = <run dir>/cache

    def problems(self) -> list[str]:
        p: list[str] = []
        _check(p, len(self.classes) >= 2, f"data.classes needs at least 2 class names, got {list(self.classes)}")
        _check(p, len(set(self.classes)) == len(self.classes), f"data.classes has duplicates: {list(self.classes)}")
        _check(p, self.positive_class in self.classes,
               f"data.positive_class {self.positive_class!r} is not one of data.classes {list(self.classes)}")
        _check(p, self.split in ("auto", "grouped", "column", "fold"),
               f"data.split must be auto, grouped, column or fold, not {self.split!r}")
        _check(p, 0.0 <= self.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), not {self.val_fraction}")
        _check(p, self.split != "fold" or self.val_fold is not None, "data.split 'fold' needs data.val_fold")
        _check(p, self.imbalance in ("weighted_loss", "weighted_sampler", "none"),
               f"data.imbalance must be weighted_loss, weighted_sampler or none, not {self.imbalance!r}")
        return p


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Initialisation and input geometry. ``init``: ``imagenet``, ``none`` or a bundle path."""

    init: str = "imagenet"
    image_size: int = 224
    aspect: str = "squash"
    in_channels: int = 1
    freeze_backbone_epochs: int = 0

    def problems(self) -> list[str]:
        p: list[str] = []
        _check(p, bool(self.init), "model.init must be imagenet, none or a path to a bundle")
        _check(p, 32 <= self.image_size <= 2048, f"model.image_size must be in [32, 2048] px, not {self.image_size}")
        _check(p, self.aspect in ("squash", "pad"), f"model.aspect must be squash or pad, not {self.aspect!r}")
        _check(p, self.in_channels in (1, 3), f"model.in_channels must be 1 or 3, not {self.in_channels}")
        _check(p, self.freeze_backbone_epochs >= 0,
               f"model.freeze_backbone_epochs must be >= 0, not {self.freeze_backbone_epochs}")
        return p


@dataclass(frozen=True)
class OptimConfig(_Section):
    """Optimizer. Study default: SGD, momentum 0.9, lr 1e-3 (fine-tuning)."""

    name: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False

    def problems(self) -> list[str]:
        p: list[str] = []
        _check(p, self.name in ("sgd", "adamw"), f"optim.name must be sgd or adamw, not {self.name!r}")
        _check(p, 0.0 < self.lr <= 10.0, f"optim.lr must be in (0, 10], not {self.lr}")
        _check(p, 0.0 <= self.momentum < 1.0, f"optim.momentum must be in [0, 1), not {self.momentum}")
        _check(p, self.weight_decay >= 0.0, f"optim.weight_decay must be >= 0, not {self.weight_decay}")
        _check(p, not (self.nesterov and self.momentum == 0.0), "optim.nesterov needs optim.momentum > 0")
        return p


@dataclass(frozen=True)
class ScheduleConfig(_Section):
    """Learning-rate schedule, stepped once per epoch: ``cosine`` (to 0 over the epochs),
    ``step`` (times ``gamma`` every ``step_size`` epochs) or ``constant``."""

    name: str = "cosine"
    step_size: int = 7
    gamma: float = 0.1

    def problems(self) -> list[str]:
        p: list[str] = []
        _check(p, self.name in ("cosine", "step", "constant"),
               f"schedule.name must be cosine, step or constant, not {self.name!r}")
        _check(p, self.step_size >= 1, f"schedule.step_size must be >= 1 epoch, not {self.step_size}")
        _check(p, 0.0 < self.gamma <= 1.0, f"schedule.gamma must be in (0, 1], not {self.gamma}")
        return p


@dataclass(frozen=True)
class EarlyStoppingConfig(_Section):
    """Stop when validation AUC has not improved by more than ``min_delta`` for ``patience``
    epochs (0 = never stop early). The best epoch's weights are kept either way."""

    patience: int = 5
    min_delta: float = 0.0

    def problems(self) -> list[str]:
        p: list[str] = []
        _check(p, self.patience >= 0, f"early_stopping.patience must be >= 0, not {self.patience}")
        _check(p, 0.0 <= self.min_delta < 1.0, f"early_stopping.min_delta must be in [0, 1), not {self.min_delta}")
        return p


@dataclass(frozen=True)
class ThresholdConfig(_Section):
    """How the decision threshold is chosen on validation data: ``youden`` (max sensitivity +
    specificity - 1), ``sensitivity`` (highest threshold reaching ``target_sensitivity``) or
    ``fixed`` (``value``; also used when there is no validation data)."""

    method: str = "youden"
    target_sensitivity: float = 0.9
    value: float = 0.5

    def problems(self) -> list[str]:
        p: list[str] = []
        _check(p, self.method in ("youden", "sensitivity", "fixed"),
               f"threshold.method must be youden, sensitivity or fixed, not {self.method!r}")
        _check(p, 0.0 < self.target_sensitivity <= 1.0,
               f"threshold.target_sensitivity must be in (0, 1], not {self.target_sensitivity}")
        _check(p, 0.0 <= self.value <= 1.0, f"threshold.value must be in [0, 1], not {self.value}")
        return p


@dataclass(frozen=True)
class RuntimeConfig(_Section):
    """Where it runs. ``precision`` auto = bf16 autocast + channels-last on CPUs with native
    bf16, AMP on CUDA, else fp32 (see cxr_cad.engine.runtime). ``workers``: DataLoader
    decode processes (0 = decode in the training process)."""

    device: str = "auto"
    precision: str = "auto"
    workers: int = 2
    compile: bool = False

    def problems(self) -> list[str]:
        p: list[str] = []
        _check(p, self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
               f"runtime.device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        _check(p, self.precision in ("auto", "fp32", "bf16", "fp16"),
               f"runtime.precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        _check(p, 0 <= self.workers <= 64, f"runtime.workers must be in [0, 64], not {self.workers}")
        return p


_SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "schedule": ScheduleConfig,
    "early_stopping": EarlyStoppingConfig, "threshold": ThresholdConfig, "runtime": RuntimeConfig,
}


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
    def from_dict(cls, d: Mapping[str, Any] | None, *, source: str | None = None) -> "TrainConfig":
        """Build from a (YAML) mapping; raises ConfigError listing every problem."""
        d = dict(d or {})
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


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Convert a YAML/CLI value to the annotated type. Returns (ok, value)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return (type(None) in args), None
        for arg in args:
            if arg is type(None):
                continue
            ok, conv = _coerce(value, arg)
            if ok:
                return True, conv
        return False, value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(tp)
        item_tp = args[0]
        out = []
        for v in value:
            ok, conv = _coerce(v, item_tp)
            if not ok:
                return False, value
            out.append(conv)
        return True, tuple(out)
    if tp is bool:
        if isinstance(value, bool):
            return True, value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return True, value.lower() in ("true", "yes", "1")
        return False, value
    if tp is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, str):
            try:
                return True, int(value)
            except ValueError:
                return False, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return True, str(value)
        return False, value
    return True, value


def _build(cls: type, d: Mapping[str, Any], *, prefix: str) -> tuple[Any, list[str]]:
    hints = typing.get_type_hints(cls)
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key not in hints:
            problems.append(f"unknown option {prefix}{key} (known: {', '.join(sorted(hints))})")
            continue
        ok, conv = _coerce(value, hints[key])
        if ok:
            kwargs[key] = conv
        else:
            problems.append(f"{prefix}{key} must be {_type_name(hints[key])}, not {value!r}")
    try:
        obj = cls(**kwargs)
    except ConfigError as exc:
        return None, problems + exc.problems
    return obj, problems


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


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (``None`` = all defaults) and apply dotted-key ``overrides``.

    Raises ConfigError (naming the file) for a missing/unreadable file, YAML that is not a
    mapping, unknown keys, wrong types and values out of range — every problem at once.
    """
    data: dict = {}
    source = str(path) if path is not None else "command line"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"cannot read the config file: {exc.strerror or exc}"], source) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"the file must hold a mapping of options, not {type(loaded).__name__}"], source)
        data = loaded
    return TrainConfig.from_dict(apply_overrides(data, overrides), source=source)


def config_diff(a: TrainConfig, b: TrainConfig, *, ignore: frozenset[str] = RESUME_FREE_KEYS) -> list[str]:
    """Human lines ``key: a -> b`` for every setting that differs (except ``ignore``)."""
    fa, fb = a.flat(), b.flat()
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(set(fa) | set(fb))
            if k not in ignore and fa.get(k) != fb.get(k)]

"""The sections of a training config (``data``, ``model``, ``optim``, ``schedule``,
``early_stopping``, ``threshold``, ``runtime``): frozen pydantic models, validated on construction.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from cxr_cad.config.choices import ARCH_NAMES, DEFAULT_ARCH, Precision
from cxr_cad.config.types import Channels, ConfigModel, Float, Int, OptInt, OptStr, PercentilePair, StrTuple, problem

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "EarlyStoppingConfig",
    "ThresholdConfig",
    "RuntimeConfig",
    "SECTIONS",
    "ARCH_NAMES",
    "DEFAULT_ARCH",
    "arch_choices",
    "NAME_RE",
    "name_problem",
]


def arch_choices() -> tuple[str, ...]:
    """Names ``model.arch`` accepts (:data:`~cxr_cad.config.choices.ARCH_NAMES`, the default first)."""
    return ARCH_NAMES


#: The characters a class, finding or cohort name may hold (docs/report.md#names): a letter, digit
#: or underscore first, then letters, digits, space and _ - . ( ) + / , : ' % #; at most 64
#: characters. No markup (< > & "), no formula lead (= + - @ first), no control characters.
NAME_RE = re.compile(r"\w[\w .()+/,:'%#-]{0,63}")


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid class/finding/cohort name (see :data:`NAME_RE`), or None."""
    text = str(name)
    if NAME_RE.fullmatch(text) and text == text.strip():
        return None
    return (
        f"{text[:80]!r} is not a valid name: use at most 64 letters, digits, spaces and _ - . ( ) + / , : ' % #, "
        "starting with a letter, digit or underscore"
    )


class DataConfig(ConfigModel):
    """Which rows train, which validate, which class is positive, how imbalance is handled.

    ``split``: ``auto`` (a ``split`` column with train/val values if the table has one, else a
    patient-grouped stratified split), ``grouped`` (always split by ``group_col``), ``column``
    (the ``split`` column must exist), ``fold`` (rows whose ``fold`` column equals ``val_fold``
    validate). ``val_fraction`` = 0 trains on everything, without validation.
    ``imbalance``: ``weighted_loss`` (cross-entropy weighted by inverse class frequency),
    ``weighted_sampler`` (class-balanced sampling with replacement) or ``none``.
    ``task``: ``multiclass`` (one label per image, the study's) or ``multilabel`` (``classes`` are
    findings, each a ``finding_<name>`` column of 1/0/-1/blank; ``positive_class`` is unused;
    ``uncertain``: how -1 values train, ``ignore`` masks them; ``min_positives``: a finding
    counts towards model selection with at least that many validation positives; docs/train.md).
    """

    task: Literal["multiclass", "multilabel"] = "multiclass"
    classes: StrTuple = Field(default=("NORMAL", "PNEUMONIA"), min_length=2)
    positive_class: str = "PNEUMONIA"
    label_col: str = "label"
    group_col: str = "patient_id"
    split: Literal["auto", "grouped", "column", "fold"] = "auto"
    val_fraction: Float = Field(default=0.2, ge=0.0, lt=1.0)
    val_fold: OptInt = None
    imbalance: Literal["weighted_loss", "weighted_sampler", "none"] = "weighted_loss"
    cache_dir: OptStr = None  # None = <run dir>/cache
    uncertain: Literal["ignore", "zeros", "ones"] = "ignore"
    min_positives: Int = Field(default=5, ge=1)

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(classes)) != len(classes):
            raise problem("class names must be distinct")
        bad = [p for p in map(name_problem, classes) if p]
        if bad:
            raise problem("; ".join(bad))
        return classes

    @field_validator("positive_class")
    @classmethod
    def _positive_is_a_class(cls, positive: str, info: ValidationInfo) -> str:
        classes = info.data.get("classes")
        if classes is not None and positive not in classes and info.data.get("task") != "multilabel":
            raise problem(f"must be one of data.classes {list(classes)}")
        return positive

    @field_validator("val_fold")
    @classmethod
    def _fold_given(cls, fold: int | None, info: ValidationInfo) -> int | None:
        if fold is None and info.data.get("split") == "fold":
            raise problem("needed when data.split is 'fold'")
        return fold


class ModelConfig(ConfigModel):
    """Network, initialisation, input geometry and intensity. ``arch``: a registered network
    (:data:`~cxr_cad.config.choices.ARCH_NAMES`, each an entry of :mod:`cxr_cad.model.registry`;
    ``resnet18`` is the study's). ``init``: ``imagenet``,
    ``none`` or a bundle path. ``intensity``: per-image standardisation stored in the bundle's
    transform spec (``percentile``: the ``intensity_percentiles`` (lower, upper) of each
    resized image map to 0 and 1; ``none``: the readers' [0, 1] values, the behaviour before
    spec version 2). ``tta``: ``hflip`` stores the network wrapped to average its probability
    with that of the horizontally flipped image (test-time augmentation, recorded in the
    bundle's ``arch.tta``; the threshold is chosen on validation scored the same way);
    ``none`` = off."""

    arch: str = DEFAULT_ARCH
    init: str = "imagenet"
    image_size: Int = Field(default=224, ge=32, le=2048)
    aspect: Literal["squash", "pad"] = "squash"
    in_channels: Channels = 1
    freeze_backbone_epochs: Int = Field(default=0, ge=0)
    intensity: Literal["percentile", "none"] = "percentile"
    intensity_percentiles: PercentilePair = (0.5, 99.5)
    tta: Literal["none", "hflip"] = "none"

    @field_validator("arch")
    @classmethod
    def _registered(cls, arch: str) -> str:
        if arch not in ARCH_NAMES:
            raise problem(f"must be a registered network: {', '.join(ARCH_NAMES)}")
        return arch

    @field_validator("init")
    @classmethod
    def _init_given(cls, init: str) -> str:
        if not init:
            raise problem("must be imagenet, none or a path to a bundle")
        return init


class OptimConfig(ConfigModel):
    """Optimizer and loss. Study default (fine-tuning): SGD, momentum 0.9, lr 1e-3.
    ``label_smoothing``: cross-entropy label smoothing in [0, 0.5) (0 = off)."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: Float = Field(default=1e-3, gt=0.0, le=10.0)
    momentum: Float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: Float = Field(default=1e-4, ge=0.0)
    nesterov: bool = False
    label_smoothing: Float = Field(default=0.0, ge=0.0, lt=0.5)

    @field_validator("nesterov")
    @classmethod
    def _nesterov_needs_momentum(cls, nesterov: bool, info: ValidationInfo) -> bool:
        if nesterov and info.data.get("momentum") == 0.0:
            raise problem("needs optim.momentum > 0")
        return nesterov


class ScheduleConfig(ConfigModel):
    """Learning-rate schedule, stepped once per epoch: ``cosine`` (to 0 over the epochs),
    ``step`` (times ``gamma`` every ``step_size`` epochs) or ``constant``; ``warmup_epochs``
    first ramps the rate linearly from a tenth of ``optim.lr`` (0 = no warm-up)."""

    name: Literal["cosine", "step", "constant"] = "cosine"
    step_size: Int = Field(default=7, ge=1)
    gamma: Float = Field(default=0.1, gt=0.0, le=1.0)
    warmup_epochs: Int = Field(default=0, ge=0, le=100)


class EarlyStoppingConfig(ConfigModel):
    """Which epoch is kept, and when to stop. ``criterion``: ``auc_then_loss`` (the default)
    keeps the epoch with the highest validation AUC and, among epochs whose AUC is as high
    (a saturated AUC of 1.0 on a small split), the one with the lowest validation loss;
    ``loss`` keeps the lowest validation loss (cxr_cad.training.guards.selection_better).
    Stop when no epoch has become the best for ``patience`` epochs (0 = never stop early);
    ``min_delta``: how much the AUC must rise (``auc_then_loss``) or the loss fall (``loss``)
    to count. The best epoch's weights are kept either way (docs/train.md)."""

    criterion: Literal["auc_then_loss", "loss"] = "auc_then_loss"
    patience: Int = Field(default=5, ge=0)
    min_delta: Float = Field(default=0.0, ge=0.0, lt=1.0)


class ThresholdConfig(ConfigModel):
    """How the decision threshold is chosen on validation data: ``youden`` (max sensitivity +
    specificity - 1), ``sensitivity`` (highest threshold reaching ``target_sensitivity``),
    ``midpoint`` (halfway on the log-odds scale between the two classes' median scores),
    ``calibrated`` (``calibration``: Platt or temperature scaling fitted on the validation
    predictions, stored in the bundle and applied by predict; then ``cutoff`` on the calibrated
    probability) or ``fixed`` (``value``; also used when there is no validation data).
    docs/adaptation.md#threshold-policies. The default, ``sensitivity`` at 0.95, is the policy
    that transferred best to the study's own test split over four models
    (docs/generalisation.md#thresholds-on-test-a)."""

    method: Literal["youden", "sensitivity", "midpoint", "calibrated", "fixed"] = "sensitivity"
    target_sensitivity: Float = Field(default=0.95, gt=0.0, le=1.0)
    value: Float = Field(default=0.5, ge=0.0, le=1.0)
    calibration: Literal["platt", "temperature"] = "platt"
    cutoff: Float = Field(default=0.5, gt=0.0, lt=1.0)


class RuntimeConfig(ConfigModel):
    """Where it runs. ``precision`` auto = bf16 autocast + channels-last on CPUs with native
    bf16, AMP on CUDA, else fp32 (see cxr_cad.runtime). ``workers``: DataLoader
    decode processes (0 = decode in the training process)."""

    device: str = "auto"
    precision: Precision = "auto"
    workers: Int = Field(default=2, ge=0, le=64)
    compile: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
            raise problem("must be auto, cpu, cuda or cuda:N")
        return device


#: Section name -> its model, in the order of :class:`~cxr_cad.config.TrainConfig`.
SECTIONS: dict[str, type[ConfigModel]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "early_stopping": EarlyStoppingConfig,
    "threshold": ThresholdConfig,
    "runtime": RuntimeConfig,
}

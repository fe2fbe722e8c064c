"""The sections of a training config (``data``, ``model``, ``optim``, ``schedule``,
``early_stopping``, ``threshold``, ``runtime``): frozen dataclasses validated on construction.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr_cad.config._validate import _check, _Section


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
    cache_dir: str | None = None  # None = <run dir>/cache

    def problems(self) -> list[str]:
        p: list[str] = []
        _check(p, len(self.classes) >= 2, f"data.classes needs at least 2 class names, got {list(self.classes)}")
        _check(p, len(set(self.classes)) == len(self.classes), f"data.classes has duplicates: {list(self.classes)}")
        _check(
            p,
            self.positive_class in self.classes,
            f"data.positive_class {self.positive_class!r} is not one of data.classes {list(self.classes)}",
        )
        _check(
            p,
            self.split in ("auto", "grouped", "column", "fold"),
            f"data.split must be auto, grouped, column or fold, not {self.split!r}",
        )
        _check(p, 0.0 <= self.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), not {self.val_fraction}")
        _check(p, self.split != "fold" or self.val_fold is not None, "data.split 'fold' needs data.val_fold")
        _check(
            p,
            self.imbalance in ("weighted_loss", "weighted_sampler", "none"),
            f"data.imbalance must be weighted_loss, weighted_sampler or none, not {self.imbalance!r}",
        )
        return p


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Initialisation, input geometry and intensity. ``init``: ``imagenet``, ``none`` or a bundle
    path. ``intensity``: per-image standardisation stored in the bundle's transform spec
    (``percentile``: the ``intensity_percentiles`` (lower, upper) of each resized image map
    to 0 and 1; ``none``: the readers' [0, 1] values, the behaviour before spec version 2).
    ``tta``: ``hflip`` stores the network wrapped to average its probability with that of the
    horizontally flipped image (test-time augmentation, recorded in the bundle's ``arch.tta``;
    the threshold is chosen on validation scored the same way); ``none`` = off."""

    init: str = "imagenet"
    image_size: int = 224
    aspect: str = "squash"
    in_channels: int = 1
    freeze_backbone_epochs: int = 0
    intensity: str = "percentile"
    intensity_percentiles: tuple[float, ...] = (0.5, 99.5)
    tta: str = "none"

    def problems(self) -> list[str]:
        p: list[str] = []
        _check(p, bool(self.init), "model.init must be imagenet, none or a path to a bundle")
        _check(p, 32 <= self.image_size <= 2048, f"model.image_size must be in [32, 2048] px, not {self.image_size}")
        _check(p, self.aspect in ("squash", "pad"), f"model.aspect must be squash or pad, not {self.aspect!r}")
        _check(p, self.in_channels in (1, 3), f"model.in_channels must be 1 or 3, not {self.in_channels}")
        _check(p, self.tta in ("none", "hflip"), f"model.tta must be none or hflip, not {self.tta!r}")
        _check(
            p,
            self.intensity in ("percentile", "none"),
            f"model.intensity must be percentile or none, not {self.intensity!r}",
        )
        lo_hi = self.intensity_percentiles
        _check(
            p,
            len(lo_hi) == 2 and 0.0 <= lo_hi[0] < lo_hi[1] <= 100.0,
            f"model.intensity_percentiles must be [lower, upper] with 0 <= lower < upper <= 100, not {list(lo_hi)}",
        )
        _check(
            p,
            self.freeze_backbone_epochs >= 0,
            f"model.freeze_backbone_epochs must be >= 0, not {self.freeze_backbone_epochs}",
        )
        return p


@dataclass(frozen=True)
class OptimConfig(_Section):
    """Optimizer and loss. Study default (fine-tuning): SGD, momentum 0.9, lr 1e-3.
    ``label_smoothing``: cross-entropy label smoothing in [0, 0.5) (0 = off)."""

    name: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    label_smoothing: float = 0.0

    def problems(self) -> list[str]:
        p: list[str] = []
        _check(p, self.name in ("sgd", "adamw"), f"optim.name must be sgd or adamw, not {self.name!r}")
        _check(p, 0.0 < self.lr <= 10.0, f"optim.lr must be in (0, 10], not {self.lr}")
        _check(p, 0.0 <= self.momentum < 1.0, f"optim.momentum must be in [0, 1), not {self.momentum}")
        _check(p, self.weight_decay >= 0.0, f"optim.weight_decay must be >= 0, not {self.weight_decay}")
        _check(p, not (self.nesterov and self.momentum == 0.0), "optim.nesterov needs optim.momentum > 0")
        _check(
            p,
            0.0 <= self.label_smoothing < 0.5,
            f"optim.label_smoothing must be in [0, 0.5), not {self.label_smoothing}",
        )
        return p


@dataclass(frozen=True)
class ScheduleConfig(_Section):
    """Learning-rate schedule, stepped once per epoch: ``cosine`` (to 0 over the epochs),
    ``step`` (times ``gamma`` every ``step_size`` epochs) or ``constant``; ``warmup_epochs``
    first ramps the rate linearly from a tenth of ``optim.lr`` (0 = no warm-up)."""

    name: str = "cosine"
    step_size: int = 7
    gamma: float = 0.1
    warmup_epochs: int = 0

    def problems(self) -> list[str]:
        p: list[str] = []
        _check(
            p,
            self.name in ("cosine", "step", "constant"),
            f"schedule.name must be cosine, step or constant, not {self.name!r}",
        )
        _check(p, self.step_size >= 1, f"schedule.step_size must be >= 1 epoch, not {self.step_size}")
        _check(p, 0.0 < self.gamma <= 1.0, f"schedule.gamma must be in (0, 1], not {self.gamma}")
        _check(
            p, 0 <= self.warmup_epochs <= 100, f"schedule.warmup_epochs must be in [0, 100], not {self.warmup_epochs}"
        )
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
        _check(
            p,
            self.method in ("youden", "sensitivity", "fixed"),
            f"threshold.method must be youden, sensitivity or fixed, not {self.method!r}",
        )
        _check(
            p,
            0.0 < self.target_sensitivity <= 1.0,
            f"threshold.target_sensitivity must be in (0, 1], not {self.target_sensitivity}",
        )
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
        _check(
            p,
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"runtime.device must be auto, cpu, cuda or cuda:N, not {self.device!r}",
        )
        _check(
            p,
            self.precision in ("auto", "fp32", "bf16", "fp16"),
            f"runtime.precision must be auto, fp32, bf16 or fp16, not {self.precision!r}",
        )
        _check(p, 0 <= self.workers <= 64, f"runtime.workers must be in [0, 64], not {self.workers}")
        return p


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "early_stopping": EarlyStoppingConfig,
    "threshold": ThresholdConfig,
    "runtime": RuntimeConfig,
}

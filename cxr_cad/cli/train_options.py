"""The training flags of ``cxr-cad train`` and ``cxr-cad crossval``, from one table.

Each row names a dotted :class:`~cxr_cad.config.TrainConfig` key; the flag's type and choices
come from that field's declaration (a ``Literal`` gives the choices, so ``--precision`` offers
:data:`cxr_cad.config.choices.PRECISIONS`; ``int``/``float`` the type; ``bool`` a switch), the
help text from the row. A flag not given is None and leaves the config file's value alone
(:func:`overrides_from`).
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from cxr_cad.config import TrainConfig
from cxr_cad.config.choices import ARCH_NAMES, DEFAULT_ARCH

__all__ = ["TRAIN_FLAGS", "Flag", "add_train_flags", "overrides_from"]


@dataclass(frozen=True)
class Flag:
    """One training flag: ``--<dest with dashes>`` sets config ``key``.

    ``help``: its help in ``cxr-cad train`` (``[default]`` in brackets); ``crossval``: its help in
    ``cxr-cad crossval`` (None: not a crossval flag; ``""``: no help text there)."""

    dest: str
    key: str
    group: str
    help: str
    crossval: str | None = None
    metavar: str | None = None


_ARCH_HELP = f"network architecture: {{choices}} [{DEFAULT_ARCH}]"

#: Every training flag, in ``cxr-cad train --help`` order (by group).
TRAIN_FLAGS: tuple[Flag, ...] = (
    Flag("arch", "model.arch", "model", _ARCH_HELP, _ARCH_HELP, metavar="NAME"),
    Flag(
        "init",
        "model.init",
        "model",
        "initial weights: imagenet, imagenet:/path/weights.pth, none, or a bundle "
        "to fine-tune (classes must match) [imagenet]",
        "initial weights for every fold: imagenet, imagenet:/path/weights.pth, none, "
        "or a bundle to fine-tune (default: the config's, imagenet)",
    ),
    Flag("image_size", "model.image_size", "model", "model input side in pixels [224]", "model input side in pixels"),
    Flag("aspect", "model.aspect", "model", "resize mode [squash]"),
    Flag("in_channels", "model.in_channels", "model", "model input channels [1]"),
    Flag(
        "intensity",
        "model.intensity",
        "model",
        "per-image intensity standardisation "
        "stored in the bundle (percentile: 0.5th/99.5th percentiles -> 0/1, the same for every "
        "container; none: the readers' values, the behaviour of bundles before format 2) [percentile]",
    ),
    Flag(
        "tta",
        "model.tta",
        "model",
        "test-time augmentation stored in the bundle (hflip: average with the flipped image) [none]",
        "test-time augmentation stored in every bundle (hflip: average with the horizontally flipped image)",
    ),
    Flag(
        "freeze_backbone_epochs",
        "model.freeze_backbone_epochs",
        "model",
        "train only the head for the first N epochs, then everything [0]",
        metavar="N",
    ),
    Flag("epochs", "epochs", "optimisation", "maximum epochs [20; with --init none 12]", "maximum epochs per fold"),
    Flag("batch_size", "batch_size", "optimisation", "images per step and process [32]", ""),
    Flag("lr", "optim.lr", "optimisation", "learning rate [0.001; with --init none 0.0003]", "learning rate"),
    Flag(
        "optimizer",
        "optim.name",
        "optimisation",
        "[sgd, momentum 0.9; with --init none adamw]",
        "optimizer (default: sgd; with --init none adamw)",
    ),
    Flag("momentum", "optim.momentum", "optimisation", "SGD momentum [0.9]"),
    Flag("weight_decay", "optim.weight_decay", "optimisation", "[0.0001; with --init none 0.05]"),
    Flag("label_smoothing", "optim.label_smoothing", "optimisation", "cross-entropy label smoothing [0]"),
    Flag(
        "warmup_epochs",
        "schedule.warmup_epochs",
        "optimisation",
        "linear learning-rate warm-up epochs [0; with --init none 1]",
    ),
    Flag("schedule", "schedule.name", "optimisation", "learning-rate schedule [cosine]"),
    Flag(
        "patience",
        "early_stopping.patience",
        "optimisation",
        "early stopping: epochs without validation AUC gain; 0 = off [5; with --init none 4]",
        "early stopping patience in epochs; 0 = off",
    ),
    Flag("imbalance", "data.imbalance", "optimisation", "[weighted_loss]"),
    Flag(
        "seed",
        "seed",
        "optimisation",
        "seed of split, initialisation, order and augmentation [0]",
        "seed of the folds, splits, initialisation and augmentation",
    ),
    Flag(
        "classes",
        "data.classes",
        "data and threshold",
        "comma-separated class names, in model output order [NORMAL,PNEUMONIA]",
        "comma-separated class names in model output order",
    ),
    Flag(
        "positive_class",
        "data.positive_class",
        "data and threshold",
        "the class whose probability is scored [PNEUMONIA]",
        "the class whose probability is scored",
    ),
    Flag(
        "split",
        "data.split",
        "data and threshold",
        "how validation rows are chosen (auto: a 'split' column if present, else grouped by patient) [auto]",
    ),
    Flag(
        "val_fraction",
        "data.val_fraction",
        "data and threshold",
        "share of images for validation (grouped split) [0.2]",
        "share of each fold's training images used for inner validation (default 0.2)",
    ),
    Flag("val_fold", "data.val_fold", "data and threshold", "with --split fold: the 'fold' value that validates"),
    Flag(
        "group_col",
        "data.group_col",
        "data and threshold",
        "manifest column that groups images of one patient [patient_id]",
        "manifest column grouping images of one patient (default patient_id)",
    ),
    Flag(
        "threshold",
        "threshold.method",
        "data and threshold",
        "how the decision threshold is chosen on validation data [sensitivity, target 0.95]",
        "how each fold's threshold is chosen on its inner validation split",
    ),
    Flag(
        "target_sensitivity",
        "threshold.target_sensitivity",
        "data and threshold",
        "with --threshold sensitivity [0.95]",
        "with --threshold sensitivity",
    ),
    Flag(
        "cache_dir",
        "data.cache_dir",
        "data and threshold",
        "folder for decoded+resized images, shareable between runs [RUN_DIR/cache]",
        "decoded-image cache (default RUN_DIR/cache)",
    ),
    Flag("device", "runtime.device", "runtime", "auto, cpu, cuda or cuda:N [auto]", "auto, cpu, cuda or cuda:N"),
    Flag(
        "precision",
        "runtime.precision",
        "runtime",
        "[auto: bf16 on CPUs with native bf16, AMP on CUDA, else fp32]",
        "",
    ),
    Flag("workers", "runtime.workers", "runtime", "DataLoader decode processes [2]", "DataLoader decode processes"),
    Flag("compile", "runtime.compile", "runtime", "torch.compile the model"),
    Flag(
        "int8",
        "int8",
        "runtime",
        "also store an int8 variant beside the bundle (model.int8/): calibrated on training images, "
        "verified on the validation split (AUC change <= 0.005, <= 0.5%% of decisions changed), refused "
        "with its reasons otherwise; used by `predict --allow-int8` (docs/predict.md#int8)",
        "as for train, for every fold and the final model (a final model trained on every image has no "
        "validation split: its variant is refused, with that reason)",
    ),
    Flag(
        "force",
        "force",
        "guards",
        "keep a model the guards refuse: a cohort too small to select a model or a threshold, a run whose "
        "loss is not finite or whose validation AUC never beats chance, a parent bundle (--init) with other "
        "input settings; recorded in the bundle and its model card (docs/train.md#guards)",
        "as for train, for every fold; the folds' sizes are checked before any fold trains",
    ),
)


def _field(key: str) -> Any:
    """The pydantic field of a dotted TrainConfig key."""
    model: Any = TrainConfig
    *sections, name = key.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[name]


def _value_kind(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a field's type: choices of a Literal, int/float, a switch for bool."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {"choices": list(typing.get_args(annotation))}
    if origin in (typing.Union, types.UnionType):
        return _value_kind(next(a for a in typing.get_args(annotation) if a is not type(None)))
    if origin is typing.Annotated:
        return _value_kind(typing.get_args(annotation)[0])
    if annotation is bool:
        return {"action": "store_true", "default": None}
    if annotation in (int, float):
        return {"type": annotation}
    return {}


def _keywords(flag: Flag, help_text: str) -> dict[str, Any]:
    field = _field(flag.key)
    kw = _value_kind(field.annotation)
    enum = (field.json_schema_extra or {}).get("enum") if isinstance(field.json_schema_extra, dict) else None
    if enum:
        kw["choices"] = list(enum)
    if flag.dest == "arch":  # the registered networks
        kw["choices"] = list(ARCH_NAMES)
        help_text = help_text.format(choices=", ".join(kw["choices"]))
    if flag.metavar:
        kw["metavar"] = flag.metavar
    if help_text:
        kw["help"] = help_text
    return kw


def add_train_flags(parser: argparse.ArgumentParser, command: Literal["train", "crossval"], *, title: str = "") -> None:
    """The training flags of ``command``: for ``train`` in their groups (model, optimisation,
    data and threshold, runtime, guards), for ``crossval`` in one group called ``title``."""
    groups: dict[str, Any] = {}
    for flag in TRAIN_FLAGS:
        help_text = flag.help if command == "train" else flag.crossval
        if help_text is None:
            continue
        name = flag.group if command == "train" else title
        if name not in groups:
            groups[name] = parser.add_argument_group(name)
        groups[name].add_argument("--" + flag.dest.replace("_", "-"), **_keywords(flag, help_text))


def overrides_from(args: argparse.Namespace, command: Literal["train", "crossval"]) -> dict[str, Any]:
    """``{dotted config key: value}`` of the training flags ``command`` declares (None = not given)."""
    return {
        flag.key: getattr(args, flag.dest, None)
        for flag in TRAIN_FLAGS
        if (flag.help if command == "train" else flag.crossval) is not None
    }

"""``cxr-cad train``: train a network (``--arch``, default ResNet18) on a labelled manifest into a run folder."""

from __future__ import annotations

import argparse
import math
import os

from cxr_cad.tracking import add_track_option

#: option dest -> dotted config key (None values = option not given).
_OVERRIDES = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "seed": "seed",
    "arch": "model.arch",
    "init": "model.init",
    "image_size": "model.image_size",
    "aspect": "model.aspect",
    "in_channels": "model.in_channels",
    "freeze_backbone_epochs": "model.freeze_backbone_epochs",
    "intensity": "model.intensity",
    "tta": "model.tta",
    "label_smoothing": "optim.label_smoothing",
    "warmup_epochs": "schedule.warmup_epochs",
    "lr": "optim.lr",
    "optimizer": "optim.name",
    "momentum": "optim.momentum",
    "weight_decay": "optim.weight_decay",
    "schedule": "schedule.name",
    "patience": "early_stopping.patience",
    "threshold": "threshold.method",
    "target_sensitivity": "threshold.target_sensitivity",
    "classes": "data.classes",
    "positive_class": "data.positive_class",
    "split": "data.split",
    "val_fraction": "data.val_fraction",
    "val_fold": "data.val_fold",
    "group_col": "data.group_col",
    "imbalance": "data.imbalance",
    "cache_dir": "data.cache_dir",
    "device": "runtime.device",
    "precision": "runtime.precision",
    "workers": "runtime.workers",
    "compile": "runtime.compile",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a network (ResNet18 by default) on a labelled manifest",
        description="Train a classifier (--arch; ResNet18 by default) on a labelled manifest. Training/validation are split by "
        "patient (or by a 'split' / 'fold' column); validation AUC picks the best epoch and stops early; the "
        "decision threshold is chosen on validation data. Everything goes into --out (config.yaml, run.json, "
        "split.csv, train_log.csv, checkpoint.pt, model.pt); rerunning the same command resumes. Options "
        "override the --config file; defaults are the study defaults for fine-tuning, and with --init none "
        "the recommended from-scratch recipe (AdamW, warm-up + cosine, intensity and geometric augmentation; "
        "docs/train.md). Under "
        "`torchrun --nproc_per_node N` the same command trains with DistributedDataParallel.",
    )
    p.add_argument("--manifest", required=True, help="labelled manifest CSV (from `cxr-cad ingest`)")
    p.add_argument("--out", required=True, help="run folder (created; rerun to resume)")
    p.add_argument("--config", help="YAML config file (see docs/train.md); options below override it")
    g = p.add_argument_group("model")
    add_arch_option(g)
    g.add_argument(
        "--init",
        help="initial weights: imagenet, imagenet:/path/weights.pth, none, or a bundle "
        "to fine-tune (classes must match) [imagenet]",
    )
    g.add_argument("--image-size", type=int, help="model input side in pixels [224]")
    g.add_argument("--aspect", choices=["squash", "pad"], help="resize mode [squash]")
    g.add_argument("--in-channels", type=int, choices=[1, 3], help="model input channels [1]")
    g.add_argument(
        "--intensity",
        choices=["percentile", "none"],
        help="per-image intensity standardisation "
        "stored in the bundle (percentile: 0.5th/99.5th percentiles -> 0/1, the same for every "
        "container; none: the readers' values, the behaviour of bundles before format 2) [percentile]",
    )
    g.add_argument(
        "--tta",
        choices=["none", "hflip"],
        help="test-time augmentation stored in the bundle (hflip: average with the flipped image) [none]",
    )
    g.add_argument(
        "--freeze-backbone-epochs",
        type=int,
        metavar="N",
        help="train only the head for the first N epochs, then everything [0]",
    )
    _add_optimisation(p)
    g = p.add_argument_group("data and threshold")
    g.add_argument("--classes", help="comma-separated class names, in model output order [NORMAL,PNEUMONIA]")
    g.add_argument("--positive-class", help="the class whose probability is scored [PNEUMONIA]")
    g.add_argument(
        "--split",
        choices=["auto", "grouped", "column", "fold"],
        help="how validation rows are chosen (auto: a 'split' column if present, else grouped by patient) [auto]",
    )
    g.add_argument("--val-fraction", type=float, help="share of images for validation (grouped split) [0.2]")
    g.add_argument("--val-fold", type=int, help="with --split fold: the 'fold' value that validates")
    g.add_argument("--group-col", help="manifest column that groups images of one patient [patient_id]")
    g.add_argument(
        "--threshold",
        choices=["youden", "sensitivity", "fixed"],
        help="how the decision threshold is chosen on validation data [youden]",
    )
    g.add_argument("--target-sensitivity", type=float, help="with --threshold sensitivity [0.9]")
    g.add_argument("--cache-dir", help="folder for decoded+resized images, shareable between runs [RUN_DIR/cache]")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N [auto]")
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="[auto: bf16 on CPUs with native bf16, AMP on CUDA, else fp32]",
    )
    g.add_argument("--workers", type=int, help="DataLoader decode processes [2]")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    add_track_option(p)
    p.set_defaults(func=run)


def _add_optimisation(p: argparse.ArgumentParser) -> None:
    """The optimisation options of ``cxr-cad train``."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="maximum epochs [20; with --init none 12]")
    g.add_argument("--batch-size", type=int, help="images per step and process [32]")
    g.add_argument("--lr", type=float, help="learning rate [0.001; with --init none 0.0003]")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], help="[sgd, momentum 0.9; with --init none adamw]")
    g.add_argument("--momentum", type=float, help="SGD momentum [0.9]")
    g.add_argument("--weight-decay", type=float, help="[0.0001; with --init none 0.05]")
    g.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing [0]")
    g.add_argument("--warmup-epochs", type=int, help="linear learning-rate warm-up epochs [0; with --init none 1]")
    g.add_argument("--schedule", choices=["cosine", "step", "constant"], help="learning-rate schedule [cosine]")
    g.add_argument(
        "--patience",
        type=int,
        help="early stopping: epochs without validation AUC gain; 0 = off [5; with --init none 4]",
    )
    g.add_argument("--imbalance", choices=["weighted_loss", "weighted_sampler", "none"], help="[weighted_loss]")
    g.add_argument("--seed", type=int, help="seed of split, initialisation, order and augmentation [0]")


def add_arch_option(g) -> None:
    """``--arch NAME``: the network (config key ``model.arch``)."""
    from cxr_cad.model.registry import DEFAULT_ARCH, arch_names  # no torch import

    choices = list(arch_names())
    g.add_argument(
        "--arch",
        choices=choices,
        metavar="NAME",
        help=f"network architecture: {', '.join(choices)} [{DEFAULT_ARCH}]",
    )


def overrides_from(args: argparse.Namespace, table: dict[str, str]) -> dict:
    """``{dotted config key: value}`` of the options given (None = not given)."""
    return {key: getattr(args, dest, None) for dest, key in table.items()}


def run(args: argparse.Namespace) -> int:
    from cxr_cad import api
    from cxr_cad.tracking import log_training_run, track_run

    cfg = api.as_config(args.config, overrides_from(args, _OVERRIDES))
    with track_run(args.track, "train", cfg.to_dict()) as tracker:  # --track mlflow (docs/export.md)
        result = api.run_training(args.manifest, cfg, args.out, callbacks=[tracker.epoch_callback()])
        log_training_run(tracker, args.out)
    if int(os.environ.get("RANK", "0")) == 0:
        auc = "n/a" if math.isnan(result.val_auc) else f"{result.val_auc:.4f}"
        print(f"bundle: {result.bundle_path}")
        print(
            f"best epoch: {result.best_epoch} of {result.epochs_run} run"
            f"{' (stopped early)' if result.stopped_early else ''}; validation AUC {auc}; "
            f"threshold {result.threshold:.4f} ({result.threshold_method})"
        )
    return 0

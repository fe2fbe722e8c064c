"""``cxr-cad train``: train a network (``--arch``, default ResNet18) on a labelled manifest into a run folder."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cxr_cad import api
from cxr_cad.cli.train_options import add_train_flags, overrides_from
from cxr_cad.errors import ConfigError
from cxr_cad.tracking import add_track_option, log_training_run, track_run

if TYPE_CHECKING:
    from cxr_cad.config import TrainConfig


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
    add_train_flags(p, "train")
    add_track_option(p)
    p.set_defaults(func=run)


def train_config(config: str | None, overrides: Mapping[str, Any]) -> TrainConfig:
    """The training config of ``--config`` and the flags; an unknown key of the config file is
    reported with the closest valid one (``epoch: unknown key ...; did you mean epochs?``)."""
    from cxr_cad.config import TrainConfig
    from cxr_cad.workflow.suggest import suggest_keys

    try:
        return api.as_config(config, overrides)
    except ConfigError as exc:
        raise ConfigError(suggest_keys(exc.problems, TrainConfig), exc.source) from None


def run(args: argparse.Namespace) -> int:
    cfg = train_config(args.config, overrides_from(args, "train"))
    ids = getattr(args, "include_identifiers", False)  # --track mlflow (docs/export.md)
    with track_run(args.track, "train", cfg.to_dict(), include_identifiers=ids) as tracker:
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

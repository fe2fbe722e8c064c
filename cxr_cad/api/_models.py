"""``train``: a labelled manifest (table or file) and a config -> a bundle; the config and
manifest readers that ``crossval`` (:mod:`cxr_cad.api._crossval`) shares."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cxr_cad.config import TrainConfig, apply_overrides, load_config
from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import ConfigError
from cxr_cad.manifest import read_manifest

if TYPE_CHECKING:
    from cxr_cad.model import Bundle
    from cxr_cad.training.trainer import EpochCallback, TrainResult

log = logging.getLogger(__name__)

__all__ = ["as_config", "read_labelled", "run_training", "train"]


def as_config(config: Any = None, overrides: Mapping[str, Any] | None = None, *, source: str = "config") -> TrainConfig:
    """A :class:`~cxr_cad.config.TrainConfig` from a TrainConfig, a mapping of settings (as the
    YAML file holds them), a YAML file path, or None (the study defaults); ``overrides`` are
    dotted keys (``{"model.arch": "resnet50"}``). Raises ConfigError listing every problem."""
    if config is None or isinstance(config, (str, os.PathLike)):
        return load_config(None if config is None else Path(config), overrides)
    if isinstance(config, TrainConfig):
        if not overrides:
            return config
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a TrainConfig, a mapping or a YAML file, not {type(config).__name__}")
    return TrainConfig.from_dict(apply_overrides(dict(config), overrides), source=source)


def read_labelled(manifest: pd.DataFrame | PathLike, classes: Sequence[str] | None) -> pd.DataFrame:
    """A labelled manifest: a DataFrame as given, or a manifest file read and validated."""
    if isinstance(manifest, pd.DataFrame):
        return manifest
    if any(str(c).startswith("finding_") for c in pd.read_csv(manifest, nrows=0).columns):
        classes = None  # multi-label: `label` holds the findings joined by "|"; finding_<name> columns are checked
    return read_manifest(manifest, require_labels=True, classes=classes)


def _out_dir(out_dir: PathLike | None, what: str) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    path = Path(tempfile.mkdtemp(prefix=f"cxr-cad-{what}-"))
    log.info("%s: run folder %s (pass out_dir to choose it)", what, path)
    return path


def _forced(cfg: TrainConfig, force: bool) -> TrainConfig:
    """``cfg`` with ``force`` set when asked (``force=False`` leaves the config's own value)."""
    return cfg.replace(force=True) if force and not cfg.force else cfg


def run_training(
    manifest: pd.DataFrame | PathLike,
    config: Any = None,
    out_dir: PathLike | None = None,
    *,
    init: str | None = None,
    callbacks: Sequence[EpochCallback] = (),
    force: bool = False,
) -> TrainResult:
    """:func:`train` returning the engine's :class:`~cxr_cad.training.trainer.TrainResult`."""
    from cxr_cad.training.trainer import train_model

    cfg = _forced(as_config(config), force)
    df = read_labelled(manifest, cfg.data.classes)
    out = _out_dir(out_dir, "train")
    result = train_model(df, out, cfg, init=init, callbacks=callbacks)
    if not isinstance(manifest, pd.DataFrame) and int(os.environ.get("RANK", "0")) == 0:
        from cxr_cad.modelcard import add_manifest_to_card

        add_manifest_to_card(result.bundle_path, manifest)  # sources recorded at ingest
    return result


def train(
    manifest: pd.DataFrame | PathLike,
    config: Any = None,
    out_dir: PathLike | None = None,
    *,
    init: str | None = None,
    callbacks: Sequence[EpochCallback] = (),
    force: bool = False,
) -> Bundle:
    """Train a model on a labelled manifest; returns the loaded bundle (``bundle.path``).

    Args:
        manifest: a labelled manifest DataFrame (e.g. from :func:`ingest`) or a manifest file.
        config: a :class:`~cxr_cad.config.TrainConfig`, a mapping of settings
            (``{"epochs": 1, "model": {"init": "none", "image_size": 64}}``), a YAML file, or
            None for the study defaults.
        out_dir: the run folder (rerun to resume); None = a new temporary folder, kept.
        init: overrides ``model.init``.
        callbacks: called after every finished epoch with ``(epoch, log record)``.
        force: keep a model the training guards refuse (too small a cohort, a diverged run, a
            run that never beat chance, a parent bundle with other input settings); recorded
            in the bundle and its model card (``force: true`` in the config does the same).

    Raises:
        ConfigError, ManifestError, WeightsError, BundleError, OutputError, TrainingFailed
        (see ``train_model``).
    """
    from cxr_cad.model import load_bundle  # torch

    result = run_training(manifest, config, out_dir, init=init, callbacks=callbacks, force=force)
    return load_bundle(result.bundle_path)

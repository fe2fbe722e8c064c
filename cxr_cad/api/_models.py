"""``train`` and ``crossval``: a labelled manifest (table or file) and a config -> a bundle / a
cross-validation, and the cross-validation report."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cxr_cad.api._scoring import join_metadata
from cxr_cad.config import TrainConfig, apply_overrides, load_config
from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import ConfigError
from cxr_cad.manifest import read_manifest

if TYPE_CHECKING:
    from cxr_cad.crossvalidation.run import CrossvalResult
    from cxr_cad.model import Bundle
    from cxr_cad.report import ReportOptions, ReportResult
    from cxr_cad.training.trainer import EpochCallback, TrainResult

log = logging.getLogger(__name__)

__all__ = ["as_config", "read_labelled", "run_training", "train", "crossval", "write_cv_report"]


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


def crossval(
    manifest: pd.DataFrame | PathLike,
    config: Any = None,
    out_dir: PathLike | None = None,
    *,
    folds: int = 5,
    init: str | None = None,
    final: bool | str = False,
    n_bootstrap: int = 2000,
    force: bool = False,
) -> CrossvalResult:
    """Patient-grouped K-fold cross-validation of the training recipe.

    Returns the engine's :class:`~cxr_cad.crossvalidation.run.CrossvalResult` (also exported as
    ``CVResult``): ``oof`` (out-of-fold predictions), ``metrics`` (``cv_metrics.json``),
    ``fold_status``, ``final_bundle``. ``final``: False, ``"retrain"`` or ``"ensemble"``.
    ``force``: as :func:`train`, for every fold (and the fold-size check made before any fold
    trains). Write its report with :func:`write_cv_report`.

    Raises:
        ConfigError: ``folds`` < 2, ``n_bootstrap`` < 0, bad config; others as :func:`train`.
    """
    from cxr_cad.crossvalidation.run import run_crossval

    problems = []
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        problems.append(f"folds (--folds) must be at least 2, not {folds}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        problems.append(f"n_bootstrap (--bootstrap) must be >= 0, not {n_bootstrap}")
    if problems:
        raise ConfigError(problems)
    cfg = _forced(as_config(config), force)
    df = read_labelled(manifest, cfg.data.classes)
    return run_crossval(
        df, _out_dir(out_dir, "crossval"), cfg, n_folds=folds, init=init, final=final, n_bootstrap=n_bootstrap
    )


def write_cv_report(
    result: CrossvalResult | pd.DataFrame,
    out_dir: PathLike,
    *,
    positive_class: str,
    cv_metrics: Mapping[str, Any] | None = None,
    manifest: pd.DataFrame | None = None,
    cohort_info: Mapping[str, Any] | None = None,
    options: ReportOptions | None = None,
    pdf: bool = True,
    gradcam_note: str | None = None,
) -> ReportResult:
    """The cross-validation report from the out-of-fold predictions (each fold's own threshold;
    no single model threshold).

    Args:
        result: :func:`crossval`'s result, or the out-of-fold predictions table.
        cv_metrics: the cross-validation summary (default: ``result.metrics``).
        manifest: the cross-validated manifest: its subgroup columns (view, sex, age,
            manufacturer) are joined onto the predictions by ``sop_instance_uid``.
    """
    from cxr_cad.report import ReportOptions, write_report

    oof = result if isinstance(result, pd.DataFrame) else result.oof.copy()
    if cv_metrics is None and not isinstance(result, pd.DataFrame):
        cv_metrics = result.metrics
    if manifest is not None:
        oof = join_metadata(oof, manifest, keys=("sop_instance_uid",))
    opts = (options or ReportOptions()).replace(
        positive_class=positive_class,
        threshold=None,
        cohort_info=dict(cohort_info) if cohort_info is not None else None,
        gradcam_note=gradcam_note
        or "Grad-CAM needs one model; cross-validation has one per fold. Run `cxr-cad evaluate` with a bundle "
        "for the gallery.",
        pdf=pdf,
    )
    return write_report(oof, out_dir, opts, cv=cv_metrics)

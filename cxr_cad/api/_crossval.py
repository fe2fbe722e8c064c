"""``crossval``: patient-grouped K-fold cross-validation in one process (:func:`crossval`), or
one fold per job (:func:`crossval_fold`) pooled by :func:`crossval_merge` into the same numbers
(docs/scale-out.md), and the cross-validation report (:func:`write_cv_report`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cxr_cad.api._models import _forced, _out_dir, as_config, read_labelled  # noqa: PLC2701 - one package
from cxr_cad.api._scoring import join_metadata
from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import ConfigError

if TYPE_CHECKING:
    from cxr_cad.crossvalidation.result import CrossvalResult, FoldResult
    from cxr_cad.report import ReportOptions, ReportResult

log = logging.getLogger(__name__)

__all__ = ["crossval", "crossval_fold", "crossval_merge", "write_cv_report"]


def _check_counts(folds: Any, n_bootstrap: Any = 0) -> None:
    problems = []
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        problems.append(f"folds (--folds) must be at least 2, not {folds}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        problems.append(f"n_bootstrap (--bootstrap) must be >= 0, not {n_bootstrap}")
    if problems:
        raise ConfigError(problems)


def _manifest_name(manifest: pd.DataFrame | PathLike) -> str | None:
    """The manifest file's name (a table read by ``read_manifest`` remembers its file)."""
    if isinstance(manifest, pd.DataFrame):
        path = manifest.attrs.get("manifest_path")
        return Path(path).name if path else None
    return Path(manifest).name


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
    """Patient-grouped K-fold cross-validation of the training recipe, in this process.

    Returns the engine's :class:`~cxr_cad.crossvalidation.result.CrossvalResult` (also exported as
    ``CVResult``): ``oof`` (out-of-fold predictions), ``metrics`` (``cv_metrics.json``),
    ``fold_status``, ``final_bundle``. ``final``: False, ``"retrain"`` or ``"ensemble"``.
    ``force``: as :func:`train`, for every fold (and the fold-size check made before any fold
    trains). Write its report with :func:`write_cv_report`. To run the folds as parallel jobs
    use :func:`crossval_fold` and :func:`crossval_merge` (same numbers).

    Raises:
        ConfigError: ``folds`` < 2, ``n_bootstrap`` < 0, bad config; others as :func:`train`.
    """
    from cxr_cad.crossvalidation.run import run_crossval

    _check_counts(folds, n_bootstrap)
    cfg = _forced(as_config(config), force)
    df = read_labelled(manifest, cfg.data.classes)
    return run_crossval(
        df,
        _out_dir(out_dir, "crossval"),
        cfg,
        n_folds=folds,
        init=init,
        final=final,
        n_bootstrap=n_bootstrap,
        manifest_name=_manifest_name(manifest),
    )


def crossval_fold(
    manifest: pd.DataFrame | PathLike,
    config: Any = None,
    out_dir: PathLike | None = None,
    *,
    fold: int,
    folds: int = 5,
    init: str | None = None,
    force: bool = False,
) -> FoldResult:
    """Fold ``fold`` (0-based) of the cross-validation :func:`crossval` runs, as its own job.

    Run one call per fold (a Slurm array, a Kubernetes indexed Job: docs/scale-out.md), all
    with the same ``out_dir``, manifest and settings, in any order or at once; then
    :func:`crossval_merge`. Returns :class:`~cxr_cad.crossvalidation.result.FoldResult`.

    Raises:
        ConfigError: ``fold`` outside ``0..folds-1``, ``folds`` < 2, ``out_dir`` holds a
            cross-validation with other settings or data; others as :func:`train`.
    """
    from cxr_cad.crossvalidation.run import run_crossval_fold

    _check_counts(folds)
    cfg = _forced(as_config(config), force)
    df = read_labelled(manifest, cfg.data.classes)
    if out_dir is None:
        raise ConfigError(["out_dir (--out) is required for a fold job: every fold writes into the same run folder"])
    return run_crossval_fold(
        df, Path(out_dir), cfg, fold=fold, n_folds=folds, init=init, manifest_name=_manifest_name(manifest)
    )


def crossval_merge(
    run_dir: PathLike,
    manifest: pd.DataFrame | PathLike | None = None,
    config: Any = None,
    *,
    folds: int | None = None,
    final: bool | str = False,
    n_bootstrap: int = 2000,
    force: bool = False,
) -> CrossvalResult:
    """Pool the folds finished in ``run_dir`` into what :func:`crossval` returns and writes
    (the same pooled numbers, per-fold table and final model).

    ``manifest`` / ``config``: None = the copies the run folder keeps; given, they must be the
    ones the folds ran with; so must ``folds`` (None = the run's).

    Raises:
        ConfigError: folds missing or run with another config, manifest or number of folds
            (named), ``n_bootstrap`` < 0; others as :func:`crossval` for the final model.
    """
    from cxr_cad.crossvalidation.run import merge_crossval

    _check_counts(2 if folds is None else folds, n_bootstrap)
    cfg = None if config is None else as_config(config)
    df = None if manifest is None else read_labelled(manifest, cfg.data.classes if cfg else None)
    return merge_crossval(Path(run_dir), df, cfg, n_folds=folds, final=final, n_bootstrap=n_bootstrap, force=force)


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
    if cv_metrics is not None and cv_metrics.get("task") == "multilabel":  # findings overview + per-finding sections
        from cxr_cad.report.cohort import ReportResult
        from cxr_cad.report.multilabel import write_multilabel_report

        name = getattr(result, "manifest_name", None) or ""
        files = write_multilabel_report(cv_metrics, out_dir, pdf=pdf, cohort_name=name)
        return ReportResult(Path(out_dir), files, dict(cv_metrics))
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

"""``predict``, ``evaluate`` and ``write_report``: score images with a bundle, compute the
clinical metrics, write the report; and the one manifest-to-predictions metadata join."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cxr_cad.config import PredictOptions
from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import UsageError

if TYPE_CHECKING:
    from cxr_cad.inference.result import PredictResult
    from cxr_cad.model import Bundle
    from cxr_cad.report import ReportResult

log = logging.getLogger(__name__)

__all__ = ["join_metadata", "read_table", "read_scores", "score", "predict", "evaluate", "write_report"]


def read_table(path: PathLike, what: str) -> pd.DataFrame:
    """A CSV read as text (ids keep their leading zeros); UsageError naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {p} not found")
    try:
        return pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {p} is not a readable CSV table: {exc}") from exc


def read_scores(path: PathLike) -> pd.DataFrame:
    """A predictions/rejected/manifest CSV with ids and labels as text and ``probability`` numeric."""
    return pd.read_csv(
        path,
        dtype={"sop_instance_uid": str, "label": str, "patient_id": str},
        keep_default_na=False,
        na_values={"probability": [""]},
    )


def join_metadata(
    pred: pd.DataFrame,
    manifest: pd.DataFrame,
    keys: Sequence[str] = ("sop_instance_uid", "path"),
    *,
    columns: Sequence[str] | None = None,
    strict: bool = True,
) -> pd.DataFrame:
    """Add manifest columns (patient id, view, sex, age, manufacturer...) to predictions.

    Joined on the first of ``keys`` that both tables have filled in every prediction row;
    prediction columns win. ``columns``: only these manifest columns (in this order).
    Raises UsageError when no key is shared (``strict=False``: returns ``pred`` unchanged).
    """
    wanted = list(columns) if columns is not None else list(manifest.columns)
    for key in keys:
        if key in pred.columns and key in manifest.columns and (pred[key].astype(str) != "").all():
            extra = [c for c in wanted if c in manifest.columns and (c not in pred.columns or c == key)]
            if key not in extra:
                extra.insert(0, key)
            if len(extra) < 2 and not strict:
                return pred
            right = manifest[extra].drop_duplicates(subset=[key]).astype({key: str})
            return pred.astype({key: str}).merge(right, on=key, how="left")
    if not strict:
        return pred
    raise UsageError(
        f"cannot join the manifest to the predictions: they share no filled column among {', '.join(keys)}"
    )


def cohort_shift(pred: pd.DataFrame, bundle: Bundle | None) -> tuple[dict | None, bool]:
    """Whether the scored cohort is unlike the model's training images (docs/shift.md), from the
    predictions' ``shift_score`` (and age/view) and the bundle's training summary: ``(result,
    flagged only by the age/view comparison)``. Without the bundle the verdict comes from the
    ``shift_score`` column alone (the age/view comparison needs the bundle's summary).
    ``(None, False)`` ("not computed") when the column holds no score."""
    if "shift_score" not in pred.columns:
        return None, False
    from cxr_cad.shift.monitor import summary_from_bundle, table_shift

    table = pred.assign(shift_score=pd.to_numeric(pred["shift_score"], errors="coerce"))
    if not table["shift_score"].notna().any():
        return None, False
    if "patient_age_years" in table.columns:
        table["patient_age_years"] = pd.to_numeric(table["patient_age_years"], errors="coerce")
    summary = summary_from_bundle(bundle) if bundle is not None else None
    try:
        result, newly = table_shift(table, summary if summary is not None else {})
    except (KeyError, ValueError) as exc:  # a summary this code cannot use: reported as "not computed"
        log.info("cohort shift not computed: %s", exc)
        return None, False
    if result is not None and summary is None:
        result = {**result, "message": f"{result['message']} (from the shift_score column; age and view not compared)"}
    return result, newly


def _bundle_path(bundle: Bundle | PathLike) -> str:
    path = bundle if isinstance(bundle, (str, os.PathLike)) else getattr(bundle, "path", "")
    if not path:
        raise UsageError("the bundle has no file path; pass the bundle file (model.pt) instead")
    return os.fspath(path)


def score(
    bundle: Bundle | PathLike,
    sources: Sequence[PathLike] | PathLike,
    out_dir: PathLike,
    options: PredictOptions | None = None,
) -> PredictResult:
    """Score ``sources`` (folders, manifest files, image files) into ``out_dir``
    (predictions.csv, rejected.csv, summary.json); resumes an interrupted run there."""
    from cxr_cad.inference.predict import predict

    srcs = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    return predict([os.fspath(s) for s in srcs], out_dir, _bundle_path(bundle), options or PredictOptions())


def _options(options: PredictOptions | None, values: dict[str, Any]) -> PredictOptions:
    """``options`` with ``values`` changed (validated: a bad value is a ConfigError)."""
    if options is None:
        return PredictOptions(**values)
    if not values:
        return options
    return options.replace(**values)


def predict(
    bundle: Bundle | PathLike,
    sources: Sequence[PathLike] | PathLike | pd.DataFrame,
    out_dir: PathLike | None = None,
    *,
    options: PredictOptions | None = None,
    **option_values: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score images with a model bundle: ``(predictions_df, rejected_df)``.

    A file that cannot be read or is not accepted never stops the run: it is a row of
    ``rejected_df`` (``path``, ``reason``, ``detail``).

    Args:
        bundle: a loaded :class:`~cxr_cad.model.Bundle` (from :func:`train`) or a bundle file.
        sources: folders (recursive), manifest files, image files, or a manifest DataFrame.
        out_dir: keep the CSVs there (resumable); None = a temporary folder, removed.
        options: a :class:`~cxr_cad.config.PredictOptions`; or give its fields as
            keywords (``batch_size=8, workers=0, device="cpu"``, ``policy=AcceptPolicy(...)``).
    """
    opts = _options(options, option_values)
    with tempfile.TemporaryDirectory(prefix="cxr-cad-predict-") as tmp:
        if isinstance(sources, pd.DataFrame):
            from cxr_cad.manifest import write_manifest

            manifest_file = Path(tmp) / "manifest.csv"
            write_manifest(sources, manifest_file, relative=False)
            sources = [manifest_file]
        out = Path(out_dir) if out_dir is not None else Path(tmp) / "scores"
        log.info("%s", score(bundle, sources, out, opts).summary_line())
        return read_scores(out / "predictions.csv"), read_table(out / "rejected.csv", "rejected-files table")


def write_report(
    predictions: pd.DataFrame,
    out_dir: PathLike,
    *,
    bundle: Bundle | PathLike | None = None,
    manifest: pd.DataFrame | None = None,
    **report_options: Any,
) -> ReportResult:
    """Write the clinical report (report.html, report.pdf, metrics.json, figures) for labelled
    predictions, e.g. :func:`predict`'s on a labelled manifest.

    Args:
        predictions: ``label`` and ``probability`` per image (``path`` for Grad-CAM).
        bundle: the model that made them: header, threshold, positive class, Grad-CAM gallery.
        manifest: its subgroup columns (view, sex, age, manufacturer) are joined on.
        **report_options: keywords of :func:`cxr_cad.report.write_report` (``positive_class``,
            ``threshold``, ``options=ReportOptions(...)``, ``pdf``, ``rejected_df`` ...).
    """
    from cxr_cad.model import load_bundle  # torch
    from cxr_cad.report import GradcamSource, model_info_from_bundle
    from cxr_cad.report import write_report as _write

    if manifest is not None:
        predictions = join_metadata(predictions, manifest)
    if bundle is not None:
        loaded = load_bundle(bundle) if isinstance(bundle, (str, os.PathLike)) else bundle
        report_options.setdefault("model_info", model_info_from_bundle(loaded, _bundle_path(bundle)))
        if "path" in predictions.columns:
            report_options.setdefault("gradcam", GradcamSource.from_bundle(loaded))
    return _write(predictions, out_dir, **report_options)


def evaluate(
    predictions: pd.DataFrame,
    *,
    bundle: Bundle | PathLike | None = None,
    positive_class: str | None = None,
    threshold: float | None = None,
    out_dir: PathLike | None = None,
    **report_options: Any,
) -> dict:
    """The clinical metrics of labelled predictions: the ``metrics.json`` dict of a report
    (AUC with DeLong and bootstrap CIs, operating points, calibration, subgroups ...).

    ``out_dir``: also keep the report there (else it is written to a temporary folder,
    without PDF and Grad-CAM). Other keywords as :func:`write_report`.
    """
    if out_dir is not None:
        return write_report(
            predictions, out_dir, bundle=bundle, positive_class=positive_class, threshold=threshold, **report_options
        ).data
    report_options.setdefault("pdf", False)
    report_options.setdefault("gradcam", None)
    with tempfile.TemporaryDirectory(prefix="cxr-cad-evaluate-") as tmp:
        return write_report(
            predictions, tmp, bundle=bundle, positive_class=positive_class, threshold=threshold, **report_options
        ).data

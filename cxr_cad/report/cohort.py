"""One labelled cohort's report folder: :func:`write_report` (``report.html``, ``report.pdf``,
``metrics.json``, ``predictions.csv``, the figures and the Grad-CAM gallery, replaced together)
and :func:`model_info_from_bundle` (the report header of a model bundle)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

import pandas as pd

from cxr_cad.core.atomic import PathLike, atomic_write_many
from cxr_cad.core.columns import IDENTIFIER_COLUMNS
from cxr_cad.errors import OutputError, UsageError
from cxr_cad.explain.gradcam import GradcamSource, write_gallery
from cxr_cad.metrics import jsonable
from cxr_cad.report import pdf  # pdf.pdf_bytes looked up at call time (tests replace it)
from cxr_cad.report.build import build_report_data
from cxr_cad.report.clinical import find_model_card, jsonable_shift
from cxr_cad.report.figures import FIGURE_FILES, write_figures
from cxr_cad.report.html import render_html
from cxr_cad.report.options import LegacyReportKwargs, ReportOptions, fold_legacy_kwargs
from cxr_cad.report.prepare import dedupe_rows, prepare_predictions
from cxr_cad.report.view import build_document

if TYPE_CHECKING:
    from cxr_cad.model.bundle import Bundle

__all__ = ["NO_MODEL_NOTE", "ReportResult", "csv_cell", "model_info_from_bundle", "write_report"]

log = logging.getLogger(__name__)

NO_MODEL_NOTE = (
    "Grad-CAM explanations are not included: this report was written from a table of "
    "predictions without the model and the images, and Grad-CAM needs both."
)


@dataclass
class ReportResult:
    """Where the report went and the numbers in it (the content of ``metrics.json``)."""

    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    data: dict = field(default_factory=dict)


def model_info_from_bundle(bundle: Bundle, path: str | os.PathLike[str] | None = None) -> dict:
    """Header fields for a loaded :class:`cxr_cad.model.Bundle` (no identifiers)."""
    meta = dict(getattr(bundle, "meta", None) or {})
    extra = meta.get("extra") or {}
    return jsonable(
        {
            "name": Path(path).name if path else "model bundle",
            "sha256": bundle.sha256,
            "classes": [str(c) for c in bundle.classes],
            "positive_class": str(bundle.positive_class),
            "threshold": float(bundle.threshold),
            "threshold_bundle": float(bundle.threshold),
            "threshold_method": bundle.threshold_method,
            "threshold_selection": dict(getattr(bundle, "threshold_selection", None) or {}),
            "training_manifest_hash": bundle.manifest_hash,
            "created": bundle.created,
            "versions": dict(bundle.versions or {}),
            "transform_spec": _spec_dict(bundle.transform_spec),
            "train_config": getattr(bundle, "train_config", None) or {},
            "training": (extra.get("training") if isinstance(extra, dict) else None) or {},
            "init": meta.get("init") or {},
            "model_card": find_model_card(path or getattr(bundle, "path", None)),
        }
    )


def _spec_dict(spec: object) -> Any:
    """The transform spec as a plain dict (a dataclass with ``to_dict``, a pydantic model, or a dict)."""
    for method in ("to_dict", "model_dump"):
        if callable(getattr(spec, method, None)):
            return getattr(spec, method)()
    return spec


def _predictions_table(ev: pd.DataFrame, d: dict, include_identifiers: bool) -> pd.DataFrame:
    """predictions.csv: image_index, ids, fold, label, probability, decisions (no patient ids)."""
    pos, neg = d["positive_class"], d["negative_class"]
    cols = ["image_index"] + [c for c in ("sop_instance_uid", "fold") if c in ev.columns]
    if include_identifiers:
        cols += [c for c in IDENTIFIER_COLUMNS if c in ev.columns]
    out = ev[cols].copy()
    out["label"] = ev["label"].map(csv_cell)
    out["probability"] = ev["score"].map(lambda v: f"{v:.6f}")
    for op in d["operating_points"]:
        name = "decision" if op["name"] == "model" else f"decision_{op['name']}"
        if op["threshold"] is not None:
            out[name] = [csv_cell(pos if s >= op["threshold"] else neg) for s in ev["score"]]
        elif "threshold" in ev.columns:  # each fold's own threshold, per row
            thr = pd.to_numeric(ev["threshold"], errors="coerce").to_numpy()
            out["threshold"] = thr
            out[name] = [csv_cell(pos if s >= t else neg) for s, t in zip(ev["score"], thr, strict=True)]
    return out


def csv_cell(value: object) -> str:
    """A text cell that a spreadsheet will not run as a formula: one starting with = + - @ gets a
    leading single quote (docs/report.md#names)."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def write_report(
    predictions: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    options: ReportOptions | Mapping[str, Any] | None = None,
    *,
    model_info: Mapping[str, Any] | None = None,
    rejected_df: pd.DataFrame | None = None,
    cv: Mapping[str, Any] | None = None,
    comparison: Mapping[str, Any] | None = None,
    gradcam: GradcamSource | None = None,
    shift: Mapping[str, Any] | None = None,
    **legacy: Unpack[LegacyReportKwargs],
) -> ReportResult:
    """Write a complete report folder for one labelled cohort.

    Args:
        predictions: one row per image: ``label`` (class names), ``probability`` (positive-class
            probability in [0, 1]); optional ``sop_instance_uid``, ``fold`` (cross-validation),
            ``patient_id``, ``path`` (needed for Grad-CAM), ``view_position``, ``patient_sex``,
            ``patient_age``/``patient_age_years``, ``manufacturer``.
        out_dir: report folder (created; existing report files are replaced).
        options: :class:`ReportOptions`: statistics, positive class and threshold, cohort
            description, identifiers, PDF (default ``ReportOptions()``); a mapping of its fields
            is validated into one.
        model_info: header fields (see :func:`model_info_from_bundle`); supplies the positive
            class and threshold that ``options`` leaves unset.
        rejected_df: files not scored, with a ``reason`` column (counted by reason code).
        cv: cross-validation summary (``cv_metrics.json``); per-fold curves come from ``fold``.
        comparison: ``{"predictions": DataFrame, "name": str, "name_a": str, "sha256": str}``,
            the other model's scores of the same images (joined on ``sop_instance_uid``).
        gradcam: model + transform spec for the Grad-CAM gallery; None skips it (with
            ``options.gradcam_note``).
        shift: the cohort-shift (out-of-distribution) result, ``cohort_score, threshold,
            flagged, n_images, n_flagged, fraction_flagged, message``; shown and written as
            ``metrics["shift"]``.
        **legacy: the fields of :class:`ReportOptions` that were keyword arguments before
            (``positive_class``, ``threshold``, ``threshold_method``, ``threshold_source``,
            ``cohort_info``, ``include_identifiers``, ``gradcam_note``, ``label_col``,
            ``score_col``, ``pdf``); folded into ``options``.

    Duplicated rows (same ``sop_instance_uid``, label and probability) are counted once and
    named in ``metrics["warnings"]``; the same image with different values is refused.

    Returns:
        :class:`ReportResult` with the file paths and the metrics dict.

    Raises:
        ConfigError: a bad option value (a model threshold outside [0, 1] included).
        UsageError: no positive class, or one that contradicts the model's.
        ManifestError: missing columns, labels outside two classes, scores outside [0, 1],
            no image with both a label and a score, no id column to pair a comparison on.
        OutputError: the folder cannot be written.
    """
    opts = fold_legacy_kwargs(options, dict(legacy))
    info, opts, negative = _resolve_classes_and_threshold(opts, model_info)
    out = _report_folder(out_dir)
    predictions, dup_warning = dedupe_rows(predictions)
    ev, not_evaluated = prepare_predictions(
        predictions,
        positive_class=opts.positive_class,  # type: ignore[arg-type]  # resolved: never None here
        negative_class=negative,
        label_col=opts.label_col,
        score_col=opts.score_col,
    )
    d = build_report_data(
        ev, not_evaluated, opts, model_info=info or None, rejected=rejected_df, cv=cv, comparison=comparison
    )
    _add_shift_and_duplicates(d, shift, dup_warning)
    files = _write_staged(out, d, ev, gradcam, opts)
    log.info("report written to %s (%d images evaluated, AUC %s)", out, len(ev), d["auc"]["delong"]["auc"])
    return ReportResult(out_dir=out, files=files, data=d)


def _resolve_classes_and_threshold(
    options: ReportOptions, model_info: Mapping[str, Any] | None
) -> tuple[dict, ReportOptions, str | None]:
    """The positive class and threshold from the options, else from the model: ``(model info with
    the threshold used, options with positive class and threshold filled in, negative class)``."""
    info = dict(model_info or {})
    positive_class = options.positive_class
    if positive_class is not None and info.get("positive_class") not in (None, str(positive_class)):
        raise UsageError(
            f"positive class {positive_class!r} differs from the model's "
            f"{info['positive_class']!r}, whose probability the predictions hold"
        )
    positive_class = positive_class if positive_class is not None else info.get("positive_class")
    if positive_class is None:
        raise UsageError(
            "the positive class is not known: give it (e.g. --positive-class PNEUMONIA) "
            "or a model bundle that records it"
        )
    threshold, method, source = options.threshold, options.threshold_method, options.threshold_source
    if threshold is None and info.get("threshold") is not None:
        threshold = float(info["threshold"])
        method = method or info.get("threshold_method")
        source = source or "bundle"
    elif threshold is not None and source is None:
        source = "command line" if "command line" in str(method or "") else "caller"
    if info:
        info["threshold"], info["threshold_method"] = threshold, method or info.get("threshold_method")
    others = [c for c in info.get("classes", []) if str(c) != str(positive_class)]
    resolved = options.replace(
        positive_class=positive_class, threshold=threshold, threshold_method=method, threshold_source=source
    )
    return info, resolved, others[0] if len(others) == 1 else None


def _report_folder(out_dir: str | os.PathLike[str]) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the report folder {out}: {exc}") from exc
    return out


def _remove_stale_outputs(out: Path) -> None:
    """Outputs of an earlier report in this folder that this report may not rewrite."""
    old_png = [out / f.replace(".svg", ".png") for f in FIGURE_FILES]  # figures of earlier versions
    for stale in [
        *out.glob("gradcam_*.png"),
        *(out / f for f in FIGURE_FILES),
        *old_png,
        out / "report.pdf",
        out / "rejected.csv",
    ]:
        stale.unlink(missing_ok=True)


#: prefix of the folder inside the report folder where a report is written before it is moved in
STAGING_PREFIX = ".cxr-cad-report-"


def _write_staged(
    out: Path, d: dict, ev: pd.DataFrame, gradcam: GradcamSource | None, options: ReportOptions
) -> dict[str, Path]:
    """Write every file into a staging folder inside ``out``, then move them in: a failed write
    (full disk, unreadable figure) leaves the folder as it was, without partial files."""
    try:
        stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as exc:
        raise OutputError(f"cannot write the report into {out}: {exc.strerror or exc}") from exc
    try:
        images = _figures_and_gallery(d, ev, stage, gradcam, options.gradcam_note)
        staged = _write_outputs(stage, d, ev, images, options)
        _remove_stale_outputs(out)
        for old in out.glob(STAGING_PREFIX + "*"):  # left by a killed earlier run
            if old != stage:
                shutil.rmtree(old, ignore_errors=True)
        files = {}
        for name, path in staged.items():
            os.replace(path, out / path.name)
            files[name] = out / path.name
        return files
    except (OutputError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OutputError(f"cannot write the report into {out}: {reason.replace(str(stage), str(out))}") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _add_shift_and_duplicates(d: dict, shift: Mapping[str, Any] | None, dup_warning: str | None) -> None:
    d["shift"] = jsonable_shift(shift)
    if dup_warning:
        d["warnings"].insert(0, dup_warning)
        d["duplicates_removed"] = int(dup_warning.split(" ", 1)[0])
    cmp_ = d.get("comparison") or {}
    for name, result in ((_model_name(d), d["shift"]), (cmp_.get("name_b"), cmp_.get("shift_b"))):
        if result and result.get("flagged"):  # each warning names the model whose training data it compares with
            d["warnings"].insert(
                0,
                f"Cohort shift, {name}: "
                + str(result.get("message") or "this cohort differs from the training data; results may not transfer"),
            )


def _model_name(d: dict) -> str:
    """How warnings name the report's model: the comparison's name for it, else its name and short hash."""
    if (d.get("comparison") or {}).get("name_a"):
        return str(d["comparison"]["name_a"])
    m = d.get("model") or {}
    name, sha = str(m.get("name") or "the model"), str(m.get("sha256") or "")[:12]
    return f"{name} ({sha})" if sha and sha not in name else name


def _figures_and_gallery(
    d: dict, ev: pd.DataFrame, out: Path, gradcam: GradcamSource | None, note: str | None
) -> dict[str, Path]:
    """Write the figures and the Grad-CAM gallery (``d["gradcam"]``); returns {file name: path}."""
    images = write_figures(d, ev, out)
    fixed = [o["threshold"] for o in d["operating_points"] if o["threshold"] is not None]
    if gradcam is not None and fixed:
        g = write_gallery(gradcam, ev, fixed[0], out)
        images.update({c["file"]: out / c["file"] for c in g["cases"]})
    else:
        g = {"cases": [], "note": note or NO_MODEL_NOTE}
    d["gradcam"] = g
    return images


def _write_outputs(
    out: Path, d: dict, ev: pd.DataFrame, images: dict[str, Path], options: ReportOptions
) -> dict[str, Path]:
    """metrics.json, predictions.csv, report.html (and report.pdf), replaced together."""
    doc = build_document(d)
    files = {
        "metrics.json": out / "metrics.json",
        "predictions.csv": out / "predictions.csv",
        "report.html": out / "report.html",
        **images,
    }
    table = _predictions_table(ev, d, options.include_identifiers)
    try:
        content: dict[PathLike, str | bytes] = {
            files["metrics.json"]: json.dumps(d, indent=2, allow_nan=False) + "\n",
            files["predictions.csv"]: table.to_csv(index=False, lineterminator="\n"),
            files["report.html"]: render_html(doc, images),
        }
        if options.pdf:
            files["report.pdf"] = out / "report.pdf"
            content[files["report.pdf"]] = pdf.pdf_bytes(doc, images)
    except OSError as exc:  # a figure that cannot be read back
        raise OutputError(f"cannot write the report into {out}: {exc}") from exc
    atomic_write_many(content)
    return files

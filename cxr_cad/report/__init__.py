"""Clinical metric reports: ``report.html`` (self-contained), ``report.pdf``, ``metrics.json``,
``predictions.csv`` and the figures as PNG files, all in one folder.

The report computes no statistics of its own (everything comes from :mod:`cxr_cad.metrics`);
HTML and PDF are drawn from one document model whose numbers are formatted from the values
written to ``metrics.json``. Patient identifiers (patient ID, file paths, study UIDs) are
written only with ``include_identifiers=True``.

Typical use::

    from cxr_cad.report import write_report
    result = write_report(predictions_df, "report/", positive_class="PNEUMONIA", threshold=0.5)
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_cad.errors import OutputError, UsageError
from cxr_cad.report.build import IDENTIFIER_COLUMNS, ReportOptions, build_report_data, prepare_predictions
from cxr_cad.report.clinical import dedupe_rows, jsonable_shift
from cxr_cad.report.gradcam import GradcamSource, write_gallery

__all__ = ["write_report", "ReportResult", "ReportOptions", "GradcamSource", "model_info_from_bundle"]

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


def model_info_from_bundle(bundle: Any, path: str | os.PathLike | None = None) -> dict:
    """Header fields for a loaded :class:`cxr_cad.model.Bundle` (no identifiers)."""
    from cxr_cad.metrics import jsonable
    from cxr_cad.report.clinical import find_model_card

    meta = dict(getattr(bundle, "meta", None) or {})
    extra = meta.get("extra") or {}
    spec = bundle.transform_spec.to_dict() if hasattr(bundle.transform_spec, "to_dict") else bundle.transform_spec
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
            "transform_spec": spec,
            "train_config": getattr(bundle, "train_config", None) or {},
            "training": (extra.get("training") if isinstance(extra, dict) else None) or {},
            "init": meta.get("init") or {},
            "model_card": find_model_card(path or getattr(bundle, "path", None)),
        }
    )


def _atomic_text(path: Path, text: str) -> None:
    from cxr_cad.io.files import umask_file_mode

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.chmod(tmp, umask_file_mode())  # mkstemp creates 0600; follow the umask like every output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _predictions_table(ev: pd.DataFrame, d: dict, include_identifiers: bool) -> pd.DataFrame:
    """predictions.csv: image_index, ids, fold, label, probability, decisions (no patient ids)."""
    pos, neg = d["positive_class"], d["negative_class"]
    cols = ["image_index"] + [c for c in ("sop_instance_uid", "fold") if c in ev.columns]
    if include_identifiers:
        cols += [c for c in IDENTIFIER_COLUMNS if c in ev.columns]
    out = ev[cols].copy()
    out["label"] = ev["label"]
    out["probability"] = ev["score"].map(lambda v: f"{v:.6f}")
    for op in d["operating_points"]:
        name = "decision" if op["name"] == "model" else f"decision_{op['name']}"
        if op["threshold"] is not None:
            out[name] = [pos if s >= op["threshold"] else neg for s in ev["score"]]
        elif "threshold" in ev.columns:  # each fold's own threshold, per row
            thr = pd.to_numeric(ev["threshold"], errors="coerce").to_numpy()
            out["threshold"] = thr
            out[name] = [pos if s >= t else neg for s, t in zip(ev["score"], thr)]
    return out


def write_report(
    predictions: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    positive_class: str | None = None,
    threshold: float | None = None,
    threshold_method: str | None = None,
    model_info: Mapping[str, Any] | None = None,
    cohort_info: Mapping[str, Any] | None = None,
    rejected_df: pd.DataFrame | None = None,
    cv: Mapping[str, Any] | None = None,
    comparison: Mapping[str, Any] | None = None,
    include_identifiers: bool = False,
    gradcam: GradcamSource | None = None,
    gradcam_note: str | None = None,
    label_col: str = "label",
    score_col: str | None = None,
    options: ReportOptions = ReportOptions(),
    pdf: bool = True,
    threshold_source: str | None = None,
    shift: Mapping[str, Any] | None = None,
) -> ReportResult:
    """Write a complete report folder for one labelled cohort.

    Args:
        predictions: one row per image: ``label`` (class names), ``probability`` (positive-class
            probability in [0, 1]); optional ``sop_instance_uid``, ``fold`` (cross-validation),
            ``patient_id``, ``path`` (needed for Grad-CAM), ``view_position``, ``patient_sex``,
            ``patient_age``/``patient_age_years``, ``manufacturer``.
        out_dir: report folder (created; existing report files are replaced).
        positive_class: label of the positive class; default ``model_info["positive_class"]``.
        threshold: the model's stored decision threshold; default ``model_info["threshold"]``;
            None reports only the cohort's Youden threshold.
        threshold_method: how that threshold was chosen (shown in the header and Methods).
        model_info: header fields (see :func:`model_info_from_bundle`).
        cohort_info: ``name``, ``manifest_hash``, ``date`` of the cohort.
        rejected_df: files not scored, with a ``reason`` column (counted by reason code).
        cv: cross-validation summary (``cv_metrics.json``); per-fold curves come from ``fold``.
        comparison: ``{"predictions": DataFrame, "name": str, "name_a": str, "sha256": str}``,
            the other model's scores of the same images (joined on ``sop_instance_uid``).
        include_identifiers: also write ``patient_id``, ``path`` and study UIDs to predictions.csv.
        gradcam: model + transform spec for the Grad-CAM gallery; None skips it (with a note).
        gradcam_note: the note shown when ``gradcam`` is None.
        options: CI level, bootstrap resamples and seed, calibration bins, prevalences.
        pdf: also write report.pdf (without it an older report.pdf in ``out_dir`` is removed).
        threshold_source: where ``threshold`` came from: ``"bundle"``, ``"command line"``,
            ``"predictions table"``; default ``"bundle"`` when it is taken from ``model_info``,
            else ``"caller"``. Only ``"bundle"`` is described as fixed before this cohort.
        shift: the cohort-shift (out-of-distribution) result, ``cohort_score, threshold,
            flagged, n_images, n_flagged, fraction_flagged, message``; shown and written as
            ``metrics["shift"]``.

    Duplicated rows (same ``sop_instance_uid``, label and probability) are counted once and
    named in ``metrics["warnings"]``; the same image with different values is refused.

    Returns:
        :class:`ReportResult` with the file paths and the metrics dict.

    Raises:
        UsageError: missing columns, labels outside two classes, no positive class, nothing to evaluate.
        OutputError: the folder cannot be written.
    """
    from cxr_cad.report.figures import write_figures
    from cxr_cad.report.html import render_html
    from cxr_cad.report.pdf import render_pdf
    from cxr_cad.report.view import build_document

    info = dict(model_info or {})
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
    if threshold is None and info.get("threshold") is not None:
        threshold = float(info["threshold"])
        threshold_method = threshold_method or info.get("threshold_method")
        threshold_source = threshold_source or "bundle"
    elif threshold is not None and threshold_source is None:
        threshold_source = "command line" if "command line" in str(threshold_method or "") else "caller"
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise UsageError(f"threshold must be within [0, 1], not {threshold}")
    if info:
        info["threshold"], info["threshold_method"] = threshold, threshold_method or info.get("threshold_method")
    others = [c for c in info.get("classes", []) if str(c) != str(positive_class)]
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the report folder {out}: {exc}") from exc
    predictions, dup_warning = dedupe_rows(predictions)
    ev, not_evaluated = prepare_predictions(
        predictions,
        positive_class=positive_class,
        negative_class=others[0] if len(others) == 1 else None,
        label_col=label_col,
        score_col=score_col,
    )
    # outputs of an earlier report in this folder that this report may not rewrite
    from cxr_cad.report.figures import FIGURE_FILES

    old_png = [out / f.replace(".svg", ".png") for f in FIGURE_FILES]  # figures of earlier versions
    for stale in [
        *out.glob("gradcam_*.png"),
        *(out / f for f in FIGURE_FILES),
        *old_png,
        out / "report.pdf",
        out / "rejected.csv",
    ]:
        stale.unlink(missing_ok=True)
    d = build_report_data(
        ev,
        not_evaluated,
        threshold=threshold,
        threshold_method=threshold_method,
        model_info=info or None,
        cohort_info=cohort_info,
        rejected=rejected_df,
        cv=cv,
        comparison=comparison,
        options=options,
        threshold_source=threshold_source,
    )
    d["shift"] = jsonable_shift(shift)
    if dup_warning:
        d["warnings"].insert(0, dup_warning)
        d["duplicates_removed"] = int(dup_warning.split(" ", 1)[0])
    if d["shift"] and d["shift"].get("flagged"):
        d["warnings"].insert(
            0,
            "Cohort shift: "
            + str(d["shift"].get("message") or "this cohort differs from the training data; results may not transfer"),
        )
    images = write_figures(d, ev, out)
    fixed = [o["threshold"] for o in d["operating_points"] if o["threshold"] is not None]
    if gradcam is not None and fixed:
        g = write_gallery(gradcam, ev, fixed[0], out)
        images.update({c["file"]: out / c["file"] for c in g["cases"]})
    else:
        g = {"cases": [], "note": gradcam_note or NO_MODEL_NOTE}
    d["gradcam"] = g
    doc = build_document(d)
    files = {
        "metrics.json": out / "metrics.json",
        "predictions.csv": out / "predictions.csv",
        "report.html": out / "report.html",
        **images,
    }
    try:
        _atomic_text(files["metrics.json"], json.dumps(d, indent=2, allow_nan=False) + "\n")
        _atomic_text(
            files["predictions.csv"],
            _predictions_table(ev, d, include_identifiers).to_csv(index=False, lineterminator="\n"),
        )
        _atomic_text(files["report.html"], render_html(doc, images))
        if pdf:
            files["report.pdf"] = render_pdf(doc, images, out / "report.pdf")
    except OSError as exc:
        raise OutputError(f"cannot write the report into {out}: {exc}") from exc
    log.info("report written to %s (%d images evaluated, AUC %s)", out, len(ev), d["auc"]["delong"]["auc"])
    return ReportResult(out_dir=out, files=files, data=d)

"""The report of one scored cohort for a multi-label model (one sigmoid per finding), reached
from ``cxr-cad evaluate --model BUNDLE`` and ``cxr-cad report predictions.csv`` through
:func:`cxr_cad.api._report.report_cohort` (docs/report.md#multi-label-reports).

Input: a predictions table with ``probability_<F>`` and ``decision_<F>`` per finding
(:mod:`cxr_cad.inference.outputs`) and the truth per finding: ``finding_<F>`` columns (1, 0,
-1/blank unknown; from the table or the joined manifest) or, failing those, the ``label``
column (``Effusion|Mass`` / ``No Finding``; unknown labels then count as absent). Each
finding's threshold is the bundle's stored one; without the bundle it is read back from the
table's decision columns. Statistics: :func:`cxr_cad.metrics.multilabel.multilabel_summary`
(per-finding DeLong AUC, sensitivity/specificity at the threshold, macro/micro, small-sample
flags, co-occurrence, patient-cluster bootstrap when a ``patient_id`` column is filled);
document: :func:`cxr_cad.report.multilabel.write_multilabel_report`, with Grad-CAM of the
positive calls per finding (:func:`cxr_cad.explain.gradcam.write_finding_gallery`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cxr_cad.api._scoring import join_metadata, read_table
from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import ManifestError, UsageError
from cxr_cad.inference.outputs import FINDING_PRESENT, multilabel_findings
from cxr_cad.manifest import manifest_hash, read_manifest
from cxr_cad.manifest.multilabel import NO_FINDING, finding_column, finding_matrix
from cxr_cad.metrics.multilabel import MIN_POSITIVES, multilabel_summary

if TYPE_CHECKING:
    from cxr_cad.model import Bundle
    from cxr_cad.report import ReportOptions, ReportResult

__all__ = ["is_multilabel", "report_multilabel", "table_findings"]

log = logging.getLogger(__name__)

PROBABILITY_PREFIX = "probability_"
DECISION_PREFIX = "decision_"


def table_findings(pred: pd.DataFrame) -> list[str]:
    """The findings a predictions table has ``probability_<F>`` columns for, in column order."""
    return [str(c)[len(PROBABILITY_PREFIX) :] for c in pred.columns if str(c).startswith(PROBABILITY_PREFIX)]


def is_multilabel(pred: pd.DataFrame, bundle: Bundle | None) -> bool:
    """A multi-label bundle, or (without one) a table with per-finding columns and no ``probability``."""
    if bundle is not None:
        return multilabel_findings(dict(getattr(bundle, "meta", None) or {})) is not None
    return "probability" not in pred.columns and bool(table_findings(pred))


def _thresholds_from_decisions(pred: pd.DataFrame, findings: list[str]) -> list[tuple[str, float]]:
    """``[(finding, threshold)]`` read back from a table's decisions: the lowest probability
    called present (every decision is ``probability >= threshold``). UsageError when a finding
    has no decision column or its decisions contradict one threshold."""
    out = []
    for f in findings:
        dcol = DECISION_PREFIX + f
        if dcol not in pred.columns:
            raise UsageError(
                f"the predictions table has {PROBABILITY_PREFIX}{f} but no {dcol} column; give --model BUNDLE "
                "(its stored thresholds)"
            )
        p = pd.to_numeric(pred[PROBABILITY_PREFIX + f], errors="coerce").to_numpy(dtype=np.float64)
        called = pred[dcol].astype(str).str.strip().to_numpy() == FINDING_PRESENT
        thr = float(p[called].min()) if called.any() else float(np.nextafter(np.nanmax(p), np.inf))
        if (p[~called] >= thr).any():
            raise UsageError(f"the {dcol} column does not follow one threshold; give --model BUNDLE")
        out.append((f, thr))
    return out


def _truth(pred: pd.DataFrame, findings: list[str]) -> tuple[np.ndarray, str]:
    """``(y (n, K) of 1/0/-1, how the labels were read)``."""
    if all(finding_column(f) in pred.columns for f in findings):
        return finding_matrix(pred, findings), "finding_<F> columns (blank / -1: unknown, left out of that finding)"
    if "label" in pred.columns:
        labels = pred["label"].astype("string").fillna("").str.strip()
        if (labels == "").any():
            raise ManifestError([f"{int((labels == '').sum())} row(s) have no label; give --manifest with finding_<F>"])
        sets = [set(v.split("|")) - {NO_FINDING} for v in labels]
        y = np.array([[1 if f in s else 0 for f in findings] for s in sets], dtype=np.int8).reshape(-1, len(findings))
        return y, "the label column (findings joined by '|'): unknown labels cannot be told apart and count as absent"
    missing = ", ".join(finding_column(f) for f in findings)
    raise ManifestError(
        [f"no truth per finding: the table has neither {missing} nor a label column; give --manifest M.csv"]
    )


def _groups(pred: pd.DataFrame) -> np.ndarray | None:
    if "patient_id" not in pred.columns:
        return None
    ids = pred["patient_id"].astype("string").fillna("").str.strip()
    return None if (ids == "").any() else ids.to_numpy(dtype=str)


def _gradcam(
    bundle: Bundle | None, pred: pd.DataFrame, findings: list[tuple[str, float]], out: Path, n: int
) -> tuple[dict | None, dict[str, Path]]:
    if bundle is None or n <= 0 or "path" not in pred.columns:
        why = "no --model" if bundle is None else "not requested" if n <= 0 else "no 'path' column"
        return {"cases": [], "note": f"Per-finding Grad-CAM not produced ({why})."}, {}
    from cxr_cad.explain.gradcam import GradcamSource, write_finding_gallery  # torch

    out.mkdir(parents=True, exist_ok=True)
    g = write_finding_gallery(GradcamSource.from_bundle(bundle), pred, findings, out, n)
    return g, {c["file"]: out / c["file"] for c in g["cases"]}


def _findings(pred: pd.DataFrame, bundle: Bundle | None) -> tuple[list[tuple[str, float]], Mapping[str, Any], str]:
    """(findings with their thresholds, the bundle's multi-label training record, where the
    thresholds come from): the bundle's, else read back from the table's decision columns."""
    if bundle is None:
        findings = _thresholds_from_decisions(pred, table_findings(pred))
        return findings, {}, "read back from the predictions table's decision_<F> columns (no --model given)"
    findings = multilabel_findings(dict(bundle.meta)) or []
    record = (bundle.meta.get("extra") or {}).get("multilabel") or {}
    missing = [f for f, _ in findings if PROBABILITY_PREFIX + f not in pred.columns]
    if missing:
        raise UsageError(
            f"the predictions table has no {', '.join(PROBABILITY_PREFIX + f for f in missing)} column(s): "
            "it was not made by this model"
        )
    return findings, record, "stored in the bundle, one per finding"


def _describe(
    summary: dict[str, Any],
    record: Mapping[str, Any],
    source: str,
    label_note: str,
    bundle_info: Mapping[str, Any] | None,
    cohort: Mapping[str, Any],
    rejected: pd.DataFrame | PathLike | None,
) -> None:
    """Add to ``summary`` what the report says beside the numbers: how each threshold was
    chosen, the model, the cohort and the rejected images."""
    methods = record.get("thresholds") or {}
    for row in summary["per_finding"]:
        how = (methods.get(row["finding"]) or {}).get("method")
        row["threshold_note"] = f"stored, {how}" if how else "from the decision columns"
    rej = rejected if rejected is None or isinstance(rejected, pd.DataFrame) else read_table(rejected, "rejected")
    info = dict(bundle_info or {})
    summary.update(
        uncertain=record.get("uncertain", "not recorded"),
        selection=record.get("selection"),
        threshold_source=source,
        label_note=label_note,
        model=f"{info.get('name', '')} (SHA-256 {str(info.get('sha256', ''))[:12]})" if info else None,
        cohort={k: v for k, v in cohort.items() if isinstance(v, (str, int, float)) or v is None},
        n_rejected=0 if rej is None else len(rej),
        rejected_by_reason={} if rej is None else {str(k): int(v) for k, v in rej["reason"].value_counts().items()},
    )


def report_multilabel(
    pred: pd.DataFrame,
    out_dir: PathLike,
    options: ReportOptions,
    *,
    bundle: Bundle | None = None,
    bundle_info: Mapping[str, Any] | None = None,
    manifest: pd.DataFrame | PathLike | None = None,
    rejected: pd.DataFrame | PathLike | None = None,
    cv: object = None,
    comparison: object = None,
    gradcam_per_finding: int = 2,
) -> ReportResult:
    """Write the multi-label report of ``pred`` into ``out_dir`` (report.html, report.pdf,
    metrics.json, Grad-CAM pictures). ``options``: alpha, n_bootstrap, seed, pdf, cohort_info.

    Raises UsageError for options that have no multi-label meaning (one ``--threshold``,
    ``--compare``, ``--cv-metrics``) or a table without per-finding columns of the bundle's
    findings; ManifestError when the truth per finding cannot be read."""
    from cxr_cad.report.cohort import ReportResult
    from cxr_cad.report.multilabel import write_multilabel_report

    if options.threshold is not None:
        raise UsageError("a multi-label model has one threshold per finding, stored in the bundle; drop --threshold")
    if comparison is not None or cv is not None:
        raise UsageError("--compare / --cv-metrics are for binary models; a multi-label report takes neither")
    findings, record, source = _findings(pred, bundle)
    cohort = dict(options.cohort_info or {})
    if manifest is not None:
        table = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest, check_files=False)
        cohort["manifest_hash"] = manifest_hash(table)
        pred = join_metadata(pred, table)
    names = [f for f, _ in findings]
    y, label_note = _truth(pred, names)
    scores = pred[[PROBABILITY_PREFIX + f for f in names]].apply(pd.to_numeric, errors="coerce").to_numpy()
    groups = _groups(pred)
    summary = multilabel_summary(
        y,
        scores,
        names,
        [t for _, t in findings],
        groups=groups,
        min_positives=int(record.get("min_positives", MIN_POSITIVES)),
        alpha=options.alpha,
        n_bootstrap=options.n_bootstrap if groups is not None else 0,
        seed=options.seed,
    )
    if groups is None:
        label_note += "; no patient_id: no patient-cluster bootstrap"
    _describe(summary, record, source, label_note, bundle_info, cohort, rejected)
    out = Path(out_dir)
    pred = pred.assign(image_index=np.arange(len(pred)))
    summary["gradcam"], images = _gradcam(bundle, pred, findings, out, gradcam_per_finding)
    name = str(cohort.get("name") or "")
    files = write_multilabel_report(summary, out, pdf=options.pdf, cohort_name=name, images=images)
    files.update(images)
    macro = summary["macro"]["auc"]
    log.info(
        "multi-label report written to %s (%d images, macro AUC %s over %d findings)",
        out,
        summary["n_images"],
        f"{macro:.3f}" if math.isfinite(macro) else "not estimable",
        summary["macro"]["n_findings"],
    )
    return ReportResult(out, files, summary)

"""The end of a :func:`~cxr_cad.inference.predict.predict` run (rank 0): the journals merged into
``predictions.csv`` / ``rejected.csv``, the counts filled into the :class:`PredictResult`, the
cohort's shift written to ``shift.json`` and the run record to ``summary.json``."""

from __future__ import annotations

import collections
import dataclasses
import logging
from pathlib import Path

from cxr_cad.core.atomic import atomic_write_json
from cxr_cad.inference.outputs import (
    FINDING_PRESENT,
    PREDICTIONS,
    REJECTED,
    SUMMARY,
    merge_outputs,
    multilabel_prediction_columns,
)
from cxr_cad.inference.result import PredictResult
from cxr_cad.shift.monitor import SHIFT_FILE, cohort_shift

__all__ = ["finish_run"]

#: predict's logger: its warnings are prefixed per model by ``cxr_cad.api._report.named_warnings``.
log = logging.getLogger("cxr_cad.inference.predict")


def finish_run(
    result: PredictResult,
    out: Path,
    has_labels: bool,
    positive: str,
    shift_summary: dict | None = None,
    findings: list[tuple[str, float]] | None = None,
) -> None:
    """Merge the journals into the final CSVs and write ``summary.json`` (rank 0)."""
    columns = multilabel_prediction_columns([f for f, _ in findings]) if findings else None
    records = merge_outputs(out, result.n_inputs, with_label=has_labels, columns=columns)
    reasons = collections.Counter(r["reason"] for r in records if r["kind"] == "rejected")
    result.reasons = dict(sorted(reasons.items()))
    result.n_rejected = sum(reasons.values())
    result.n_predicted = result.n_inputs - result.n_rejected
    result.n_positive = sum(1 for r in records if r["kind"] == "prediction" and r.get("decision") == positive)
    if findings:  # multi-label: images called present per finding (docs/predict.md#multi-label-models)
        result.positives_by_finding = {
            f: sum(1 for r in records if r["kind"] == "prediction" and r.get(f"decision_{f}") == FINDING_PRESENT)
            for f, _ in findings
        }
    (out / SHIFT_FILE).unlink(missing_ok=True)  # of an earlier run in this folder
    if shift_summary is not None:  # docs/shift.md
        result.shift = cohort_shift(
            [r.get("shift_score", "") for r in records if r["kind"] == "prediction"], shift_summary
        )
        atomic_write_json(out / SHIFT_FILE, result.shift)
        if result.shift["flagged"]:
            log.warning("dataset shift: %s", result.shift["message"])
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "out_dir"}
    summary["images_per_s"] = round(result.images_per_s, 3)
    summary["predictions_csv"] = PREDICTIONS
    summary["rejected_csv"] = REJECTED
    atomic_write_json(out / SUMMARY, summary)

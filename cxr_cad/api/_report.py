"""The clinical report of one scored cohort, written once for ``cxr-cad report``, ``cxr-cad
evaluate`` and the workflow's report step: :func:`cohort_info` (what the report says about the
cohort) and :func:`report_cohort` (bundle header, Grad-CAM, dataset shift, the report folder).
What a predictions table itself records is read in :mod:`cxr_cad.api._report_table`;
:func:`~cxr_cad.api._report_evaluate.evaluate_cohort` (score a labelled cohort, optionally with a
second model, then :func:`report_cohort`) is in :mod:`cxr_cad.api._report_evaluate`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cxr_cad.api._report_multilabel import is_multilabel, report_multilabel
from cxr_cad.api._report_table import cohort_name, resolve_positive_class, table_model, table_threshold
from cxr_cad.api._scoring import cohort_shift, join_metadata, read_table
from cxr_cad.config.sections import name_problem
from cxr_cad.core.atomic import PathLike, atomic_write_csv
from cxr_cad.core.columns import REJECTED_COLUMNS
from cxr_cad.errors import ConfigError, ManifestError, UsageError
from cxr_cad.manifest import manifest_hash, read_manifest

if TYPE_CHECKING:
    from cxr_cad.model import Bundle
    from cxr_cad.report import ReportOptions, ReportResult

__all__ = ["INGESTED_SOURCE", "check_table", "cohort_info", "model_label", "named_warnings", "report_cohort"]

log = logging.getLogger(__name__)

#: The cohort's ``source`` when its manifest has an ``ingest.json`` and nothing else says where it is from.
INGESTED_SOURCE = "DICOM/image folder ingested by cxr-cad ingest"


def cohort_info(
    name: str | None = None,
    *,
    default_name: str = "",
    info: Mapping[str, Any] | PathLike | None = None,
    manifest: PathLike | None = None,
    policy: Mapping[str, Any] | None = None,
    date: str | None = None,
    record_date: bool = True,
    validation: str | None = None,
    ingest_source: str | None = INGESTED_SOURCE,
) -> dict:
    """The cohort fields of a report. Each later source fills only what is still missing:

    1. ``info``: a cohort description (``--cohort-info`` YAML/JSON file, or the workflow's
       ``cohort:`` block as a mapping; empty values dropped);
    2. ``ingest.json`` beside ``manifest`` (written by ``cxr-cad ingest``): the ingest rules
       (modalities, lateral views, VOI, counts; ``policy`` when ``ingest.json`` has none) and,
       with ``ingest_source``, the ``source``;
    3. ``name`` (wins over the description's) else the description's, else ``default_name``;
       ``date`` (wins) else the description's (``record_date``: the key is kept, None when
       unknown); ``validation`` (e.g. "internal: held-out patients ...").

    Raises ConfigError for a cohort description file that cannot be read or checked.
    """
    from cxr_cad.report.clinical import ingest_rules_text
    from cxr_cad.report.inputs import ingest_record, read_cohort_info

    if info is None:
        out: dict[str, Any] = {}
    elif isinstance(info, Mapping):
        out = {k: v for k, v in info.items() if v not in (None, "")}
    else:
        out = read_cohort_info(os.fspath(info))
    record = ingest_record(None if manifest is None else os.fspath(manifest))
    if record and ingest_source:
        out.setdefault("source", ingest_source)
    rules = ingest_rules_text(record, policy if policy is not None else (record or {}).get("policy"))
    if rules:
        out.setdefault("ingest_rules", rules)
    given = name or out.get("name")
    if given and name_problem(given):  # shown in titles, CSV and DICOM text: docs/report.md#names
        raise ConfigError(f"cohort name: {name_problem(given)}", source="--cohort-name / cohort.name")
    out["name"] = given or ("" if name_problem(default_name) else default_name)
    if record_date and (date or not out.get("date")):
        out["date"] = date
    if validation:
        out.setdefault("validation", validation)
    return out


def _load(bundle: Bundle | PathLike) -> tuple[Bundle, str]:
    """(the loaded bundle, its path)."""
    from cxr_cad.model import load_bundle  # torch

    if isinstance(bundle, (str, os.PathLike)):
        return load_bundle(bundle), os.fspath(bundle)
    return bundle, os.fspath(getattr(bundle, "path", "") or "")


def _as_table(table: pd.DataFrame | PathLike | None, what: str) -> pd.DataFrame | None:
    if table is None or isinstance(table, pd.DataFrame):
        return table
    return read_table(table, what)


def _read_cv_metrics(cv: Mapping[str, Any] | PathLike | None) -> Mapping[str, Any] | None:
    """``cv_metrics.json`` from ``cxr-cad crossval``, checked (a file is read first)."""
    if cv is None or isinstance(cv, Mapping):
        return cv
    from cxr_cad.report.inputs import check_cv_metrics

    try:
        data = json.loads(Path(cv).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--cv-metrics {cv}: cannot read JSON: {str(exc)[:300]}") from exc
    return check_cv_metrics(data, f"--cv-metrics {cv}")


def check_table(pred: pd.DataFrame, opts: ReportOptions, source: str) -> None:
    """ManifestError listing every reason ``pred`` cannot give a complete report, unless
    ``opts.allow_partial`` (docs/report.md#input)."""
    from cxr_cad.report.prepare import table_problems

    if opts.allow_partial:
        return
    problems = table_problems(
        pred, positive_class=opts.positive_class, label_col=opts.label_col, score_col=opts.score_col
    )
    if problems:
        problems.append("fix the table, or give --allow-partial for a deliberate partial report")
        raise ManifestError(problems, source=source)


def _prepare(
    pred: pd.DataFrame,
    predictions: pd.DataFrame | PathLike,
    opts: ReportOptions,
    info: dict | None,
    has_bundle: bool,
    manifest: pd.DataFrame | PathLike | None,
    cv_data: Mapping[str, Any] | None,
    source: str,
) -> tuple[pd.DataFrame, ReportOptions, dict | None]:
    """(table, options, model info) of a binary report: the positive class, the model and the
    cohort name resolved, the table checked (before any join: line numbers are the file's) and
    joined to the manifest; without a bundle the threshold is the table's."""
    opts, classes = resolve_positive_class(pred, opts, info, cv_data)
    info = table_model(pred, info, classes)
    check_table(pred, opts, source)
    if manifest is not None:
        table = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest, check_files=False)
        opts = opts.replace(cohort_info={**(opts.cohort_info or {}), "manifest_hash": manifest_hash(table)})
        pred = join_metadata(pred, table)
    opts = cohort_name(pred, predictions, opts)
    if not has_bundle:
        opts = table_threshold(pred, opts)
    return pred, opts, info


def report_cohort(
    predictions: pd.DataFrame | PathLike,
    out_dir: PathLike,
    options: ReportOptions | None = None,
    *,
    bundle: Bundle | PathLike | None = None,
    manifest: pd.DataFrame | PathLike | None = None,
    rejected: pd.DataFrame | PathLike | None = None,
    cv: Mapping[str, Any] | PathLike | None = None,
    comparison: Mapping[str, Any] | None = None,
    gradcam_per_group: int = 2,
    warn_shift: bool = False,
) -> ReportResult:
    """Write the clinical report of one scored cohort into ``out_dir``.

    Args:
        predictions: ``label`` and ``probability`` per image (``path`` for Grad-CAM): a table or a CSV.
        options: every report choice (:class:`~cxr_cad.report.ReportOptions`): statistics,
            positive class, threshold and its provenance, ``cohort_info`` (see
            :func:`cohort_info`), identifiers, PDF, the note shown without Grad-CAM.
        bundle: the model that made the predictions (a loaded bundle or its file): report header,
            threshold, positive class, the Grad-CAM gallery and the dataset-shift check. Without
            it a single ``threshold`` value of the predictions is the threshold.
        manifest: the cohort's manifest (table or file): its metadata columns are joined on and
            its hash goes into ``cohort_info["manifest_hash"]``.
        rejected: files not scored (``path``, ``reason``, ``detail``), counted by reason; also
            written as ``rejected.csv`` with ``options.include_identifiers``.
        cv: ``cv_metrics.json`` (mapping or file) of a cross-validation.
        comparison: ``{"predictions", "name", "sha256", "name_a"}`` of a second model's scores
            of the same images (paired DeLong test); ``name_a`` defaults to this model's name.
        gradcam_per_group: Grad-CAM images per group (TP, TN, FP, FN); 0 = none.
        warn_shift: log a warning when the cohort is flagged as shifted by the age/view
            comparison alone (the scores' own flag was logged by the scoring run).
    """
    from cxr_cad.explain.gradcam import GradcamSource
    from cxr_cad.report import ReportOptions, model_info_from_bundle, write_report

    opts = options or ReportOptions()
    source = "predictions table" if isinstance(predictions, pd.DataFrame) else f"predictions table {predictions}"
    pred = predictions if isinstance(predictions, pd.DataFrame) else read_table(predictions, "predictions table")
    loaded, info = None, None
    if bundle is not None:
        loaded, path = _load(bundle)
        info = model_info_from_bundle(loaded, path)
    if is_multilabel(pred, loaded):  # one probability per finding: docs/report.md#multi-label-reports
        return report_multilabel(
            pred, out_dir, opts, bundle=loaded, bundle_info=info, manifest=manifest, rejected=rejected,
            cv=cv, comparison=comparison, gradcam_per_finding=gradcam_per_group,
        )  # fmt: skip
    cv_data = _read_cv_metrics(cv)
    pred, opts, info = _prepare(pred, predictions, opts, info, loaded is not None, manifest, cv_data, source)
    rejected_df = _as_table(rejected, "rejected-files table")
    if comparison is not None and "name_a" not in comparison:
        comparison = {**comparison, "name_a": (info or {}).get("name", "this model")}
    gradcam = None
    if loaded is not None and gradcam_per_group > 0 and "path" in pred.columns:
        gradcam = GradcamSource.from_bundle(loaded, n_per_group=gradcam_per_group)
        opts = opts.replace(gradcam_note=None)  # the note says why there is no gallery
    shift, newly_flagged = cohort_shift(pred, loaded)  # docs/shift.md; None: "not computed"
    if warn_shift and newly_flagged:
        log.warning("%s: dataset shift: %s", model_label(info), (shift or {}).get("message"))
    result = write_report(
        pred,
        out_dir,
        opts,
        model_info=info,
        rejected_df=rejected_df,
        cv=cv_data,
        comparison=comparison,
        gradcam=gradcam,
        shift=shift,
    )
    if opts.include_identifiers and rejected_df is not None:
        columns = [c for c in REJECTED_COLUMNS if c in rejected_df.columns]
        atomic_write_csv(Path(result.out_dir) / "rejected.csv", rejected_df[columns])
    return result


def model_label(info: Mapping[str, Any] | None, role: str = "model") -> str:
    """``"<role> <name> (<short hash>)"``: how log lines and warnings name a model."""
    if not info:
        return role
    sha = str(info.get("sha256") or "")[:12]
    name = str(info.get("name") or "")
    if name and sha and sha not in name:
        return f"{role} {name} ({sha})"
    return f"{role} {name or sha}".strip()


@contextlib.contextmanager
def named_warnings(label: str) -> Iterator[None]:
    """Warnings a scoring run logs (e.g. "dataset shift: ...") start with ``label``, so that two
    models scored one after the other are told apart ("previous model <hash>: dataset shift ...")."""
    logger = logging.getLogger("cxr_cad.inference.predict")

    def prefix(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and not str(record.msg).startswith(label):
            record.msg = f"{label}: {record.msg}"
        return True

    logger.addFilter(prefix)
    try:
        yield
    finally:
        logger.removeFilter(prefix)

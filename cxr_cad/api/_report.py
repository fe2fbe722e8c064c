"""The clinical report of one scored cohort, written once for ``cxr-cad report``, ``cxr-cad
evaluate`` and the workflow's report step: :func:`cohort_info` (what the report says about the
cohort), :func:`report_cohort` (bundle header, Grad-CAM, dataset shift, the report folder) and
:func:`evaluate_cohort` (score a labelled cohort, optionally with a second model, then
:func:`report_cohort`)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cxr_cad.api._cohort import labelled_cohort
from cxr_cad.api._pacs import PacsOptions, write_dicom_outputs
from cxr_cad.api._scoring import cohort_shift, join_metadata, read_table, score
from cxr_cad.config import AcceptPolicy, PredictOptions
from cxr_cad.core.atomic import PathLike, atomic_write_csv
from cxr_cad.core.columns import REJECTED_COLUMNS
from cxr_cad.errors import UsageError
from cxr_cad.manifest import manifest_hash, read_manifest
from cxr_cad.tracking import log_evaluate_run

if TYPE_CHECKING:
    from cxr_cad.model import Bundle
    from cxr_cad.report import ReportOptions, ReportResult

__all__ = ["INGESTED_SOURCE", "EvaluateResult", "cohort_info", "evaluate_cohort", "report_cohort"]

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
    out["name"] = name or out.get("name") or default_name
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


def _table_threshold(pred: pd.DataFrame, options: ReportOptions) -> ReportOptions:
    """Without a threshold and a model: the predictions' one ``threshold`` value, when they have one."""
    if options.threshold is not None or "threshold" not in pred.columns:
        return options
    values = set(pred["threshold"].astype(str)) - {""}
    if len(values) != 1:
        return options
    return options.replace(
        threshold=float(values.pop()),
        threshold_method=options.threshold_method or "as recorded in the predictions table",
        threshold_source="predictions table",
    )


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
    pred = predictions if isinstance(predictions, pd.DataFrame) else read_table(predictions, "predictions table")
    loaded, info = None, None
    if bundle is not None:
        loaded, path = _load(bundle)
        info = model_info_from_bundle(loaded, path)
    if manifest is not None:
        table = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest, check_files=False)
        opts = opts.replace(cohort_info={**(opts.cohort_info or {}), "manifest_hash": manifest_hash(table)})
        pred = join_metadata(pred, table)
    if loaded is None:
        opts = _table_threshold(pred, opts)
    rejected_df = _as_table(rejected, "rejected-files table")
    if comparison is not None and "name_a" not in comparison:
        comparison = {**comparison, "name_a": (info or {}).get("name", "this model")}
    gradcam = None
    if loaded is not None and gradcam_per_group > 0 and "path" in pred.columns:
        gradcam = GradcamSource.from_bundle(loaded, n_per_group=gradcam_per_group)
        opts = opts.replace(gradcam_note=None)  # the note says why there is no gallery
    shift, newly_flagged = cohort_shift(pred, loaded)  # docs/shift.md; None: "not computed"
    if warn_shift and newly_flagged:
        log.warning("dataset shift: %s", (shift or {}).get("message"))
    result = write_report(
        pred,
        out_dir,
        opts,
        model_info=info,
        rejected_df=rejected_df,
        cv=_read_cv_metrics(cv),
        comparison=comparison,
        gradcam=gradcam,
        shift=shift,
    )
    if opts.include_identifiers and rejected_df is not None:
        columns = [c for c in REJECTED_COLUMNS if c in rejected_df.columns]
        atomic_write_csv(Path(result.out_dir) / "rejected.csv", rejected_df[columns])
    return result


@dataclass
class EvaluateResult:
    """What :func:`evaluate_cohort` did: the report, the model, and the ``--dicom-out`` summary."""

    report: ReportResult
    bundle: Bundle
    dicom: str | None = None


def _scores(
    model: PathLike, manifest_path: Path, out: Path, options: PredictOptions
) -> tuple[pd.DataFrame, pd.DataFrame]:
    log.info("%s", score(model, [manifest_path], out, options).summary_line())
    return (
        read_table(out / "predictions.csv", "predictions table"),
        read_table(out / "rejected.csv", "rejected-files table"),
    )


def _comparison(
    compare: PathLike, bundle: Bundle, model: PathLike, manifest_path: Path, work: Path, options: PredictOptions
) -> dict:
    """The second model's scores of the same images (paired DeLong test)."""
    from cxr_cad.model import load_bundle  # torch

    other_bundle = load_bundle(compare)
    if str(other_bundle.positive_class) != str(bundle.positive_class):
        raise UsageError(
            f"--compare: the other model's positive class {other_bundle.positive_class!r} "
            f"differs from {bundle.positive_class!r}; the AUCs would not be comparable"
        )
    other, _ = _scores(compare, manifest_path, work / "scores_compare", options)
    return {
        "predictions": other,
        "name": Path(compare).name,
        "sha256": other_bundle.sha256,
        "name_a": Path(model).name,
    }


def evaluate_cohort(
    model: PathLike,
    out_dir: PathLike,
    options: ReportOptions,
    *,
    manifest: PathLike | None = None,
    folder: str | None = None,
    labels: PathLike | None = None,
    predict: PredictOptions | None = None,
    policy: AcceptPolicy | None = None,
    compare: PathLike | None = None,
    work_dir: PathLike | None = None,
    pacs: PacsOptions | None = None,
    gradcam_per_group: int = 2,
    track: str | None = None,
    track_params: Mapping[str, Any] | None = None,
) -> EvaluateResult:
    """Score a labelled cohort with ``model`` and write its clinical report into ``out_dir``.

    The cohort is ``manifest`` (with a label column) or ``folder`` (``DIR/<class>/...``, or a
    ``dicomweb:`` URL with ``labels`` and ``pacs.query``); scanned with ``policy``, scored with
    ``predict`` (in ``work_dir``, resumable; default a temporary folder). ``compare``: a second
    bundle scored on the same images. ``options.cohort_info`` gets the manifest's hash.
    ``pacs.dicom_out``: DICOM SRs of the scores. ``track``: ``mlflow[:URI]`` logs the run with
    ``track_params``.
    """
    from cxr_cad.model import load_bundle  # torch

    pacs = pacs or PacsOptions()
    bundle = load_bundle(model)
    predict_options = (predict or PredictOptions()).replace(policy=policy or AcceptPolicy())
    with tempfile.TemporaryDirectory(prefix="cxr-cad-evaluate-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cohort = labelled_cohort(
            manifest=manifest,
            folder=folder,
            classes=list(bundle.classes),
            work=work,
            policy=predict_options.policy or AcceptPolicy(),
            labels=labels,
            query=list(pacs.query) or None,
        )
        pred, rejected = _scores(model, cohort.manifest_path, work / "scores", predict_options)
        dicom = write_dicom_outputs(pacs, model, work / "scores" / "predictions.csv")
        pred = join_metadata(pred.drop(columns=["label"], errors="ignore"), cohort.manifest, keys=("path",))
        rejected = pd.concat([cohort.rejected, rejected], ignore_index=True)
        comparison = (
            _comparison(compare, bundle, model, cohort.manifest_path, work, predict_options) if compare else None
        )
        opts = options.replace(
            cohort_info={**(options.cohort_info or {}), "manifest_hash": manifest_hash(cohort.manifest)}
        )
        report = report_cohort(
            pred,
            out_dir,
            opts,
            bundle=bundle,
            rejected=rejected,
            comparison=comparison,
            gradcam_per_group=gradcam_per_group,
            warn_shift=True,
        )
    if track:
        log_evaluate_run(track, dict(track_params or {}), bundle, report)
    return EvaluateResult(report, bundle, dicom)

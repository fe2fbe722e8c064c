"""The clinical report of one scored cohort, written once for ``cxr-cad report``, ``cxr-cad
evaluate`` and the workflow's report step: :func:`cohort_info` (what the report says about the
cohort), :func:`report_cohort` (bundle header, Grad-CAM, dataset shift, the report folder) and
:func:`evaluate_cohort` (score a labelled cohort, optionally with a second model, then
:func:`report_cohort`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cxr_cad.api._cohort import labelled_cohort
from cxr_cad.api._pacs import PacsOptions, write_dicom_outputs
from cxr_cad.api._report_multilabel import is_multilabel, report_multilabel
from cxr_cad.api._scoring import cohort_shift, join_metadata, read_table, score
from cxr_cad.config import AcceptPolicy, PredictOptions
from cxr_cad.config.sections import name_problem
from cxr_cad.core.atomic import PathLike, atomic_write_csv
from cxr_cad.core.columns import REJECTED_COLUMNS
from cxr_cad.errors import ConfigError, ManifestError, OutputError, UsageError
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


def _one_value(pred: pd.DataFrame, column: str) -> str | None:
    """The single non-empty value of ``column``, or None (absent, empty or several values)."""
    if column not in pred.columns:
        return None
    values = set(pred[column].astype("string").fillna("").str.strip()) - {""}
    return values.pop() if len(values) == 1 else None


def _classes_from_table(pred: pd.DataFrame) -> tuple[str | None, list[str], str]:
    """``(positive class, classes, what was looked at)`` from the columns a predictions table
    carries: ``positive_class``; ``y_true`` beside ``label`` (out-of-fold predictions);
    ``decision`` beside ``probability`` and ``threshold`` (cxr-cad predict)."""
    positive = _one_value(pred, "positive_class")
    if positive is not None:
        return positive, [], "its positive_class column"
    looked = ["no positive_class column"]
    if {"y_true", "label"} <= set(pred.columns):
        y = pd.to_numeric(pred["y_true"], errors="coerce")
        labels = pred["label"].astype("string").fillna("").str.strip()
        pos, neg = set(labels[(y == 1) & (labels != "")]), set(labels[(y == 0) & (labels != "")])
        if len(pos) == 1 and len(neg) <= 1 and not pos & neg:
            return pos.pop(), sorted(neg), "its y_true and label columns"
        looked.append("y_true/label columns that do not name one positive class")
    else:
        looked.append("no y_true column")
    if {"decision", "probability", "threshold"} <= set(pred.columns):
        prob = pd.to_numeric(pred["probability"], errors="coerce")
        thr = pd.to_numeric(pred["threshold"], errors="coerce")
        decision = pred["decision"].astype("string").fillna("").str.strip().str.lstrip("'")
        known = prob.notna() & thr.notna() & (decision != "")
        pos, neg = set(decision[known & (prob >= thr)]), set(decision[known & (prob < thr)])
        if len(pos) == 1 and len(neg) <= 1 and not pos & neg:
            return pos.pop(), sorted(neg), "its decision, probability and threshold columns"
        looked.append("decision/probability/threshold columns that do not name one positive class")
    else:
        looked.append("no decision + probability + threshold columns")
    return None, [], "; ".join(looked)


def _resolve_positive_class(
    pred: pd.DataFrame, opts: ReportOptions, info: dict | None, cv: Mapping[str, Any] | None
) -> tuple[ReportOptions, list[str]]:
    """The positive class, in order: the option (checked against the rest), the bundle, the
    cross-validation summary, the predictions table's columns. Returns the options with it and
    the classes found; UsageError listing what was looked at when none says."""
    settings = (cv or {}).get("settings") if isinstance((cv or {}).get("settings"), Mapping) else {}
    cv_pos = settings.get("positive_class") if settings else None
    cv_classes = [str(c) for c in settings.get("classes") or []] if settings else []
    table_pos, table_classes, looked_table = _classes_from_table(pred)
    found = [
        (w, str(v))
        for w, v in (
            ("the --model bundle", (info or {}).get("positive_class")),
            ("the --cv-metrics summary", cv_pos),
            ("the predictions table", table_pos),
        )
        if v is not None
    ]
    given = opts.positive_class
    if given is not None:
        clash = [f"{w} says {v!r}" for w, v in found if v != str(given)]
        if clash:
            raise UsageError(f"positive class {given!r} differs from what the inputs record: {'; '.join(clash)}")
    elif found:
        which, value = found[0]
        clash = [f"{w} says {v!r}" for w, v in found[1:] if v != value]
        if clash:
            raise UsageError(f"{which} says the positive class is {value!r}, but {'; '.join(clash)}")
        log.info("positive class %r from %s", value, which)
        opts = opts.replace(positive_class=value)
    else:
        raise UsageError(
            "the positive class is not known; looked at: the --model bundle (not given), the --cv-metrics "
            f"summary ({'no settings.positive_class' if cv else 'not given'}), the predictions table "
            f"({looked_table}); give --positive-class NAME (e.g. --positive-class PNEUMONIA)"
        )
    if opts.positive_class is not None and name_problem(opts.positive_class):
        raise UsageError(f"positive class: {name_problem(opts.positive_class)}")
    return opts, cv_classes or ([str(opts.positive_class), *table_classes] if table_classes else [])


def _table_model(pred: pd.DataFrame, info: dict | None, classes: list[str]) -> dict | None:
    """The model header: the bundle's (its hash checked against the table's ``model_sha256``),
    else the one ``model_sha256`` the table records (a short hash names it), else None."""
    sha = _one_value(pred, "model_sha256")
    if info is not None:
        if sha is not None and info.get("sha256") and sha != info["sha256"]:
            raise UsageError(
                f"the predictions were made by the model with SHA-256 {sha[:12]}..., not by --model "
                f"{info.get('name')} ({str(info['sha256'])[:12]}...); give the bundle that made them"
            )
        return info
    if sha is None:
        return None
    return {
        "name": f"model {sha[:12]}",
        "sha256": sha,
        "classes": classes,
        "identified_by": "the predictions table's model_sha256 column (the bundle was not given)",
    }


def _data_folder_name(pred: pd.DataFrame) -> str | None:
    """The name of the folder holding the scored images (their common parent, above class
    folders), from the table's ``path`` column; None without usable paths."""
    if "path" not in pred.columns:
        return None
    paths = [p for p in pred["path"].astype("string").fillna("").str.strip() if p]
    if not paths:
        return None
    try:
        common = Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))
    except ValueError:  # mixed drives / relative and absolute
        return None
    labels = set(pred["label"].astype(str)) if "label" in pred.columns else set()
    while common.name in labels and common.parent != common:
        common = common.parent
    name = common.name
    return name if name and not name_problem(name) else None


def _cohort_name(pred: pd.DataFrame, predictions: pd.DataFrame | PathLike, opts: ReportOptions) -> ReportOptions:
    """A cohort name when none was given: the folder holding the images, else the table's file name."""
    info = dict(opts.cohort_info or {})
    if info.get("name"):
        return opts
    name = _data_folder_name(pred)
    if name is None and not isinstance(predictions, pd.DataFrame):
        name = f"images scored in {Path(predictions).name}"
    return opts.replace(cohort_info={**info, "name": name or "unnamed cohort"})


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
    opts, classes = _resolve_positive_class(pred, opts, info, cv_data)
    info = _table_model(pred, info, classes)
    check_table(pred, opts, source)  # before any join: line numbers are the file's
    if manifest is not None:
        table = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest, check_files=False)
        opts = opts.replace(cohort_info={**(opts.cohort_info or {}), "manifest_hash": manifest_hash(table)})
        pred = join_metadata(pred, table)
    opts = _cohort_name(pred, predictions, opts)
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


@dataclass
class EvaluateResult:
    """What :func:`evaluate_cohort` did: the report, the model, and the ``--dicom-out`` summary."""

    report: ReportResult
    bundle: Bundle
    dicom: str | None = None


def _scoring_record(out: Path) -> dict | None:
    from cxr_cad.inference.backend import scoring_record  # torch

    return scoring_record(out)


def _scores(
    model: PathLike, manifest_path: Path, out: Path, options: PredictOptions, label: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    with named_warnings(label):
        log.info("%s: %s", label, score(model, [manifest_path], out, options).summary_line())
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
    label = model_label({"name": Path(compare).name, "sha256": other_bundle.sha256}, "compared model")
    other, _ = _scores(compare, manifest_path, work / "scores_compare", options, label)
    return {
        "predictions": other,
        "name": Path(compare).name,
        "sha256": other_bundle.sha256,
        "name_a": Path(model).name,
        "shift": cohort_shift(other, other_bundle)[0],  # the other model's own verdict on this cohort
    }


#: prefix of evaluate's scratch folder, inside the output folder (docs/report.md#outputs)
SCRATCH_PREFIX = ".cxr-cad-evaluate-"


@contextlib.contextmanager
def _scratch(out: Path) -> Iterator[Path]:
    """A scratch folder inside ``out`` (scores, journals, the scanned manifest), removed on every
    exit path; one left by a killed earlier run (``kill -9``) is removed first. Its file names
    are fixed (cohort_manifest.csv, scores/predictions.csv ...), never patient data."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob(SCRATCH_PREFIX + "*"):
            shutil.rmtree(old, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=out))
    except OSError as exc:
        raise OutputError(
            f"cannot write to the output folder {out}: {exc.strerror or exc}; choose a writable --out"
        ) from exc
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while the block runs (main thread only), so ``finally``
    blocks (the scratch folder's removal) run when a scheduler stops the command."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    with _scratch(Path(out_dir)) as tmp, _terminate_as_interrupt():
        work = Path(work_dir) if work_dir else tmp
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
        label = model_label({"name": Path(model).name, "sha256": bundle.sha256})
        pred, rejected = _scores(model, cohort.manifest_path, work / "scores", predict_options, label)
        dicom = write_dicom_outputs(pacs, model, work / "scores" / "predictions.csv")
        pred = join_metadata(pred.drop(columns=["label"], errors="ignore"), cohort.manifest, keys=("path",))
        rejected = pd.concat([cohort.rejected, rejected], ignore_index=True)
        comparison = (
            _comparison(compare, bundle, model, cohort.manifest_path, work, predict_options) if compare else None
        )
        opts = options.replace(
            cohort_info={
                **(options.cohort_info or {}),
                "manifest_hash": manifest_hash(cohort.manifest),
                "scoring": _scoring_record(work / "scores"),  # backend / int8 (cxr_cad.inference.backend)
            }
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

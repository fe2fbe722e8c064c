"""``ingest``: folders of DICOM/PNG/JPEG (or a manifest table) -> manifest + rejected + ingest.json.

One implementation for ``cxr-cad ingest``, the workflow's ingest step and the Python API; one
``ingest.json`` layout (read by :mod:`cxr_cad.modelcard` and :mod:`cxr_cad.report.inputs`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cxr_cad.api._ingest_checks import by_reason, check_accepted, check_found, check_options, check_out_dir
from cxr_cad.api._labels import (
    Labels,
    classes_found,
    findings_found,
    label_images,
    label_multilabel,
    read_layout_labels,
)
from cxr_cad.config import AcceptPolicy
from cxr_cad.core.atomic import PathLike, atomic_write_many
from cxr_cad.core.columns import REJECTED_COLUMNS
from cxr_cad.core.provenance import software_versions
from cxr_cad.errors import ManifestError, UsageError
from cxr_cad.manifest import (
    manifest_hash,
    manifest_text,
    read_labels,
    table_text,
    validate_manifest,
)
from cxr_cad.manifest.multilabel import MultilabelLabels, finding_column
from cxr_cad.manifest.scan import ScanResult, scan_sources

if TYPE_CHECKING:
    from cxr_cad.manifest.labels import LabelJoinReport

#: What ``sources`` may be: folders/files, one of them, or a manifest table (nothing scanned).
Sources = Sequence[PathLike] | PathLike | pd.DataFrame

__all__ = ["IngestOutcome", "ingest", "run_ingest", "INGEST_FILES"]

#: The files an ingest folder holds (``unmatched_labels.csv`` with a labels CSV only,
#: ``unlabelled.csv`` when unlabelled images are dropped).
INGEST_FILES = ("manifest.csv", "rejected.csv", "unmatched_labels.csv", "unlabelled.csv", "ingest.json")


@dataclass
class IngestOutcome:
    """What an ingest found.

    Attributes:
        manifest: accepted images (absolute paths), labelled where labels were given.
        rejected: files not accepted (``path``, ``reason``, ``detail``).
        unlabelled: images left out because they had no label among the classes
            (``path``, ``label``; only with ``drop_unlabelled``).
        scan: the scan's counts and patient-id rule (an empty scan for a table input).
        label_report: the label join (a labels CSV only).
        classes, positive_class: as given, or the labels found.
        label_source: ``"folders"``, the labels file, ``"manifest"`` or None.
        record: ``ingest.json`` once :meth:`write` has run.
    """

    manifest: pd.DataFrame
    rejected: pd.DataFrame
    unlabelled: pd.DataFrame | None
    scan: ScanResult
    label_report: LabelJoinReport | None
    classes: list[str] | None
    positive_class: str | None
    label_source: str | None
    policy: AcceptPolicy
    verify_pixels: bool
    sources: list[str]
    options: dict
    started: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))
    record: dict = field(default_factory=dict)
    multilabel: MultilabelLabels | None = None  # labels read with a --label-layout

    def make_record(self, absolute_paths: bool = False) -> dict:
        """The ``ingest.json`` record (the one layout)."""
        m, result, report = self.manifest, self.scan, self.label_report
        return {
            "software": software_versions(("pydicom", "pandas")),
            "created": self.started.isoformat(timespec="seconds"),
            "seconds": round(result.seconds, 2),
            "options": self.options,
            "sources": self.sources,
            "outputs": {
                "manifest": "manifest.csv",
                "rejected": "rejected.csv",
                "unmatched_labels": "unmatched_labels.csv" if report is not None else None,
            },
            "paths": "absolute" if absolute_paths else "relative to this folder where they share a parent",
            "policy": {**self.policy.record(), "verify_pixels": bool(self.verify_pixels)},
            "task": "multilabel" if self.multilabel is not None else "multiclass",
            "classes": self.classes,
            "positive_class": self.positive_class,
            "labels": {
                "source": self.label_source,
                **(report.to_dict() if report is not None else {}),
                **({"multilabel": self.multilabel.record()} if self.multilabel is not None else {}),
            },
            "patient_id_rule": result.patient_id_rule,
            "counts": {
                "files": result.n_files,
                "accepted": len(m),
                "rejected": len(self.rejected),
                "rejected_by_reason": by_reason(self.rejected),
                "labels_by_class": {str(k) or "(none)": int(v) for k, v in m["label"].value_counts().items()},
                **({"positives_by_finding": self._positives()} if self.multilabel is not None else {}),
                "patients": int(m["patient_id"].nunique()),
                "studies": int(m.loc[m["study_instance_uid"] != "", "study_instance_uid"].nunique()),
                "unlabelled": 0 if self.unlabelled is None else len(self.unlabelled),
            },
            "skipped_folders": len(result.skipped_dirs),
            "workers": result.workers,
            "manifest_hash": manifest_hash(m),
        }

    def _positives(self) -> dict[str, int]:
        assert self.multilabel is not None
        return {
            f: int((self.manifest[finding_column(f)].astype(str) == "1").sum())
            if finding_column(f) in self.manifest
            else 0
            for f in self.multilabel.findings
        }

    def write(self, out_dir: PathLike, *, absolute_paths: bool = False) -> Path:
        """Write manifest.csv, rejected.csv (and unmatched_labels.csv / unlabelled.csv) and
        ingest.json into ``out_dir`` as one unit: all go to temporary files first, then all are
        renamed (a full disk leaves the folder as it was). Returns the folder."""
        out = Path(out_dir).absolute()
        out.mkdir(parents=True, exist_ok=True)
        outputs: dict[PathLike, str] = {
            out / "manifest.csv": manifest_text(self.manifest, out / "manifest.csv", relative=not absolute_paths),
            out / "rejected.csv": table_text(self.rejected),
        }
        if self.label_report is not None:
            outputs[out / "unmatched_labels.csv"] = table_text(self.label_report.unmatched)
        if self.unlabelled is not None:
            outputs[out / "unlabelled.csv"] = table_text(self.unlabelled)
        self.record = self.make_record(absolute_paths)
        outputs[out / "ingest.json"] = json.dumps(self.record, indent=2) + "\n"
        atomic_write_many(outputs)
        return out


def _describe(labels: Labels) -> str | None:
    """How ``labels`` is recorded: None, ``"folders"``, a path, or ``"table"`` (a DataFrame)."""
    if labels is None or isinstance(labels, (str, os.PathLike)):
        return None if labels is None else os.fspath(labels)
    return "table"


def _table_scan(df: pd.DataFrame) -> ScanResult:
    """The scan record of a manifest given as a table (nothing was scanned)."""
    return ScanResult(accepted=df, rejected=pd.DataFrame(columns=REJECTED_COLUMNS), n_files=len(df))


def _scan(
    sources: Sources, policy: AcceptPolicy, opts: dict[str, Any], exclude: Sequence[PathLike]
) -> tuple[ScanResult, list[str]]:
    if isinstance(sources, pd.DataFrame):
        where = sources.attrs.get("manifest_path")
        return _table_scan(sources), [os.path.abspath(where)] if where else []

    paths = [os.fspath(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    missing = [s for s in paths if not os.path.exists(s)]
    if missing:
        raise UsageError("input not found: " + ", ".join(missing))
    result = scan_sources(
        paths,
        policy=policy,
        workers=opts["workers"],
        patient_id_pattern=opts["patient_id_pattern"],
        verify_pixels=opts["verify_pixels"],
        exclude=exclude,
    )
    return result, [os.path.abspath(s) for s in paths]


def _label(
    scan: ScanResult,
    labels: Labels,
    ml_labels: MultilabelLabels | None,
    opts: dict[str, Any],
    cls: list[str] | None,
    positive_class: str | None,
    drop_unlabelled: bool,
    *,
    table: bool,
) -> tuple[pd.DataFrame, pd.DataFrame | None, list[str] | None, LabelJoinReport | None, str | None]:
    """(labelled manifest, unlabelled rows left out or None, classes or findings, label join
    report, label source) of the accepted images: findings with a label layout, else classes."""
    if ml_labels is not None:
        manifest, report, source = label_multilabel(scan.accepted, scan, labels, ml_labels)
        return (*findings_found(manifest, ml_labels, drop_unlabelled), report, source)
    manifest, join, label_source = label_images(scan.accepted, scan, labels, opts, cls)
    if table and label_source is None:
        label_source = "manifest"
    return (*classes_found(manifest, cls, positive_class, drop_unlabelled), join, label_source)


def run_ingest(
    sources: Sources,
    out_dir: PathLike | None = None,
    *,
    labels: Labels = None,
    classes: Sequence[str] | None = None,
    positive_class: str | None = None,
    policy: AcceptPolicy | None = None,
    label_key: str | None = None,
    label_column: str = "label",
    patient_id_pattern: str | None = None,
    verify_pixels: bool = False,
    workers: int | None = None,
    absolute_paths: bool = False,
    drop_unlabelled: bool = False,
    exclude: Sequence[PathLike] = (),
    options: Mapping[str, Any] | None = None,
    label_layout: str | None = None,
    findings: Sequence[str] | None = None,
    uncertain: str = "ignore",
) -> IngestOutcome:
    """:func:`ingest` returning the whole :class:`IngestOutcome` (counts, label join, record).

    ``options`` is what ``ingest.json`` records under ``options`` (default: these arguments).
    ``label_layout`` (``nih``, ``columns`` or ``chexpert``) reads ``labels`` as multi-label
    findings (:mod:`cxr_cad.manifest.multilabel`; ``findings`` to keep, ``uncertain`` policy);
    the manifest then has one ``finding_<name>`` column per finding and ``task: multilabel``.
    """
    cls: list[str] | None = list(classes) if classes is not None else None
    opts: dict[str, Any] = {
        "labels": _describe(labels),
        "classes": cls,
        "positive_class": positive_class,
        "label_key": label_key,
        "label_column": label_column,
        "patient_id_pattern": patient_id_pattern,
        "verify_pixels": verify_pixels,
        "workers": workers,
        "absolute_paths": absolute_paths,
        "drop_unlabelled": drop_unlabelled,
    }
    if label_layout is not None:
        opts.update(label_layout=label_layout, findings=list(findings) if findings else None, uncertain=uncertain)
    check_options(cls, positive_class, workers, labels, label_key or (label_column != "label"))
    policy = policy or AcceptPolicy()
    started = _dt.datetime.now(_dt.timezone.utc)
    if out_dir is not None:
        check_out_dir(out_dir)
    ml_labels = read_layout_labels(labels, label_layout, findings, uncertain, label_key)
    if ml_labels is None and isinstance(labels, (str, os.PathLike)) and labels != "folders":  # before the scan
        read_labels(labels, key=label_key, label_column=label_column, classes=cls)
    exclude = [*exclude, *([os.path.abspath(out_dir)] if out_dir is not None else [])]
    scan, source_list = _scan(sources, policy, opts, exclude)
    check_found(scan, source_list, isinstance(sources, pd.DataFrame))
    manifest, unlabelled, cls, report, label_source = _label(
        scan, labels, ml_labels, opts, cls, positive_class, drop_unlabelled, table=isinstance(sources, pd.DataFrame)
    )
    outcome = IngestOutcome(
        manifest=manifest,
        rejected=scan.rejected,
        unlabelled=unlabelled,
        scan=scan,
        label_report=report,
        classes=cls,
        positive_class=positive_class,
        label_source=label_source,
        policy=policy,
        verify_pixels=verify_pixels,
        sources=source_list,
        options=dict(sorted((options if options is not None else opts).items())),
        started=started,
        multilabel=ml_labels,
    )
    if out_dir is not None:
        _validate(outcome, "scanned images")
        outcome.write(out_dir, absolute_paths=absolute_paths)
    check_accepted(outcome, out_dir)
    return outcome


def _validate(outcome: IngestOutcome, where: str) -> None:
    classes = outcome.classes if outcome.multilabel is None else None  # multi-label: label = findings joined
    problems = validate_manifest(outcome.manifest, classes=classes) if len(outcome.manifest) else []
    if problems:
        raise ManifestError(problems, source=where)


def ingest(
    sources: Sources,
    out_dir: PathLike | None = None,
    **options: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scan folders/files of DICOM/PNG/JPEG into ``(manifest_df, rejected_df)``.

    Every input file is in exactly one of the two tables. With ``out_dir`` the folder gets
    ``manifest.csv``, ``rejected.csv``, ``ingest.json`` (and ``unmatched_labels.csv`` with a
    labels CSV), written as one unit, exactly as ``cxr-cad ingest --out`` writes them.

    Args:
        sources: folders (recursive) and/or files; or a manifest DataFrame (labels only joined).
        out_dir: folder to write (created); None writes nothing.
        **options: keyword arguments of :func:`run_ingest`: ``labels`` (a labels CSV or
            DataFrame, or ``"folders"``: the class-named folder of each file), ``classes``,
            ``positive_class``, ``policy`` (:class:`~cxr_cad.io.AcceptPolicy`, e.g.
            ``AcceptPolicy.from_options(modalities="any")``), ``label_key``,
            ``patient_id_pattern``, ``verify_pixels``, ``workers``, ``absolute_paths``.

    Raises:
        UsageError: a source does not exist, holds no file, or no image of it is accepted
        (with ``out_dir``, rejected.csv and ingest.json are written first); a given
        ``patient_id_pattern`` matches no PNG/JPEG name; ConfigError: bad options;
        ManifestError: a labels table or the result fails validation; OutputError: ``out_dir``
        cannot be written.
    """
    outcome = run_ingest(sources, out_dir, **options)
    if out_dir is None:
        _validate(outcome, "scanned images")
    return outcome.manifest, outcome.rejected

"""A remote archive scored by the predict engine: :func:`predict_dicomweb` (QIDO-RS + WADO-RS) and
:func:`predict_dimse` (C-FIND + C-GET/C-MOVE) score the instances a query selects, chunk by chunk
(:func:`cxr_cad.pacs.source.stream_chunks` fetches, :func:`cxr_cad.inference.predict.predict`
scores), resumable by SOP Instance UID, with the same journal and reason codes; queries,
retrieves and results sent are recorded in ``OUT/audit.jsonl`` (:mod:`cxr_cad.pacs.audit`).

``cxr-cad predict`` reaches these through :func:`cxr_cad.api._pacs.predict_sources`; ``listen``
(:mod:`cxr_cad.api._listen`) shares :func:`rows_by_stem` and :func:`audit_results`.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cxr_cad.config import PredictOptions
from cxr_cad.core import atomic, provenance
from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import ConfigError
from cxr_cad.inference.outputs import PREDICTIONS, REJECTED, SUMMARY, check_writable
from cxr_cad.pacs.audit import AUDIT_FILE, AuditLog
from cxr_cad.pacs.client import NETWORK_REASONS, make_client, parse_url
from cxr_cad.pacs.dimse import DimseOptions, DimseSource, parse_dimse_url
from cxr_cad.pacs.fhir import FhirOutOptions
from cxr_cad.pacs.journal import Journal
from cxr_cad.pacs.output import DicomOutOptions, DicomOutput
from cxr_cad.pacs.results import Outputs, catch_up, make_outputs, record_outputs
from cxr_cad.pacs.source import (
    STATE_DIR,
    DicomwebResult,
    DicomwebSource,
    RemoteSource,
    check_state,
    list_remote,
    pending_chunks,
    stream_chunks,
    write_tables,
)

__all__ = ["DicomwebResult", "audit_results", "predict_dicomweb", "predict_dimse", "rows_by_stem"]

log = logging.getLogger(__name__)


def _run_identity(base: str, query: dict, model_path: PathLike, threshold: float | None) -> dict:
    """What makes a DICOMweb run folder resumable: the same source, query, model and threshold."""
    model = Path(model_path)
    return {
        "source": base,
        "query": query,
        "model_sha256": provenance.sha256_file(model) if model.is_file() else str(model.resolve()),
        "threshold": threshold,
    }


def _chunk_scorer(model_path: PathLike, options: PredictOptions) -> Callable[[Path, Path], tuple[dict, dict]]:
    """``score(spool folder, run folder)``: the predict engine over one fetched chunk,
    ``({SOP UID: prediction row}, {SOP UID: rejected row})``."""
    from cxr_cad.inference.predict import predict  # torch: imported when a chunk is scored

    def score(folder: Path, run_dir: Path) -> tuple[dict, dict]:
        predict([folder], run_dir, model_path, options.replace(overwrite=True))
        return rows_by_stem(run_dir / PREDICTIONS), rows_by_stem(run_dir / REJECTED)

    return score


def rows_by_stem(path: Path) -> dict[str, dict]:
    """A predictions/rejected table of a spool run keyed by file stem (the SOP Instance UID)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {Path(r["path"]).stem: r for r in csv.DictReader(fh)}


def audit_results(audit: AuditLog, writer: DicomOutput, sops: Sequence[str]) -> None:
    """One ``result`` audit record per source instance whose objects were sent on (STOW-RS / C-STORE)."""
    dest = writer.options.stow_url or (
        "{}@{}:{}".format(*writer.options.forward) if writer.options.forward is not None else None
    )
    if dest is None:
        return
    for sop in sops:
        rec = writer.rows.get(sop) or {}
        status = rec.get("stow", "")
        if not status:
            continue
        audit.record(
            "result",
            "success" if status in ("sent", "forwarded") else "failure",
            destination=dest,
            protocol="STOW-RS" if writer.options.stow_url else "C-STORE",
            source_sop_instance_uid=sop,
            study_instance_uid=rec.get("study_instance_uid", ""),
            sr_sop_instance_uid=rec.get("sr_sop_instance_uid", ""),
            sc_sop_instance_uid=rec.get("sc_sop_instance_uid", ""),
            status=status,
            detail=rec.get("detail", ""),
        )


class _AuditedSink:
    """The run's outputs (``--dicom-out``, ``--fhir-out``), with a ``result`` audit record for
    each DICOM object sent on."""

    def __init__(self, outputs: Outputs, audit: AuditLog):
        self.outputs, self.audit = outputs, audit
        self.writer = next((s for s in outputs.sinks if isinstance(s, DicomOutput)), None)

    def needs(self, sop: str) -> bool:
        return self.outputs.needs(sop)

    def summary_line(self) -> str:
        return self.outputs.summary_line()

    def write(self, items, cohort: dict | None = None) -> None:
        items = list(items)
        self.outputs.write(items, cohort)
        if self.writer is not None:
            audit_results(self.audit, self.writer, [row["sop_instance_uid"] for row, _, _ in items])


def predict_dicomweb(
    url: str,
    out_dir: PathLike,
    model_path: PathLike,
    options: PredictOptions | None = None,
    *,
    query: dict | None = None,
    chunk_size: int = 128,
    fetch_threads: int = 4,
    dicom_out: DicomOutOptions | None = None,
    audit: PathLike | None = None,
    fhir_out: FhirOutOptions | None = None,
) -> DicomwebResult:
    """Score every instance of the DICOMweb archive at ``url`` matching ``query`` into ``out_dir``
    (predictions.csv, rejected.csv, summary.json, audit.jsonl; :mod:`cxr_cad.pacs.source` says how
    every instance is accounted for and how a rerun resumes).

    ``options``: :class:`~cxr_cad.config.PredictOptions` (its ``overwrite`` discards an earlier
    run in ``out_dir``). ``dicom_out``: :class:`~cxr_cad.pacs.output.DicomOutOptions` or None.
    ``audit``: the audit log (default ``out_dir/audit.jsonl``).
    Raises ConfigError (bad URL/query/chunk size, a password in a URL), UsageError (``out_dir``
    holds another run), CxrCadError when the archive cannot be queried, and what the engine
    raises for a bad bundle.
    """
    _check_request(chunk_size, dicom_out)
    base = parse_url(url)
    out = Path(out_dir).absolute()
    check_writable(out)
    log_ = AuditLog(Path(audit) if audit else out / AUDIT_FILE)
    src = DicomwebSource(make_client(url), base, threads=fetch_threads, audit=log_)
    return _predict_remote(src, out, model_path, options, query or {}, chunk_size, dicom_out, log_, fhir_out)


def predict_dimse(
    url: str,
    out_dir: PathLike,
    model_path: PathLike,
    options: PredictOptions | None = None,
    *,
    query: dict | None = None,
    chunk_size: int = 128,
    dimse: DimseOptions | None = None,
    dicom_out: DicomOutOptions | None = None,
    audit: PathLike | None = None,
    fhir_out: FhirOutOptions | None = None,
) -> DicomwebResult:
    """:func:`predict_dicomweb` for an archive reached over DIMSE, ``url`` = ``dimse://AET@HOST:PORT``:
    C-FIND selects, C-GET (or C-MOVE, ``dimse.move_to``) fetches (:mod:`cxr_cad.pacs.dimse`).
    The run state sits in ``out_dir/.dimse/``; the tables, journal, resume and reason codes are
    those of a DICOMweb run. Raises as :func:`predict_dicomweb`."""
    _check_request(chunk_size, dicom_out)
    node = parse_dimse_url(url)
    out = Path(out_dir).absolute()
    check_writable(out)
    log_ = AuditLog(Path(audit) if audit else out / AUDIT_FILE)
    src = DimseSource(node, dimse, audit=log_)
    try:
        return _predict_remote(src, out, model_path, options, query or {}, chunk_size, dicom_out, log_, fhir_out)
    finally:
        src.close()


def _check_request(chunk_size: int, dicom_out: DicomOutOptions | None) -> None:
    """What can be refused before the archive is asked anything or state is written."""
    if chunk_size < 1:
        raise ConfigError(f"chunk size must be >= 1, not {chunk_size}")
    if dicom_out is not None and dicom_out.stow_url:
        parse_url(dicom_out.stow_url)


def _predict_remote(
    src: RemoteSource,
    out: Path,
    model_path: PathLike,
    options: PredictOptions | None,
    query: dict,
    chunk_size: int,
    dicom_out: DicomOutOptions | None,
    audit: AuditLog,
    fhir_out: FhirOutOptions | None = None,
) -> DicomwebResult:
    t0 = time.perf_counter()
    options = options or PredictOptions()
    try:
        instances = list_remote(src, query, audit)
        state_dir = out / (STATE_DIR if src.kind == "DICOMweb" else ".dimse")
        check_state(state_dir, _run_identity(src.base, query, model_path, options.threshold), options.overwrite)
        record_outputs(state_dir, dicom_out, fhir_out)  # every output option the folder was used with
        outputs = make_outputs(dicom_out, fhir_out, model_path)
        writer = _AuditedSink(outputs, audit) if outputs is not None else None
        journal = Journal(state_dir / "journal.jsonl")
        done = {s for s, r in journal.records.items() if r.get("reason") not in NETWORK_REASONS}
        n_before = sum(1 for i in instances if i.sop_instance_uid in done)
        chunks = pending_chunks(instances, done, chunk_size)
        log.info(
            "%d instance(s) listed, %d done earlier, %d chunk(s) of <= %d to fetch and score",
            len(instances),
            n_before,
            len(chunks),
            chunk_size,
        )
        try:
            n_processed = stream_chunks(
                src,
                instances,
                chunks,
                journal,
                state_dir / "spool",
                _chunk_scorer(model_path, options),
                sink=writer,
            )
            if writer is not None:  # instances scored earlier, before these outputs were asked for
                scored = {s: r for s, r in journal.records.items() if r.get("kind") == "prediction"}
                catch_up(writer, src, instances, scored, state_dir / "spool")
        finally:
            journal.close()
    finally:
        audit.close()
    result = DicomwebResult(
        out,
        len(instances),
        0,
        0,
        n_before,
        n_processed,
        time.perf_counter() - t0,
        dicom_out=writer.summary_line() if writer else "",
    )
    rows = [journal.records[i.sop_instance_uid] for i in instances if i.sop_instance_uid in journal.records]
    preds, rejs = write_tables(rows, out / PREDICTIONS, out / REJECTED)
    reasons = collections.Counter(r["reason"] for r in rejs)
    result.reasons, result.n_predicted, result.n_rejected = dict(sorted(reasons.items())), len(preds), len(rejs)
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "out_dir"}
    summary["images_per_s"] = round(result.images_per_s, 3)
    atomic.atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2, sort_keys=True))
    return result

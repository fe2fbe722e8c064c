"""The PACS side of ``predict`` / ``evaluate`` / ``ingest``: the orchestration that joins the
:mod:`cxr_cad.pacs` adapters (DICOMweb and DIMSE sources, SR/SC sink) to the predict engine
(``cxr-cad listen`` is :mod:`cxr_cad.api._listen`).

* :func:`predict_dicomweb` / :func:`predict_dimse` score the instances a QIDO-RS / C-FIND query
  selects, chunk by chunk (:func:`cxr_cad.pacs.source.stream_chunks` fetches with WADO-RS,
  C-GET or C-MOVE, :func:`cxr_cad.inference.predict.predict` scores), resumable by SOP
  Instance UID, with the same journal and reason codes; queries, retrieves and results sent
  are recorded in ``OUT/audit.jsonl`` (:mod:`cxr_cad.pacs.audit`).
* :func:`predict_sources` is ``cxr-cad predict``: a ``dicomweb:`` or ``dimse://`` source and/or
  ``--dicom-out`` (:class:`PacsOptions`), or plain folders.
* :func:`fetch_sources` / :func:`materialise` copy the selected instances to disk (ingest, evaluate).

Every function takes typed options (:class:`PacsOptions`, :class:`ListenOptions`,
:class:`~cxr_cad.config.PredictOptions`), never command-line arguments.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr_cad.api._scoring import score
from cxr_cad.config import PredictOptions
from cxr_cad.core import atomic, provenance
from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import ConfigError, UsageError
from cxr_cad.inference.outputs import PREDICTIONS, REJECTED, SUMMARY, check_writable
from cxr_cad.pacs.audit import AUDIT_FILE, AuditLog
from cxr_cad.pacs.client import NETWORK_REASONS, is_dicomweb, make_client, parse_url
from cxr_cad.pacs.dimse import DimseOptions, DimseSource, is_dimse, parse_dimse_url, parse_move_to
from cxr_cad.pacs.fhir import FhirOutOptions
from cxr_cad.pacs.journal import Journal
from cxr_cad.pacs.output import DicomOutOptions, DicomOutput, write_for_predictions
from cxr_cad.pacs.query import parse_query
from cxr_cad.pacs.results import Outputs, catch_up, make_outputs, record_outputs, write_predictions
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

__all__ = [
    "DicomOutOptions",
    "DicomwebResult",
    "PacsOptions",
    "audit_results",
    "dicom_out_options",
    "fetch_sources",
    "is_dicomweb",
    "is_remote",
    "materialise",
    "pacs_requested",
    "predict_dicomweb",
    "predict_dimse",
    "predict_sources",
    "rows_by_stem",
    "split_sources",
    "write_dicom_outputs",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PacsOptions:
    """The PACS options of a command (docs/pacs.md).

    Attributes:
        query: QIDO-RS filters ``KEYWORD=VALUE`` for a ``dicomweb:`` source.
        fetch_chunk: instances fetched, scored and deleted together (``predict``).
        fetch_to: folder the selected instances are fetched into (``ingest``).
        dicom_out: write a DICOM SR (TID 1500) per scored DICOM image into this folder.
        secondary_capture: with ``dicom_out``: also a Grad-CAM Secondary Capture.
        stow: with ``dicom_out``: send the objects to this DICOMweb archive (STOW-RS).
        calling_aet: our AE title towards a ``dimse://`` archive.
        move_to: ``AET@PORT`` / ``AET@HOST:PORT``: fetch from a ``dimse://`` archive with C-MOVE to
            a storage SCP of ours there (the archive must know the AE title); default C-GET.
        audit: the audit log (default ``OUT/audit.jsonl``).
        fhir_out: write a FHIR R4 DiagnosticReport (transaction Bundle) per study into this folder.
        fhir_url: with ``fhir_out``: POST each Bundle to this FHIR server base URL.
    """

    query: tuple[str, ...] = ()
    fetch_chunk: int = 128
    fetch_to: PathLike | None = None
    dicom_out: PathLike | None = None
    secondary_capture: bool = False
    stow: str | None = None
    calling_aet: str = "CXRCAD"
    move_to: str | None = None
    audit: PathLike | None = None
    fhir_out: PathLike | None = None
    fhir_url: str | None = None


def fhir_out_options(pacs: PacsOptions) -> FhirOutOptions | None:
    """The ``--fhir-out`` writer's options, or None; UsageError for ``--fhir-url`` alone."""
    if not pacs.fhir_out:
        if pacs.fhir_url:
            raise UsageError("--fhir-url needs --fhir-out DIR (the Bundles sent are kept there)")
        return None
    if pacs.fhir_url and "@" in pacs.fhir_url.split("//", 1)[-1].split("/", 1)[0]:
        raise UsageError("--fhir-url must not carry credentials; set CXR_CAD_FHIR_TOKEN")
    return FhirOutOptions(Path(pacs.fhir_out), pacs.fhir_url)


def dicom_out_options(pacs: PacsOptions) -> DicomOutOptions | None:
    """The ``--dicom-out`` writer's options, or None; UsageError for SC/STOW without ``dicom_out``."""
    if not pacs.dicom_out:
        if pacs.secondary_capture or pacs.stow:
            raise UsageError("--secondary-capture and --stow need --dicom-out DIR")
        return None
    if pacs.stow:
        parse_url(pacs.stow)  # a malformed URL or one with a password: refused before any query or state
    return DicomOutOptions(Path(pacs.dicom_out), secondary_capture=pacs.secondary_capture, stow_url=pacs.stow)


def is_remote(source: str) -> bool:
    """True for an archive source: ``dicomweb:http(s)://...`` or ``dimse://AET@HOST:PORT``."""
    return is_dicomweb(source) or is_dimse(source)


def pacs_requested(sources: Sequence[str], pacs: PacsOptions) -> bool:
    """True when the run needs the PACS adapters (an archive source, a query or a DICOM output)."""
    return any(is_remote(s) for s in sources) or bool(pacs.dicom_out) or bool(pacs.query) or bool(pacs.fhir_out)


def split_sources(sources: Sequence[str]) -> tuple[str | None, list[str]]:
    """(the one archive source or None, the other sources). UsageError for two archives."""
    web = [s for s in sources if is_remote(s)]
    if len(web) > 1:
        raise UsageError("give one archive source (dicomweb: or dimse://) per run")
    return (web[0] if web else None), [s for s in sources if not is_remote(s)]


# -- DICOMweb source -> predict engine ------------------------------------------------------------
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


def predict_sources(
    model: PathLike,
    sources: Sequence[str],
    out_dir: PathLike,
    options: PredictOptions,
    pacs: PacsOptions | None = None,
) -> list[str]:
    """``cxr-cad predict``: score folders, manifests, files or a ``dicomweb:`` archive, and with
    ``pacs.dicom_out`` write the DICOM SRs. Returns the summary lines for the terminal (none on
    ranks other than 0 of a torchrun job)."""
    pacs = pacs or PacsOptions()
    if not pacs_requested(sources, pacs):
        result = score(model, list(sources), out_dir, options)
        return [result.summary_line()] if result.runtime.get("rank", 0) == 0 else []
    web, local = split_sources(sources)
    dicom_out, fhir_out = dicom_out_options(pacs), fhir_out_options(pacs)
    if dicom_out is not None and options.backend not in ("torch", "auto"):
        raise UsageError(
            "--dicom-out needs a model bundle (--backend torch): the SR records the bundle's "
            "SHA-256 and the Secondary Capture runs Grad-CAM on its network"
        )
    if web:
        if local:
            raise UsageError("an archive source cannot be mixed with folders or files in one run")
        if is_dimse(web):
            dimse = DimseOptions(
                calling_aet=pacs.calling_aet, move_to=parse_move_to(pacs.move_to) if pacs.move_to else None
            )
            web_result = predict_dimse(
                web,
                out_dir,
                model,
                options,
                query=parse_query(pacs.query),
                chunk_size=pacs.fetch_chunk,
                dimse=dimse,
                dicom_out=dicom_out,
                audit=pacs.audit,
                fhir_out=fhir_out,
            )
        else:
            if pacs.move_to:
                raise UsageError("--move-to is for a dimse:// source")
            web_result = predict_dicomweb(
                web,
                out_dir,
                model,
                options,
                query=parse_query(pacs.query),
                chunk_size=pacs.fetch_chunk,
                dicom_out=dicom_out,
                audit=pacs.audit,
                fhir_out=fhir_out,
            )
        return [web_result.summary_line()]
    if pacs.query:
        raise UsageError("--query needs a dicomweb: source")
    local_result = score(model, local, out_dir, options)
    lines = [local_result.summary_line()]
    outputs = make_outputs(dicom_out, fhir_out, model)
    if outputs is not None:
        write_predictions(outputs, Path(out_dir) / PREDICTIONS)
        lines.append(outputs.summary_line())
    return lines


def write_dicom_outputs(pacs: PacsOptions, model: PathLike, predictions_csv: Path) -> str | None:
    """``--dicom-out`` after a local scoring run (evaluate): returns the summary line, or None."""
    options = dicom_out_options(pacs)
    if options is None:
        return None
    return write_for_predictions(options, model, predictions_csv).summary_line()


# -- DICOMweb source -> files on disk (ingest, evaluate) -------------------------------------------
def materialise(
    source: str, folder: Path, query_items: Sequence[str] | None, *, failed_csv: Path, chunk: int = 128
) -> Path:
    """Fetch the instances of an archive source (dicomweb: or dimse://) matching the query into
    ``folder`` (for ingest/evaluate).

    Ingest and evaluate build a cohort on disk by design; this copies only the selected
    instances, ``chunk`` at a time. Instances that cannot be fetched are listed in
    ``failed_csv`` with their reason codes. Returns ``folder``.
    """
    src: RemoteSource = (
        DimseSource(parse_dimse_url(source)) if is_dimse(source) else DicomwebSource(make_client(source), parse_url(source))
    )
    try:
        instances = list_remote(src, parse_query(query_items))
        folder.mkdir(parents=True, exist_ok=True)
        failed_all = {}
        for s in range(0, len(instances), chunk):
            todo = [i for i in instances[s : s + chunk] if not (folder / f"{i.sop_instance_uid}.dcm").exists()]
            failed_all.update(src.fetch(todo, folder)[1])
    finally:
        src.close()
    failed_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(failed_csv, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["sop_instance_uid", "reason", "detail"])
        w.writerows([sop, *why] for sop, why in sorted(failed_all.items()))
    log.info("%d instance(s) fetched into %s, %d failed", len(instances) - len(failed_all), folder, len(failed_all))
    return folder


def fetch_sources(sources: Sequence[str], out_dir: PathLike, pacs: PacsOptions | None = None) -> list[str]:
    """``sources`` with a dicomweb: source replaced by ``pacs.fetch_to``, the folder its selected
    instances are fetched into (ingest writes a manifest of files on disk); failures go to
    ``out_dir/fetch_failed.csv``."""
    pacs = pacs or PacsOptions()
    web, local = split_sources(sources)
    if web is None:
        if pacs.query:
            raise UsageError("--query needs a dicomweb: source")
        return list(sources)
    if not pacs.fetch_to:
        raise UsageError("a dicomweb: source needs --fetch-to DIR: ingest writes a manifest of files on disk")
    fetched = Path(pacs.fetch_to).absolute()
    out = Path(out_dir).absolute()
    if fetched == out or out in fetched.parents:
        raise UsageError("--fetch-to must be outside --out (ingest does not scan its own output folder)")
    materialise(web, fetched, pacs.query, failed_csv=Path(out_dir) / "fetch_failed.csv")
    return local + [str(fetched)]

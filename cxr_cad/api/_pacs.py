"""The PACS side of ``predict`` / ``evaluate`` / ``ingest``: the orchestration that joins the
:mod:`cxr_cad.pacs` adapters (DICOMweb and DIMSE sources, SR/SC/FHIR sinks) to the commands
(``cxr-cad listen`` is :mod:`cxr_cad.api._listen`).

* :func:`predict_sources` is ``cxr-cad predict``: a ``dicomweb:`` or ``dimse://`` source (scored
  by :func:`~cxr_cad.api._remote.predict_dicomweb` / :func:`~cxr_cad.api._remote.predict_dimse`,
  :mod:`cxr_cad.api._remote`) and/or ``--dicom-out`` (:class:`PacsOptions`), or plain folders.
* :func:`fetch_sources` / :func:`materialise` copy the selected instances to disk (ingest, evaluate).

Every function takes typed options (:class:`PacsOptions`, :class:`ListenOptions`,
:class:`~cxr_cad.config.PredictOptions`), never command-line arguments.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr_cad.api._remote import DicomwebResult, predict_dicomweb, predict_dimse
from cxr_cad.api._scoring import score
from cxr_cad.config import PredictOptions
from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import UsageError
from cxr_cad.inference.outputs import PREDICTIONS
from cxr_cad.pacs.client import is_dicomweb, make_client, parse_url
from cxr_cad.pacs.dimse import DimseOptions, DimseSource, is_dimse, parse_dimse_url, parse_move_to
from cxr_cad.pacs.fhir import FhirOutOptions
from cxr_cad.pacs.output import DicomOutOptions, write_for_predictions
from cxr_cad.pacs.query import parse_query
from cxr_cad.pacs.results import make_outputs, write_predictions
from cxr_cad.pacs.source import DicomwebSource, RemoteSource, list_remote

__all__ = [
    "DicomOutOptions",
    "DicomwebResult",
    "PacsOptions",
    "dicom_out_options",
    "fetch_sources",
    "is_dicomweb",
    "is_remote",
    "materialise",
    "pacs_requested",
    "predict_dicomweb",
    "predict_dimse",
    "predict_sources",
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
        tls_ca, tls_cert, tls_key: DICOM TLS towards a ``dimse://`` archive: the CA its certificate
            must chain to, and our client certificate and key (:class:`~cxr_cad.pacs.dimse.DimseOptions`).
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
    tls_ca: PathLike | None = None
    tls_cert: PathLike | None = None
    tls_key: PathLike | None = None


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
                calling_aet=pacs.calling_aet,
                move_to=parse_move_to(pacs.move_to) if pacs.move_to else None,
                tls_ca=str(pacs.tls_ca) if pacs.tls_ca else None,
                tls_cert=str(pacs.tls_cert) if pacs.tls_cert else None,
                tls_key=str(pacs.tls_key) if pacs.tls_key else None,
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
            if pacs.move_to or _tls_options(pacs):
                raise UsageError("--move-to and --tls-* are for a dimse:// source (use https:// for DICOMweb)")
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


def _tls_options(pacs: PacsOptions) -> bool:
    """True when a DICOM TLS option (``tls_ca``, ``tls_cert``, ``tls_key``) is given."""
    return bool(pacs.tls_ca or pacs.tls_cert or pacs.tls_key)


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
        DimseSource(parse_dimse_url(source))
        if is_dimse(source)
        else DicomwebSource(make_client(source), parse_url(source))
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

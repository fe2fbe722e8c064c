"""The PACS options of ``predict`` / ``evaluate`` / ``ingest`` and what they do, so each CLI adds a few lines.

``dicomweb:URL`` sources, ``--query``, ``--dicom-out``, ``--secondary-capture``, ``--stow``.
The orchestration lives here (and in :mod:`cxr_cad.pacs.source` / :mod:`cxr_cad.pacs.output`);
the CLI modules only register the options and call :func:`run_predict` / :func:`materialise`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cxr_cad.errors import UsageError
from cxr_cad.pacs.client import is_dicomweb

log = logging.getLogger(__name__)

SOURCE_HELP = (
    "a DICOMweb archive is written dicomweb:http(s)://HOST[:PORT]/PREFIX (credentials from "
    "CXR_CAD_DICOMWEB_USER/_PASSWORD, CXR_CAD_DICOMWEB_TOKEN or ~/.netrc, never arguments)"
)


def add_query_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--query",
        action="append",
        default=None,
        metavar="KEYWORD=VALUE",
        help="QIDO-RS filter for a dicomweb: source, repeatable, e.g. --query Modality=DX "
        "--query StudyDate=20240101-20240131 --query AccessionNumber=A123",
    )
    p.add_argument(
        "--fetch-chunk",
        type=int,
        default=128,
        metavar="N",
        help="dicomweb: instances fetched, scored and deleted together (default 128)",
    )


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dicom-out",
        default=None,
        metavar="DIR",
        help="write a DICOM SR (TID 1500) per scored DICOM image into DIR (research use)",
    )
    p.add_argument(
        "--secondary-capture",
        action="store_true",
        help="with --dicom-out: also a Grad-CAM Secondary Capture image per scored image",
    )
    p.add_argument(
        "--stow",
        default=None,
        metavar="URL",
        help="with --dicom-out: send the objects to this DICOMweb archive with STOW-RS",
    )


def pacs_requested(args: argparse.Namespace, sources: list[str]) -> bool:
    """True when the command needs this module (a dicomweb: source or a DICOM output option)."""
    return any(is_dicomweb(s) for s in sources) or bool(getattr(args, "dicom_out", None))


def dicom_out_options(args: argparse.Namespace):
    from cxr_cad.pacs.output import DicomOutOptions

    if not args.dicom_out:
        if args.secondary_capture or args.stow:
            raise UsageError("--secondary-capture and --stow need --dicom-out DIR")
        return None
    return DicomOutOptions(Path(args.dicom_out), secondary_capture=args.secondary_capture, stow_url=args.stow)


def split_sources(sources: list[str]) -> tuple[str | None, list[str]]:
    """(the one dicomweb: source or None, the other sources). UsageError for two archives."""
    web = [s for s in sources if is_dicomweb(s)]
    if len(web) > 1:
        raise UsageError("give one dicomweb: source per run")
    return (web[0] if web else None), [s for s in sources if not is_dicomweb(s)]


def run_predict(args: argparse.Namespace, sources: list[str], out: str, model: str, options) -> list[str]:
    """``predict`` with a dicomweb: source and/or --dicom-out. Returns summary lines for the terminal."""
    from cxr_cad.inference.predict import predict
    from cxr_cad.pacs.output import write_for_predictions
    from cxr_cad.pacs.query import parse_query
    from cxr_cad.pacs.source import predict_dicomweb

    web, local = split_sources(sources)
    dicom_out = dicom_out_options(args)
    if dicom_out is not None and getattr(options, "backend", "torch") != "torch":
        raise UsageError(
            "--dicom-out needs a model bundle (--backend torch): the SR records the bundle's "
            "SHA-256 and the Secondary Capture runs Grad-CAM on its network"
        )
    if web:
        if local:
            raise UsageError("a dicomweb: source cannot be mixed with folders or files in one run")
        result = predict_dicomweb(
            web,
            out,
            model,
            options,
            query=parse_query(getattr(args, "query", None)),
            chunk_size=getattr(args, "fetch_chunk", 128),
            dicom_out=dicom_out,
        )
        return [result.summary_line()]
    if getattr(args, "query", None):
        raise UsageError("--query needs a dicomweb: source")
    local_result = predict(local, out, model, options)
    lines = [local_result.summary_line()]
    if dicom_out is not None:
        lines.append(write_for_predictions(dicom_out, model, Path(out) / "predictions.csv").summary_line())
    return lines


def materialise(
    source: str, folder: Path, query_items: list[str] | None, *, failed_csv: Path, chunk: int = 128
) -> Path:
    """Fetch the instances of a dicomweb: source matching the query into ``folder`` (for ingest/evaluate).

    Ingest and evaluate build a cohort on disk by design; this copies only the selected
    instances, ``chunk`` at a time. Instances that cannot be fetched are listed in
    ``failed_csv`` with their reason codes. Returns ``folder``.
    """
    import csv

    from cxr_cad.pacs.client import make_client
    from cxr_cad.pacs.query import fetch_many, list_instances, parse_query

    client = make_client(source)
    instances = list_instances(client, parse_query(query_items))
    folder.mkdir(parents=True, exist_ok=True)
    failed_all = {}
    for s in range(0, len(instances), chunk):
        todo = [i for i in instances[s : s + chunk] if not (folder / f"{i.sop_instance_uid}.dcm").exists()]
        failed_all.update(fetch_many(client, todo, folder)[1])
    failed_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(failed_csv, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["sop_instance_uid", "reason", "detail"])
        w.writerows([sop, *why] for sop, why in sorted(failed_all.items()))
    log.info("%d instance(s) fetched into %s, %d failed", len(instances) - len(failed_all), folder, len(failed_all))
    return folder


def add_fetch_options(p: argparse.ArgumentParser) -> None:
    """``--query`` and ``--fetch-to`` for commands that build a cohort on disk (ingest)."""
    p.add_argument(
        "--query",
        action="append",
        default=None,
        metavar="KEYWORD=VALUE",
        help="QIDO-RS filter for a dicomweb: source, repeatable (e.g. Modality=DX, StudyDate=20240101-20240131)",
    )
    p.add_argument(
        "--fetch-to",
        default=None,
        metavar="DIR",
        help="with a dicomweb: source: folder the selected instances are fetched into (the manifest "
        "points at them); instances that could not be fetched go to OUT/fetch_failed.csv",
    )


def materialise_sources(args: argparse.Namespace, out: str) -> list[str]:
    """``args.sources`` with each dicomweb: source replaced by the folder it was fetched into (ingest)."""
    web, local = split_sources(list(args.sources))
    if web is None:
        if getattr(args, "query", None):
            raise UsageError("--query needs a dicomweb: source")
        return list(args.sources)
    if not getattr(args, "fetch_to", None):
        raise UsageError("a dicomweb: source needs --fetch-to DIR: ingest writes a manifest of files on disk")
    fetched = Path(args.fetch_to).absolute()
    if fetched == Path(out).absolute() or Path(out).absolute() in fetched.parents:
        raise UsageError("--fetch-to must be outside --out (ingest does not scan its own output folder)")
    materialise(web, fetched, args.query, failed_csv=Path(out) / "fetch_failed.csv")
    return local + [str(fetched)]


def write_dicom_outputs(args: argparse.Namespace, model: str, predictions_csv: Path) -> str | None:
    """``--dicom-out`` after a local scoring run (evaluate): returns the summary line, or None."""
    from cxr_cad.pacs.output import write_for_predictions

    options = dicom_out_options(args)
    if options is None:
        return None
    return write_for_predictions(options, model, predictions_csv).summary_line()

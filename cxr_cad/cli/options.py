"""Options several commands share, declared once: the accept policy (``--modalities``,
``--allow-lateral``, ``--no-voi``), the PACS options (``--query``, ``--fetch-chunk``,
``--fetch-to``, ``--dicom-out``, ``--secondary-capture``, ``--stow``) and the argparse types.
Each ``add_*`` has its reader (``policy_from``, ``pacs_from``) that turns the parsed values into
the typed options the API takes."""

from __future__ import annotations

import argparse

from cxr_cad.api import AcceptPolicy, PacsOptions

__all__ = [
    "SOURCE_HELP",
    "add_output_options",
    "add_pacs_query",
    "add_policy_options",
    "non_negative_int",
    "pacs_from",
    "policy_from",
    "positive_int",
    "threshold_arg",
]

SOURCE_HELP = (
    "a DICOMweb archive is written dicomweb:http(s)://HOST[:PORT]/PREFIX (credentials from "
    "CXR_CAD_DICOMWEB_USER/_PASSWORD, CXR_CAD_DICOMWEB_TOKEN or ~/.netrc, never arguments)"
)


def threshold_arg(text: str) -> float:
    """argparse type of --threshold: a number in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold must be within [0, 1], not {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def add_policy_options(p: argparse.ArgumentParser, *, lateral_help: str, no_voi_help: str | None = None) -> None:
    """``--modalities``, ``--allow-lateral`` and (with ``no_voi_help``) ``--no-voi``: which files
    are accepted (:class:`~cxr_cad.config.AcceptPolicy`; read back with :func:`policy_from`)."""
    p.add_argument(
        "--modalities",
        default="CR,DX,DR",
        metavar="LIST",
        help="accepted (0008,0060) Modality values, comma-separated, or 'any' (default: CR,DX,DR)",
    )
    p.add_argument("--allow-lateral", action="store_true", help=lateral_help)
    if no_voi_help:
        p.add_argument("--no-voi", action="store_true", help=no_voi_help)


def policy_from(args: argparse.Namespace) -> AcceptPolicy:
    """The accept policy of :func:`add_policy_options`'s flags (ConfigError for a bad --modalities)."""
    return AcceptPolicy.from_options(
        modalities=args.modalities,
        allow_lateral=args.allow_lateral,
        apply_voi=not getattr(args, "no_voi", False),
    )


def add_pacs_query(p: argparse.ArgumentParser, *, help: str, fetch_chunk: bool = False, fetch_to: bool = False) -> None:
    """``--query`` (a dicomweb: source's QIDO-RS filters), with ``--fetch-chunk`` (streamed
    scoring) or ``--fetch-to`` (a cohort fetched to disk)."""
    p.add_argument("--query", action="append", default=None, metavar="KEYWORD=VALUE", help=help)
    if fetch_chunk:
        p.add_argument(
            "--fetch-chunk",
            type=int,
            default=128,
            metavar="N",
            help="dicomweb: instances fetched, scored and deleted together (default 128)",
        )
    if fetch_to:
        p.add_argument(
            "--fetch-to",
            default=None,
            metavar="DIR",
            help="with a dicomweb: source: folder the selected instances are fetched into (the manifest "
            "points at them); instances that could not be fetched go to OUT/fetch_failed.csv",
        )


def add_output_options(p: argparse.ArgumentParser) -> None:
    """``--dicom-out DIR`` [``--secondary-capture``] [``--stow URL``] (docs/pacs.md)."""
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


def pacs_from(args: argparse.Namespace) -> PacsOptions:
    """The :class:`~cxr_cad.api.PacsOptions` of whichever PACS flags the command declares."""
    return PacsOptions(
        query=tuple(getattr(args, "query", None) or ()),
        fetch_chunk=getattr(args, "fetch_chunk", 128),
        fetch_to=getattr(args, "fetch_to", None),
        dicom_out=getattr(args, "dicom_out", None),
        secondary_capture=getattr(args, "secondary_capture", False),
        stow=getattr(args, "stow", None),
    )

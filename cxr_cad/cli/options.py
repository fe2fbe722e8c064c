"""Options several commands share, declared once, and the checks every command makes before
anything heavy is imported.

* the accept policy (``--modalities``, ``--allow-lateral``, ``--no-voi``), the PACS options
  (``--query``, ``--fetch-chunk``, ``--fetch-to``, ``--dicom-out``, ``--secondary-capture``,
  ``--stow``) and the argparse types. Each ``add_*`` has its reader (``policy_from``,
  ``pacs_from``) that turns the parsed values into the typed options the API takes.
* :func:`preflight`: what the user named must be there before torch, MONAI, pandas or a bundle
  is loaded: input files are regular files, folders are folders, sources exist, ``--model``
  is a bundle file (a run folder holding ``model.pt`` is taken as its ``model.pt``), output
  folders can be created and written. Every problem is listed at once (exit 2). The checks
  are keyed by the argparse ``dest`` (:data:`INPUT_FILES`, :data:`MODELS`, :data:`OUTPUTS`,
  :data:`SOURCES`), so a new command gets them by naming its arguments the same way.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_cad import api
from cxr_cad.errors import ProblemListError, UsageError

if TYPE_CHECKING:
    from cxr_cad.api import AcceptPolicy, PacsOptions

__all__ = [
    "INPUT_FILES",
    "MODELS",
    "OUTPUTS",
    "SOURCE_HELP",
    "SOURCES",
    "add_output_options",
    "add_pacs_query",
    "add_policy_options",
    "check_out_dir",
    "non_negative_int",
    "pacs_from",
    "policy_from",
    "positive_int",
    "preflight",
    "resolve_model",
    "threshold_arg",
]

log = logging.getLogger("cxr_cad.cli")

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
    return api.AcceptPolicy.from_options(
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
    return api.PacsOptions(
        query=tuple(getattr(args, "query", None) or ()),
        fetch_chunk=getattr(args, "fetch_chunk", 128),
        fetch_to=getattr(args, "fetch_to", None),
        dicom_out=getattr(args, "dicom_out", None),
        secondary_capture=getattr(args, "secondary_capture", False),
        stow=getattr(args, "stow", None),
        fhir_out=getattr(args, "fhir_out", None),
        fhir_url=getattr(args, "fhir_url", None),
    )


# -- checks before anything heavy is imported ----------------------------------------------------
#: Arguments that name one existing input file: argparse dest -> (what the file is, the
#: commands whose dest means that; None = every command that has the dest).
INPUT_FILES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "manifest": ("manifest .csv", None),
    "eval_manifest": ("manifest .csv", None),
    "config": ("config .yaml", None),
    "labels": ("labels .csv", None),
    "predictions": ("predictions .csv", None),
    "rejected": ("rejected-files .csv", None),
    "cv_metrics": ("cv_metrics.json", None),
    "compare_predictions": ("predictions .csv", None),
    "cohort_info": ("cohort description (YAML/JSON)", None),
    "calibration": ("manifest .csv", ("export",)),  # adapt's --calibration is a method name
}
#: Arguments that name a model bundle (a run folder holding model.pt stands for its model.pt).
MODELS = ("model", "compare")
#: Arguments that name an output folder (created when missing).
OUTPUTS = ("out", "work_dir", "dicom_out", "fetch_to", "fhir_out")
#: Arguments that name inputs that must exist: folders, files or a dicomweb: archive.
SOURCES = ("sources", "cohort_dir")

#: errno of a probe that says "the disk is full" (the run's failure, exit 1), not a wrong path.
_FULL = {errno.ENOSPC, errno.EDQUOT}


def _flag(dest: str) -> str:
    return {"predictions": "PREDICTIONS.csv", "sources": "SOURCE", "cohort_dir": "DIR"}.get(
        dest, "--" + dest.replace("_", "-")
    )


def _is_url(text: str) -> bool:
    return text.startswith(("dicomweb:", "dimse://"))


def check_input_file(path: str, flag: str, what: str) -> str | None:
    """None when ``path`` is a regular file, else the problem (with a hint)."""
    p = Path(os.path.expanduser(path))
    if p.is_file():
        return None
    if p.is_dir():
        inside = sorted(c.name for c in p.iterdir() if c.is_file() and c.suffix in (".csv", ".yaml", ".yml", ".json"))
        hint = f" (it holds {', '.join(inside[:4])})" if inside else ""
        return f"{flag} {path} is a folder; give the {what} file{hint}"
    if p.exists():
        return f"{flag} {path} is not a regular file (a FIFO, socket or device); give the {what} file"
    return f"{flag} {path} not found (relative paths start in {Path.cwd()}); give an existing {what} file"


def _bundles_below(folder: Path) -> list[Path]:
    """model.pt files one or two levels below ``folder`` (final/, folds/K/), nearest first."""
    found = sorted(folder.glob("*/model.pt")) + sorted(folder.glob("*/*/model.pt"))
    return found[:6]


def resolve_model(path: str, flag: str = "--model", *, backend: str = "torch") -> tuple[str, str | None]:
    """``(the bundle file to use, problem or None)``.

    A folder holding ``model.pt`` (the run folder of ``cxr-cad train`` or ``adapt``) stands for
    that file, logged at INFO; a folder without one is a problem naming the bundles below it
    (a cross-validation run folder: ``final/model.pt``, ``folds/K/model.pt``). With
    ``backend`` other than torch a folder is an export folder and is passed on as it is.
    """
    p = Path(os.path.expanduser(path))
    if p.is_file():
        return path, None
    if p.is_dir():
        if backend != "torch":
            return path, None
        if (p / "model.pt").is_file():
            chosen = p / "model.pt"
            log.info("%s %s is a folder: using its bundle %s", flag, path, chosen)
            return str(chosen), None
        below = _bundles_below(p)
        if below:
            return path, (
                f"{flag} {path} is a folder without model.pt; give one of its bundles: "
                + ", ".join(str(b) for b in below)
            )
        return path, f"{flag} {path} is a folder without a model bundle; give the model.pt that cxr-cad train wrote"
    if p.exists():
        return path, f"{flag} {path} is not a regular file (a FIFO, socket or device); give a model bundle (.pt)"
    return path, (
        f"{flag} {path} not found (relative paths start in {Path.cwd()}); give the model.pt that cxr-cad train wrote"
    )


def check_out_dir(path: str, flag: str = "--out") -> str | None:
    """None when the output folder ``path`` exists and can be written, or can be created; else
    the problem. Probed by creating (and removing) an empty folder: nothing is left behind,
    and a full disk is not reported here (that is the run's failure, exit 1, naming the folder)."""
    p = Path(os.path.expanduser(path)).absolute()
    if p.exists() and not p.is_dir():
        return f"{flag} {path} is a file, not a folder; give a folder (created when missing)"
    probe_in = p
    while not probe_in.exists():
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if probe_in.exists() and not probe_in.is_dir():
        return f"{flag} {path} cannot be created: {probe_in} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cxr-cad-write-test-", dir=probe_in))
    except OSError as exc:
        if exc.errno in _FULL:
            return None
        what = "written" if probe_in == p else f"created (in {probe_in})"
        return f"{flag} {path} cannot be {what}: {exc.strerror or exc}; choose another folder"
    return None


def _check_sources(values: list[str] | str | None, flag: str) -> list[str]:
    if values is None:
        return []
    missing = [
        v for v in ([values] if isinstance(values, str) else values) if not _is_url(v) and not os.path.lexists(v)
    ]
    if not missing:
        return []
    return [
        f"{flag} not found: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} "
        f"(relative paths start in {Path.cwd()}); give existing folders, files or manifest .csv files"
    ]


def _check_init(value: str | None) -> list[str]:
    """``--init``: imagenet, none, imagenet:/path (an existing file) or an existing bundle file."""
    if not value or value in ("imagenet", "none"):
        return []
    path = value.split(":", 1)[1] if value.startswith("imagenet:") else value
    if Path(os.path.expanduser(path)).is_file():
        return []
    return [
        f"--init {value}: not imagenet, imagenet:/path/weights.pth, none or an existing bundle / weights "
        f"file ({path} not found; relative paths start in {Path.cwd()})"
    ]


def _check_export_folder(path: str) -> list[str]:
    """``--backend onnxruntime|openvino|torchscript``: --model is an export folder (or a file in one)."""
    from cxr_cad.export.names import EXPORT_FILE

    p = Path(os.path.expanduser(path))
    folder = p if p.is_dir() else p.parent
    if (folder / EXPORT_FILE).is_file():
        return []
    return [
        f"--model {path} is not a folder written by cxr-cad export (no {EXPORT_FILE} in {folder}); "
        "export the bundle first (cxr-cad export --model BUNDLE --format onnx --out DIR), or score the bundle "
        "with --backend torch"
    ]


def _evaluate_folder_with_labels(args: argparse.Namespace) -> list[str]:
    """``evaluate DIR --labels CSV``: the labels CSV joins a dicomweb: cohort; for a local folder
    the two commands that do it."""
    folder, labels = getattr(args, "cohort_dir", None), getattr(args, "labels", None)
    if getattr(args, "command", None) != "evaluate" or not folder or not labels or _is_url(folder):
        return []
    model = getattr(args, "model", None) or "BUNDLE"
    out = getattr(args, "out", None) or "REPORT"
    manifest_dir = f"{Path(folder).name or 'cohort'}_manifest"
    return [
        f"evaluate takes the labels of a local folder from its DIR/<class>/ sub-folders; --labels "
        f"{labels} joins a dicomweb: cohort. To evaluate {folder} with {labels}, run:\n"
        f"    cxr-cad ingest {folder} --labels {labels} --out {manifest_dir}\n"
        f"    cxr-cad evaluate --manifest {manifest_dir}/manifest.csv --model {model} --out {out}"
    ]


def preflight(args: argparse.Namespace) -> None:
    """Check what ``args`` names before the command imports its engine (see the module doc).

    Replaces a ``--model`` run folder by its ``model.pt``. Raises UsageError (exit 2) listing
    every problem.
    """
    problems: list[str] = []
    for dest in SOURCES:
        problems += _check_sources(getattr(args, dest, None), _flag(dest))
    command = getattr(args, "command", None)
    for dest, (what, commands) in INPUT_FILES.items():
        value = getattr(args, dest, None)
        if isinstance(value, str) and value and (commands is None or command in commands):
            problem = check_input_file(value, _flag(dest), what)
            if problem:
                problems.append(problem)
    backend = getattr(args, "backend", "torch") or "torch"
    backend = "torch" if backend == "auto" else backend  # auto scores a bundle (cxr_cad.inference.backend)
    for dest in MODELS:
        value = getattr(args, dest, None)
        if isinstance(value, str) and value:
            chosen, problem = resolve_model(value, _flag(dest), backend=backend if dest == "model" else "torch")
            setattr(args, dest, chosen)
            if problem:
                problems.append(problem)
            elif dest == "model" and backend != "torch":
                problems += _check_export_folder(chosen)
    if command in ("train", "crossval"):
        problems += _check_init(getattr(args, "init", None))
    for dest in OUTPUTS:
        value = getattr(args, dest, None)
        if isinstance(value, str) and value:
            problem = check_out_dir(value, _flag(dest))
            if problem:
                problems.append(problem)
    folder = getattr(args, "cohort_dir", None)
    if isinstance(folder, str) and not _is_url(folder) and Path(folder).is_file():
        hint = " (a manifest goes to --manifest)" if folder.endswith(".csv") else ""
        problems.append(f"DIR {folder} is a file; give the cohort folder that holds DIR/<class>/ images{hint}")
    problems += _evaluate_folder_with_labels(args)
    if len(problems) == 1:
        raise UsageError(problems[0])
    if problems:
        raise ProblemListError(problems)

"""What ``ingest`` refuses, with the fix named: options that do not fit together, an output
folder that cannot be written (before the scan), and inputs with nothing to ingest or nothing
accepted (after it). Used by :mod:`cxr_cad.api._ingest`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import ConfigError, OutputError, UsageError
from cxr_cad.manifest.scan import ScanResult

if TYPE_CHECKING:
    from cxr_cad.api._ingest import IngestOutcome
    from cxr_cad.api._labels import Labels

__all__ = ["by_reason", "check_accepted", "check_found", "check_options", "check_out_dir"]


def by_reason(rejected: pd.DataFrame) -> dict[str, int]:
    """Rejected files counted by reason code."""
    return {str(k): int(v) for k, v in rejected["reason"].value_counts().items()}


def check_options(
    classes: list[str] | None, positive_class: str | None, workers: int | None, labels: Labels, label_key: object
) -> None:
    """ConfigError listing every option that does not fit the others (before anything is read)."""
    problems = []
    if classes is not None and len(set(classes)) != len(classes):
        problems.append(f"classes (--classes) lists a class twice: {','.join(classes)}")
    if positive_class and classes and positive_class not in classes:
        problems.append(
            f"positive class (--positive-class) {positive_class!r} is not one of classes {','.join(classes)}"
        )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        problems.append(f"workers (--workers) must be 1 or more (got {workers})")
    if label_key and (labels is None or (isinstance(labels, str) and labels == "folders")):
        problems.append("label_key (--label-key/--label-column) needs a labels table (--labels)")
    if problems:
        raise ConfigError(problems)


def check_out_dir(out: PathLike) -> None:
    """The output folder must be creatable and writable (checked with a probe file)."""
    import tempfile

    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"output folder {out} is not writable ({exc.strerror or exc}); choose another --out") from exc


#: What to change for the rejection reasons that an option decides (the rest: fix the export).
_REASON_HINTS = {
    "UNSUPPORTED_MODALITY": "--modalities any (or the modalities of these images) accepts other modalities",
    "LATERAL_VIEW": "--allow-lateral accepts lateral views",
    "NOT_DICOM": "give the folder that holds the DICOM/PNG/JPEG images",
    "UNSUPPORTED_FORMAT": "convert the images to DICOM, PNG or JPEG",
}


def check_found(scan: ScanResult, sources: list[str], table: bool) -> None:
    """Nothing to ingest is the user's input, not a result: UsageError (exit 2), nothing written."""
    if scan.n_files:
        return
    if table:
        where = f" {sources[0]}" if sources else ""
        raise UsageError(f"the manifest table{where} has no rows; give a table with one row per image")
    raise UsageError(
        f"no file found in {', '.join(sources)}: the folder is empty (files under --out are not scanned); "
        "give the folder that holds the DICOM/PNG/JPEG images"
    )


def check_accepted(outcome: IngestOutcome, out_dir: PathLike | None) -> None:
    """Files were found but none was accepted: UsageError (exit 2) naming the sources, the
    reasons and what to change. With ``out_dir`` the outputs were written first, so rejected.csv
    lists every file and why. (Accepted images all left out as unlabelled, ``drop_unlabelled``,
    are the caller's to explain: the workflow names its labels setting.)"""
    if len(outcome.scan.accepted) or not outcome.scan.n_files:
        return
    where = ", ".join(outcome.sources) or "the manifest table"
    written = f"; rejected.csv in {Path(out_dir).absolute()} lists each file and why" if out_dir is not None else ""
    rejected = outcome.rejected
    counts = by_reason(rejected)
    first = rejected.iloc[0] if len(rejected) else None
    example = f"; e.g. {first['path']}: {first['detail']}" if first is not None else ""
    hints = [_REASON_HINTS[r] for r in counts if r in _REASON_HINTS]
    hint = "; ".join(hints) if hints else "fix or re-export the files"
    raise UsageError(
        f"no image was accepted: all {outcome.scan.n_files} files in {where} were rejected "
        f"({', '.join(f'{k} {v}' for k, v in counts.items())}){example}. {hint}{written}"
    )

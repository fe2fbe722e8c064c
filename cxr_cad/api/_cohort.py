"""The labelled cohort ``cxr-cad evaluate`` scores: a manifest, a folder laid out as
``DIR/<class>/...``, or the instances a DICOMweb query selects joined to a labels CSV."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxr_cad.api._pacs import materialise
from cxr_cad.config import AcceptPolicy
from cxr_cad.core.atomic import PathLike
from cxr_cad.core.columns import REJECTED_COLUMNS
from cxr_cad.errors import Reason, UsageError
from cxr_cad.manifest import join_labels, labels_from_folders, read_manifest, resolve_paths, write_manifest
from cxr_cad.manifest.scan import scan_sources
from cxr_cad.pacs.client import is_dicomweb

__all__ = ["Cohort", "labelled_cohort"]


@dataclass
class Cohort:
    """``manifest_path``: the manifest file to score; ``manifest``: its rows (absolute paths);
    ``rejected``: files the scan (or the archive) did not give."""

    manifest_path: Path
    manifest: pd.DataFrame
    rejected: pd.DataFrame


def labelled_cohort(
    *,
    manifest: PathLike | None,
    folder: str | None,
    classes: Sequence[str],
    work: Path,
    policy: AcceptPolicy,
    labels: PathLike | None = None,
    query: Sequence[str] | None = None,
) -> Cohort:
    """The cohort from ``manifest`` (with a label column) or ``folder`` (``DIR/<class>/...`` or
    a ``dicomweb:`` URL with ``labels``). Scans write ``work/cohort_manifest.csv``.

    Raises UsageError: neither or both given, a folder without class folders, no labels.
    """
    if bool(manifest) == bool(folder):
        raise UsageError("give either --manifest M.csv or a cohort folder DIR, not both or neither")
    if folder and is_dicomweb(folder):
        return _dicomweb_cohort(folder, labels, query, classes, work, policy)
    if labels or query:
        raise UsageError(
            "--labels and --query are for a dicomweb: cohort; a folder cohort takes its labels "
            "from DIR/<class>/, a manifest from its label column"
        )
    if manifest:
        path = Path(manifest)
        df = resolve_paths(read_manifest(path, require_labels=True, check_files=False), path.parent)
        return Cohort(path, df, pd.DataFrame(columns=REJECTED_COLUMNS))

    root = Path(str(folder))
    if not root.is_dir():
        raise UsageError(f"cohort folder {root} not found")
    scan = scan_sources([root], policy=policy)
    if scan.accepted.empty:
        raise UsageError(_nothing_accepted(root, scan.n_files, scan.rejected_by_reason()))
    df = labels_from_folders(scan.accepted, classes=classes)
    unknown = sorted(set(df["label"]) - set(classes))
    if unknown:
        raise UsageError(
            f"{root}: images sit in folders {', '.join(unknown[:5])} that are not classes of the "
            f"model ({', '.join(classes)}); put each image under DIR/<class>/ or use --manifest"
        )
    path = work / "cohort_manifest.csv"
    write_manifest(df, path)
    return Cohort(path, df, scan.rejected)


def _nothing_accepted(root: Path, n_files: int, reasons: dict[str, int]) -> str:
    """The message of a cohort folder without an accepted image (exit 2)."""
    if not n_files:
        return f"cohort folder {root} holds no file; give the folder that holds DIR/<class>/ images"
    why = ", ".join(f"{k} {v}" for k, v in reasons.items())
    return (
        f"no image of cohort folder {root} was accepted: all {n_files} files were rejected ({why}); "
        "run `cxr-cad ingest` on it to see each file's reason"
    )


def _dicomweb_cohort(
    url: str,
    labels: PathLike | None,
    query: Sequence[str] | None,
    classes: Sequence[str],
    work: Path,
    policy: AcceptPolicy,
) -> Cohort:
    """The instances the query selects, fetched into ``work``, scanned and joined to ``labels``.
    Instances that could not be fetched keep their network reason code, images without a label
    are NO_LABEL: every selected instance ends in the predictions or the rejected table."""
    if not labels:
        raise UsageError(
            "a dicomweb: cohort needs --labels L.csv (a `label` column and a sop_instance_uid, "
            "study_instance_uid, accession_number or patient_id column)"
        )
    fetched = work / "dicomweb"
    failed_csv = work / "fetch_failed.csv"
    materialise(url, fetched, list(query) if query else None, failed_csv=failed_csv)
    scan = scan_sources([fetched], policy=policy)
    df, _report = join_labels(scan.accepted, labels, classes=classes)
    unlabelled = df["label"].astype(str) == ""
    failed = pd.read_csv(failed_csv, dtype=str, keep_default_na=False)
    no_label = pd.DataFrame(
        {
            "path": df.loc[unlabelled, "path"],
            "reason": str(Reason.NO_LABEL),
            "detail": f"no row of {Path(labels).name} matches this image",
        }
    )
    not_fetched = pd.DataFrame(
        {"path": "dicomweb:" + failed["sop_instance_uid"], "reason": failed["reason"], "detail": failed["detail"]}
    )
    rejected = pd.concat([scan.rejected, no_label, not_fetched], ignore_index=True)
    df = df.loc[~unlabelled].reset_index(drop=True)
    if df.empty:
        raise UsageError(f"no image of the dicomweb: cohort has a label in {labels}")
    path = work / "cohort_manifest.csv"
    write_manifest(df, path)
    return Cohort(path, df, rejected)

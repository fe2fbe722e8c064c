"""The label joins of ``ingest`` (:mod:`cxr_cad.api._ingest`): class-named folders, a labels
table (one label per image), or a multi-label layout (``--label-layout nih|columns|chexpert``:
one ``finding_<name>`` column per finding); and the classes or findings an ingest ends with."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import ConfigError, UsageError
from cxr_cad.manifest import explain_unmatched, join_labels, labels_from_folders
from cxr_cad.manifest.multilabel import MultilabelLabels, join_multilabel, read_multilabel
from cxr_cad.manifest.scan import ScanResult

if TYPE_CHECKING:
    from cxr_cad.manifest.labels import LabelJoinReport

__all__ = [
    "Labels",
    "classes_found",
    "findings_found",
    "folder_label_problem",
    "label_images",
    "label_multilabel",
    "read_layout_labels",
]

#: What ``labels`` may be: a labels CSV, a labels table, ``"folders"`` (class-named folders) or None.
Labels = PathLike | pd.DataFrame | None


def folder_label_problem(df: pd.DataFrame, classes: list[str]) -> str | None:
    unknown = df[~df["label"].isin(classes)]
    if unknown.empty:
        return None
    names = unknown["label"].replace("", "(no folder)")
    named = ", ".join(
        f"{k!r} ({v} files, e.g. {unknown['path'][names == k].iloc[0]})" for k, v in names.value_counts().items()
    )
    return (
        f"folder label(s) not in --classes {','.join(classes)}: {named}; put each image under a folder named "
        "after its class, or fix --classes"
    )


def label_images(
    manifest: pd.DataFrame, scan: ScanResult, labels: Labels, opts: dict[str, Any], classes: list[str] | None
) -> tuple[pd.DataFrame, LabelJoinReport | None, str | None]:
    """``(labelled manifest, label join report or None, label source)``."""
    if labels == "folders":
        manifest = labels_from_folders(manifest, classes=classes)
        if classes and not opts["drop_unlabelled"]:
            problem = folder_label_problem(manifest, classes)
            if problem:
                raise UsageError(problem)
        return manifest, None, "folders"
    if labels is None:
        return manifest, None, None
    source = os.path.abspath(labels) if isinstance(labels, (str, os.PathLike)) else "table"
    manifest, report = join_labels(
        manifest,
        source if isinstance(labels, (str, os.PathLike)) else labels,
        key=opts["label_key"],
        label_column=opts["label_column"],
        classes=classes,
        base_dir=os.path.dirname(source) if source != "table" else None,
    )
    explain_unmatched(report, scan.rejected, os.path.dirname(source) if source != "table" else None)
    return manifest, report, source


def classes_found(
    manifest: pd.DataFrame, cls: list[str] | None, positive_class: str | None, drop_unlabelled: bool
) -> tuple[pd.DataFrame, pd.DataFrame | None, list[str] | None]:
    """(manifest, unlabelled rows left out or None, classes: as given, else the labels found)."""
    unlabelled = None
    if drop_unlabelled:
        keep = manifest["label"].isin(cls or [])
        unlabelled = manifest.loc[~keep, ["path", "label"]]
        manifest = manifest[keep].reset_index(drop=True)
    found = sorted(set(manifest["label"]) - {""})
    if cls is None and found:
        cls = found
    if positive_class and cls is not None and positive_class not in cls:
        raise ConfigError(
            f"positive class (--positive-class) {positive_class!r} is not among the labels found "
            f"({', '.join(found) or 'none'}); set the classes or fix the name"
        )
    return manifest, unlabelled, cls


def read_layout_labels(
    labels: Labels, layout: str | None, findings: Sequence[str] | None, uncertain: str, key: str | None
) -> MultilabelLabels | None:
    """The labels read in ``layout`` (before the scan), or None without a layout."""
    if layout is None:
        return None
    if labels is None or (isinstance(labels, str) and labels == "folders"):
        raise ConfigError(["label_layout (--label-layout) needs a labels CSV (--labels)"])
    return read_multilabel(labels, layout, findings=findings, uncertain=uncertain, key=key)


def label_multilabel(
    manifest: pd.DataFrame, scan: ScanResult, labels: Labels, ml_labels: MultilabelLabels
) -> tuple[pd.DataFrame, LabelJoinReport, str]:
    """Findings joined onto the scanned images (``finding_<name>`` columns, readable ``label``)."""
    source = os.path.abspath(labels) if isinstance(labels, (str, os.PathLike)) else "table"
    base = os.path.dirname(source) if source != "table" else None
    manifest, report = join_multilabel(manifest, ml_labels, base_dir=base)
    explain_unmatched(report, scan.rejected, base)
    return manifest, report, source


def findings_found(
    manifest: pd.DataFrame, ml_labels: MultilabelLabels, drop_unlabelled: bool
) -> tuple[pd.DataFrame, pd.DataFrame | None, list[str]]:
    """(manifest, images without labels left out or None, the findings)."""
    unlabelled = None
    if drop_unlabelled:
        keep = manifest["label"] != ""
        unlabelled = manifest.loc[~keep, ["path", "label"]]
        manifest = manifest[keep].reset_index(drop=True)
    return manifest, unlabelled, list(ml_labels.findings)

"""Attach class labels to a manifest: from a labels CSV (joined on one key) or from folder names."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import pandas as pd

from cxr_cad.errors import ManifestError
from cxr_cad.manifest.schema import _text

log = logging.getLogger(__name__)

#: Key columns a labels CSV may be joined on, most specific first (auto-detection order).
#: ``accession_number`` is (0008,0050) of DICOM files (one per study at most sites); PNG/JPEG
#: images have none.
LABEL_KEYS: tuple[str, ...] = ("sop_instance_uid", "study_instance_uid", "accession_number", "patient_id", "path")


@dataclass
class LabelJoinReport:
    """What a label join did.

    Attributes:
        key: the key column used (one of :data:`LABEL_KEYS`).
        key_detected: True when the key was found automatically, False when given.
        label_rows: distinct (key, label) rows in the labels table.
        matched_label_rows: label rows that matched at least one image.
        unmatched: label rows that matched no image, with their CSV ``line`` and a ``why``.
        images_labelled: manifest rows that received a label.
        images_unlabelled: manifest rows left without a label.
    """

    key: str
    key_detected: bool
    label_rows: int
    matched_label_rows: int
    unmatched: pd.DataFrame = field(repr=False)
    images_labelled: int = 0
    images_unlabelled: int = 0

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "key_detected": self.key_detected,
            "label_rows": self.label_rows,
            "matched_label_rows": self.matched_label_rows,
            "unmatched_label_rows": len(self.unmatched),
            "images_labelled": self.images_labelled,
            "images_unlabelled": self.images_unlabelled,
        }


def detect_label_key(columns: Iterable[str], key: str | None = None) -> tuple[str, bool]:
    """Choose the join key: ``key`` when given, else the first of :data:`LABEL_KEYS` present.

    Returns ``(key, detected)``. Raises ManifestError when no usable key column exists."""
    cols = list(columns)
    if key is not None:
        if key not in LABEL_KEYS:
            raise ManifestError([f"label key {key!r} is not one of {', '.join(LABEL_KEYS)}"])
        if key not in cols:
            raise ManifestError([f"labels file has no {key!r} column (columns found: {', '.join(cols)})"])
        return key, False
    for k in LABEL_KEYS:
        if k in cols:
            return k, True
    raise ManifestError(
        [
            f"labels file has none of the key columns {', '.join(LABEL_KEYS)} "
            f"(columns found: {', '.join(cols) or 'none'}); rename one or use --label-key"
        ]
    )


def read_labels(
    labels: pd.DataFrame | str | os.PathLike,
    *,
    key: str | None = None,
    label_column: str = "label",
    classes: Iterable[str] | None = None,
) -> tuple[pd.DataFrame, str, bool]:
    """Read and check a labels table.

    Returns ``(table, key, detected)``: ``table`` has columns ``key``, ``label`` and ``line``
    (CSV line number of the first occurrence), one row per distinct key.

    Raises:
        ManifestError: file missing/unreadable, no key or label column, empty keys or labels,
            one key with two different labels, labels outside ``classes``. Lists every problem;
            names CSV lines, never identifiers.
    """
    source = None
    if isinstance(labels, pd.DataFrame):
        raw = labels.copy()
    else:
        from cxr_cad.manifest.schema import read_csv_regular

        source = os.path.abspath(os.fspath(labels))
        raw = read_csv_regular(source, "give the labels CSV")
    raw.columns = [str(c).strip() for c in raw.columns]
    problems: list[str] = []
    try:
        key, detected = detect_label_key(raw.columns, key)
    except ManifestError as exc:
        problems += exc.problems
        key, detected = "", False
    if label_column not in raw.columns:
        problems.append(f"labels file has no {label_column!r} column (columns found: {', '.join(raw.columns)})")
    if problems:
        raise ManifestError(problems, source=source)
    table = pd.DataFrame({"key": _text(raw[key]), "label": _text(raw[label_column]), "line": range(2, len(raw) + 2)})
    for col, what in (("key", key), ("label", label_column)):
        empty = table.loc[table[col] == "", "line"].tolist()
        if empty:
            problems.append(f"empty {what} on CSV line(s) {_lines(empty)}")
    table = table[(table["key"] != "") & (table["label"] != "")]
    n_labels = table.groupby("key", sort=False)["label"].nunique()
    for k in n_labels[n_labels > 1].index[:10]:
        rows = table[table["key"] == k]
        problems.append(
            f"CSV lines {_lines(rows['line'].tolist())} give one {key} different labels "
            f"({', '.join(sorted(set(rows['label'])))})"
        )
    if (n_labels > 1).sum() > 10:
        problems.append(f"... {(n_labels > 1).sum() - 10} more keys with conflicting labels")
    if classes is not None:
        allowed = set(classes)
        unknown = sorted(set(table["label"]) - allowed)
        if unknown:
            problems.append(
                f"label value(s) {', '.join(map(repr, unknown))} are not in --classes {','.join(sorted(allowed))}"
            )
    if problems:
        raise ManifestError(problems, source=source)
    table = table.drop_duplicates("key", keep="first").reset_index(drop=True)
    table.attrs["source"] = source
    return table, key, detected


def _lines(lines: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(x) for x in lines[:limit])
    return shown + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


def _parts(p: str) -> tuple[str, ...]:
    return tuple(x for x in PurePath(p.replace("\\", "/")).parts if x not in ("", "."))


def _match_paths(
    manifest_paths: list[str], label_paths: list[str], base_dir: str
) -> tuple[dict[int, int], dict[int, str]]:
    """Map label rows to manifest rows by path: exact (absolute, or relative to ``base_dir``),
    else a unique trailing-components match (``NORMAL/a.png`` matches ``/data/x/NORMAL/a.png``).

    Returns ``({manifest_row: label_row}, {label_row: why_unmatched})``."""
    by_abs: dict[str, list[int]] = {}
    by_suffix: dict[tuple[str, ...], list[int]] = {}
    for i, p in enumerate(manifest_paths):
        by_abs.setdefault(os.path.normpath(os.path.abspath(p)), []).append(i)
        parts = _parts(os.path.abspath(p))
        for n in range(1, len(parts) + 1):
            by_suffix.setdefault(parts[-n:], []).append(i)
    matches: dict[int, int] = {}
    why: dict[int, str] = {}
    for j, lp in enumerate(label_paths):
        hits = by_abs.get(os.path.normpath(os.path.join(base_dir, lp)))
        if not hits:
            hits = by_suffix.get(_parts(lp), [])
            if len(hits) > 1:
                why[j] = f"path matches {len(hits)} images; give a longer path"
                continue
        if not hits:
            why[j] = "no image with this path"
            continue
        for i in hits:
            matches[i] = j
    return matches, why


def _matched_labels(
    manifest: pd.DataFrame, table: pd.DataFrame, key: str, base_dir: str | os.PathLike[str] | None
) -> tuple[list[str], set[int], dict[int, str]]:
    """The manifest's labels after the join, the label rows that matched, and why others did not
    (``path`` keys only)."""
    previous = (
        _text(manifest["label"])
        if "label" in manifest.columns
        else pd.Series([""] * len(manifest), index=manifest.index)
    )
    new = previous.tolist()
    matched_label_rows: set[int] = set()
    why: dict[int, str] = {}
    if key == "path":
        if base_dir is None:
            base_dir = os.path.dirname(table.attrs["source"]) if table.attrs.get("source") else os.getcwd()
        matches, why = _match_paths(_text(manifest["path"]).tolist(), table["key"].tolist(), os.fspath(base_dir))
        for i, j in matches.items():
            new[i] = str(table["label"].iat[j])
            matched_label_rows.add(j)
    else:
        lookup = dict(zip(table["key"], range(len(table))))
        for i, k in enumerate(_text(manifest[key])):
            hit = lookup.get(k) if k else None
            if hit is not None:
                new[i] = str(table["label"].iat[hit])
                matched_label_rows.add(hit)
    return new, matched_label_rows, why


_KEY_TAGS = {
    "sop_instance_uid": "(0008,0018) SOP Instance UID",
    "study_instance_uid": "(0020,000D) Study Instance UID",
    "accession_number": "(0008,0050) Accession Number",
    "patient_id": "(0010,0020) Patient ID",
}


def _empty_key_problem(key: str, n: int) -> str:
    """Why no label can match: the manifest's key column is empty in every row."""
    tag = _KEY_TAGS.get(key, key)
    return (
        f"none of the {n} images has a {key} ({tag}) to join the labels on: PNG/JPEG images have none, "
        f"the DICOM headers leave it empty, or the manifest was written before ingest read it (run "
        f"`cxr-cad ingest` again); key the labels CSV by another column: {', '.join(k for k in LABEL_KEYS if k != key)}"
    )


def join_labels(
    manifest: pd.DataFrame,
    labels: pd.DataFrame | str | os.PathLike,
    *,
    key: str | None = None,
    label_column: str = "label",
    classes: Iterable[str] | None = None,
    base_dir: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, LabelJoinReport]:
    """Give manifest rows the label of the labels-table row with the same key.

    Args:
        manifest: manifest rows (paths absolute, or relative to the current folder).
        labels: a labels DataFrame or CSV path with a key column (:data:`LABEL_KEYS`, detected
            in that order unless ``key`` is given) and ``label_column``.
        classes: allowed label values; others are an error.
        base_dir: folder that relative paths in a ``path``-keyed labels table are relative to
            (default: the labels file's folder, or the current folder for a DataFrame).
            Paths that match no file there are matched on their trailing components when
            exactly one image ends with them.

    Returns:
        ``(labelled, report)``: a copy of ``manifest`` whose ``label`` is set where a key
        matched (rows without a match keep their previous label or ``""``), and a
        :class:`LabelJoinReport` listing label rows that matched nothing.

    Raises:
        ManifestError: see :func:`read_labels`; also when the manifest lacks the key column.
    """
    table, key, detected = read_labels(labels, key=key, label_column=label_column, classes=classes)
    if key not in manifest.columns:
        raise ManifestError([f"the manifest has no {key!r} column to join labels on"])
    if key != "path" and len(manifest) and not (_text(manifest[key]) != "").any():
        raise ManifestError([_empty_key_problem(key, len(manifest))])
    out = manifest.copy()
    new, matched_label_rows, why = _matched_labels(out, table, key, base_dir)
    out["label"] = new
    unmatched_idx = [j for j in range(len(table)) if j not in matched_label_rows]
    unmatched = table.iloc[unmatched_idx].rename(columns={"key": key})[["line", key, "label"]].copy()
    unmatched["why"] = [why.get(j, f"no image with this {key}") for j in unmatched_idx]
    unmatched = unmatched.reset_index(drop=True)
    n_labelled = int((_text(out["label"]) != "").sum())
    report = LabelJoinReport(
        key=key,
        key_detected=detected,
        label_rows=len(table),
        matched_label_rows=len(matched_label_rows),
        unmatched=unmatched,
        images_labelled=n_labelled,
        images_unlabelled=len(out) - n_labelled,
    )
    log.info(
        "labels joined on %s: %d of %d label rows matched; %d images labelled, %d without a label",
        key,
        report.matched_label_rows,
        report.label_rows,
        n_labelled,
        report.images_unlabelled,
    )
    return out, report


def labels_from_folders(manifest: pd.DataFrame, *, classes: Iterable[str] | None = None) -> pd.DataFrame:
    """Label each row by its folder (the public Kermany layout: ``.../NORMAL/x.jpeg``).

    Without ``classes`` the label is the name of the folder directly containing the file.
    With ``classes`` it is the nearest ancestor folder whose name is one of them (so
    ``PNEUMONIA/bacteria/x.jpeg`` works); a file with no such ancestor gets its parent folder's
    name, which validation then reports as a label outside the classes.
    Returns a copy with ``label`` set."""
    allowed = set(classes) if classes is not None else None
    labels = []
    for p in _text(manifest["path"]):
        path = Path(p)
        parents = [x for x in path.parent.parts if x not in ("", path.anchor)]
        label = parents[-1] if parents else ""
        if allowed is not None:
            for name in reversed(parents):
                if name in allowed:
                    label = name
                    break
        labels.append(label)
    out = manifest.copy()
    out["label"] = labels
    return out


def explain_unmatched(
    report: LabelJoinReport, rejected: pd.DataFrame, base_dir: str | os.PathLike | None = None
) -> LabelJoinReport:
    """For a ``path``-keyed join, mark unmatched label rows whose file was rejected by the scan
    (``why`` = ``"file rejected: <REASON>"``), so they are not mistaken for typos. Other keys
    are left as they are (rejected files have no header values). Returns ``report``, updated."""
    if report.key != "path" or report.unmatched.empty or rejected.empty:
        return report
    base = os.fspath(base_dir) if base_dir is not None else os.getcwd()
    rej_paths = _text(rejected["path"]).tolist()
    matches, _ = _match_paths(rej_paths, _text(report.unmatched["path"]).tolist(), base)
    why = report.unmatched["why"].tolist()
    for i, j in matches.items():
        why[j] = f"file rejected: {rejected['reason'].iloc[i]}"
    report.unmatched["why"] = why
    return report

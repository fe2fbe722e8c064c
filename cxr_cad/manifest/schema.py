"""Manifest schema: columns, reading, validation, atomic writing, path resolution, hashing.

A manifest is a CSV with one row per accepted image (schema and column meanings in
``data_manifests/README.md``). Paths are stored relative to the manifest's own folder
where possible, so a manifest travels with its data; :func:`resolve_paths` turns them
back into absolute paths. No torch here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_cad.core import atomic
from cxr_cad.core.atomic import PathLike
from cxr_cad.core.columns import FLOAT_COLUMNS, INT_COLUMNS, MANIFEST_COLUMNS, REQUIRED_COLUMNS
from cxr_cad.errors import ManifestError
from cxr_cad.io.age import age_in_years  # noqa: F401 - re-exported (was defined here)

log = logging.getLogger(__name__)


def _rows_text(positions: Iterable[int], limit: int = 8) -> str:
    """``"data rows 3, 7 and 12 more"`` from 0-based positions (shown 1-based, header excluded)."""
    pos = [int(p) + 1 for p in positions]
    shown = ", ".join(str(p) for p in pos[:limit])
    more = f" and {len(pos) - limit} more" if len(pos) > limit else ""
    word = "data row" if len(pos) == 1 else "data rows"
    return f"{word} {shown}{more}"


def _text(series: pd.Series) -> pd.Series:
    """Column as stripped strings with missing values as ``""``."""
    return series.astype(object).where(series.notna(), "").astype(str).str.strip()


def _coerce_types(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Text columns as str (``""`` when missing), ints as ``Int64``, floats as float64.

    Returns the converted copy and the problems found (non-numeric values)."""
    problems: list[str] = []
    out = df.copy()
    for col in out.columns:
        if col in INT_COLUMNS or col in FLOAT_COLUMNS:
            raw = _text(out[col])
            num = pd.to_numeric(raw.replace("", np.nan), errors="coerce")
            bad = np.flatnonzero(num.isna().to_numpy() & (raw != "").to_numpy())
            if col in INT_COLUMNS:
                frac = np.flatnonzero(num.notna().to_numpy() & (num.fillna(0) % 1 != 0).to_numpy())
                bad = np.union1d(bad, frac)
            if len(bad):
                problems.append(
                    f"column {col!r} must hold {'whole numbers' if col in INT_COLUMNS else 'numbers'}; "
                    f"{_rows_text(bad)} do not"
                )
                num.iloc[bad] = np.nan
            out[col] = num.round().astype("Int64") if col in INT_COLUMNS else num.astype("float64")
        else:
            out[col] = _text(out[col])
    return out, problems


def normalise_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy with every :data:`MANIFEST_COLUMNS` column present (missing ones empty),
    the schema's dtypes, and the columns in schema order (extra columns after).

    Raises:
        ManifestError: a numeric column holds text.
    """
    out, problems = _coerce_types(df)
    if problems:
        raise ManifestError(problems)
    for col in MANIFEST_COLUMNS:
        if col not in out.columns:
            if col in INT_COLUMNS:
                out[col] = pd.array([pd.NA] * len(out), dtype="Int64")
            elif col in FLOAT_COLUMNS:
                out[col] = np.full(len(out), np.nan)
            else:
                out[col] = ""
    extra = [c for c in out.columns if c not in MANIFEST_COLUMNS]
    return out[MANIFEST_COLUMNS + extra]


def resolve_paths(df: pd.DataFrame, base_dir: str | os.PathLike) -> pd.DataFrame:
    """Return a copy whose ``path`` column holds absolute, normalised paths.

    Relative paths are taken relative to ``base_dir`` (for a manifest file: its folder);
    absolute paths are kept. Symlinks are not resolved. Idempotent."""
    base = os.path.abspath(os.fspath(base_dir))
    out = df.copy()
    out["path"] = [os.path.normpath(os.path.join(base, p)) if p else p for p in _text(df["path"])]
    out.attrs["base_dir"] = base
    return out


def relative_paths(paths: Iterable[str], base_dir: str | os.PathLike) -> list[str]:
    """Paths relative to ``base_dir`` (POSIX separators, ``..`` where needed) when the file and
    ``base_dir`` share a folder below the file-system root; absolute otherwise (nothing to travel
    together, or another drive on Windows). Input paths are absolute or relative to the cwd."""
    base = os.path.abspath(os.fspath(base_dir))
    out: list[str] = []
    for p in paths:
        if not p:
            out.append(p)
            continue
        absolute = os.path.abspath(p)
        try:
            common = os.path.commonpath([absolute, base])
            if os.path.dirname(common) == common:  # only the root (or drive) in common
                out.append(absolute)
            else:
                out.append(Path(os.path.relpath(absolute, base)).as_posix())
        except ValueError:
            out.append(absolute)
    return out


def validate_manifest(
    df: pd.DataFrame,
    *,
    require_labels: bool = False,
    classes: Iterable[str] | None = None,
    base_dir: str | os.PathLike | None = None,
) -> list[str]:
    """Every problem with a manifest table, as sentences (empty list = valid).

    Checks: required columns (plus ``label`` when ``require_labels``), at least one row,
    empty or duplicate ``path``, empty or duplicate ``sop_instance_uid``, empty ``patient_id``,
    empty labels (when ``require_labels``), labels outside ``classes`` (when given), numeric
    columns holding text, and, when ``base_dir`` is given, files that do not exist
    (relative paths are taken relative to ``base_dir``). Row numbers are 1-based data rows
    (CSV line = row + 1). Never prints patient identifiers.
    """
    problems: list[str] = []
    needed = list(REQUIRED_COLUMNS) + (["label"] if require_labels else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        problems.append(
            f"missing column(s) {', '.join(missing)} (columns found: {', '.join(map(str, df.columns)) or 'none'}); "
            "build manifests with `cxr-cad ingest`"
        )
    if len(df) == 0:
        problems.append("the manifest has no rows")
    _, type_problems = _coerce_types(df[[c for c in df.columns if c in INT_COLUMNS + FLOAT_COLUMNS]])
    problems += type_problems
    if "path" in df.columns:
        problems += _path_problems(_text(df["path"]), base_dir)
    if "sop_instance_uid" in df.columns:
        problems += _uid_problems(_text(df["sop_instance_uid"]))
    if "patient_id" in df.columns:
        empty = np.flatnonzero((_text(df["patient_id"]) == "").to_numpy())
        if len(empty):
            problems.append(
                f"empty patient_id in {_rows_text(empty)}; folds are grouped by patient, so every image needs one"
            )
    if "label" in df.columns:
        problems += _label_problems(_text(df["label"]), require_labels, classes)
    return problems


def _path_problems(paths: pd.Series, base_dir: str | os.PathLike[str] | None) -> list[str]:
    """Empty and repeated paths; with ``base_dir``, files that do not exist."""
    problems: list[str] = []
    empty = np.flatnonzero((paths == "").to_numpy())
    if len(empty):
        problems.append(f"empty path in {_rows_text(empty)}")
    dup = np.flatnonzero((paths.duplicated(keep="first") & (paths != "")).to_numpy())
    if len(dup):
        problems.append(f"{len(dup)} path(s) listed twice: {_rows_text(dup)} repeat an earlier row")
    if base_dir is not None:
        base = os.path.abspath(os.fspath(base_dir))
        gone = [i for i, p in enumerate(paths) if p and not os.path.isfile(os.path.join(base, p))]
        if gone:
            example = os.path.join(base, paths.iloc[gone[0]])
            problems.append(
                f"{len(gone)} file(s) not found ({_rows_text(gone)}; first: {example}); "
                "paths are relative to the manifest's folder"
            )
    return problems


def _uid_problems(uids: pd.Series) -> list[str]:
    """Empty and repeated SOP Instance UIDs."""
    problems: list[str] = []
    empty = np.flatnonzero((uids == "").to_numpy())
    if len(empty):
        problems.append(f"empty sop_instance_uid in {_rows_text(empty)}")
    dup = np.flatnonzero((uids.duplicated(keep="first") & (uids != "")).to_numpy())
    if len(dup):
        problems.append(
            f"{len(dup)} duplicate sop_instance_uid(s): {_rows_text(dup)} repeat an earlier row's "
            "image; keep one row per image"
        )
    return problems


def _label_problems(labels: pd.Series, require_labels: bool, classes: Iterable[str] | None) -> list[str]:
    """Empty labels (when required) and labels outside ``classes`` (when given)."""
    problems: list[str] = []
    if require_labels:
        empty = np.flatnonzero((labels == "").to_numpy())
        if len(empty):
            problems.append(f"no label in {_rows_text(empty)}")
    if classes is not None:
        allowed = set(classes)
        unknown = sorted(set(labels[labels != ""]) - allowed)
        if unknown:
            counts = labels.value_counts()
            named = ", ".join(f"{u!r} ({counts[u]} rows)" for u in unknown)
            problems.append(f"label value(s) not in classes {sorted(allowed)}: {named}")
    return problems


def read_manifest(
    path: str | os.PathLike,
    *,
    require_labels: bool = False,
    classes: Iterable[str] | None = None,
    resolve: bool = True,
    check_files: bool = True,
) -> pd.DataFrame:
    """Read and validate a manifest CSV.

    Args:
        path: the manifest file.
        require_labels: every row must have a non-empty ``label``.
        classes: allowed label values (others are a problem).
        resolve: return absolute paths (relative ones are relative to the manifest's folder).
        check_files: every listed file must exist.

    Returns:
        A DataFrame with every :data:`MANIFEST_COLUMNS` column (missing optional ones empty),
        text columns as ``str`` (``""`` when unknown), ``rows``/``columns``/``bits_stored`` as
        ``Int64``, ``patient_age_years`` as float. ``df.attrs["manifest_path"]`` and
        ``df.attrs["base_dir"]`` record where it came from.

    Raises:
        ManifestError: listing every problem found (unreadable file, missing columns, missing
            files, duplicate SOP Instance UIDs, labels not in ``classes``, empty patient ids ...).
    """
    src = os.path.abspath(os.fspath(path))
    raw = read_csv_regular(src, "build one with `cxr-cad ingest DIR --out OUT`")
    base = os.path.dirname(src)
    problems = validate_manifest(
        raw, require_labels=require_labels, classes=classes, base_dir=base if check_files else None
    )
    if problems:
        raise ManifestError(problems, source=src)
    df = normalise_manifest(raw)
    if resolve:
        df = resolve_paths(df, base)
    df.attrs["manifest_path"] = src
    df.attrs["base_dir"] = base
    log.debug("read manifest %s: %d rows", src, len(df))
    return df


def read_csv_regular(src: str, hint: str) -> pd.DataFrame:
    """A CSV (all text, UTF-8 with or without BOM) read from a regular file only (a FIFO would block).

    Raises:
        ManifestError: not found (with ``hint``), not a regular file, or not readable as CSV.
    """
    from cxr_cad.core.files import NotRegularFileError, open_regular

    try:
        with open_regular(src) as fh:
            return pd.read_csv(fh, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError([f"file not found; {hint}"], source=src) from None
    except NotRegularFileError as exc:
        raise ManifestError([exc.strerror or "not a regular file"], source=src) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise ManifestError([f"cannot be read as CSV: {exc}"], source=src) from exc


#: What to do when a manifest or table cannot be written (:class:`~cxr_cad.errors.OutputError`).
WRITE_HINT = "free space or choose a writable output folder (nothing was replaced)"


def _make_parents(paths: Iterable[PathLike]) -> None:
    """Create the folders the files go to; a failure shows as the OutputError of the write."""
    for parent in {Path(p).parent for p in paths}:
        with contextlib.suppress(OSError):
            parent.mkdir(parents=True, exist_ok=True)


def table_text(df: pd.DataFrame) -> str:
    """A table as CSV text (missing values as empty cells), as :func:`write_table` writes it."""
    return df.to_csv(index=False, lineterminator="\n")


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write any table as CSV atomically (missing values as empty cells); creates the folder."""
    _make_parents([path])
    atomic.atomic_write_text(path, table_text(df), hint=WRITE_HINT)


def manifest_text(df: pd.DataFrame, path: str | os.PathLike, *, relative: bool = True) -> str:
    """The CSV text :func:`write_manifest` writes to ``path`` (see there); raises ManifestError."""
    dest = os.path.abspath(os.fspath(path))
    out = normalise_manifest(df)
    out = resolve_paths(out, df.attrs.get("base_dir", os.getcwd()))
    if relative:
        out["path"] = relative_paths(out["path"], os.path.dirname(dest))
    return table_text(out)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike, *, relative: bool = True) -> None:
    """Write a manifest CSV atomically (tmp file + ``os.replace``).

    Columns are written in :data:`MANIFEST_COLUMNS` order (all of them; missing ones empty),
    extra columns after. Relative paths in ``df`` are taken relative to ``df.attrs["base_dir"]``
    when set, else the current folder; with ``relative=True`` they are written relative to the
    manifest's folder (see :func:`relative_paths`), else absolute.

    Raises:
        ManifestError: a numeric column holds text.
        OutputError: the file cannot be written.
    """
    _make_parents([path])
    atomic.atomic_write_text(path, manifest_text(df, path, relative=relative), hint=WRITE_HINT)


def manifest_hash(df: pd.DataFrame) -> str:
    """SHA-256 (hex) over the sorted ``(sop_instance_uid, sha256, label)`` triples.

    Independent of row order, paths and other columns: the same images with the same labels
    give the same hash wherever they live. Missing columns count as empty."""
    cols = []
    for c in ("sop_instance_uid", "sha256", "label"):
        cols.append(_text(df[c]).tolist() if c in df.columns else [""] * len(df))
    lines = sorted("\x1f".join(t) for t in zip(*cols))
    h = hashlib.sha256(b"cxr_cad-manifest-v1\n")
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()

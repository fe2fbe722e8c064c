"""Multi-label findings in a manifest: reading the three label layouts, joining them onto the
images, and reading them back as a 0/1/masked matrix (no torch).

A multi-label manifest has one column per finding, ``finding_<name>``, holding ``1`` (present),
``0`` (absent) or empty (unknown: masked out of the loss and the metrics), and a readable
``label`` column: the present findings joined by ``|``, or ``No Finding``. Raw ``-1``
(uncertain) values may also be kept in a finding column; :func:`finding_matrix` applies the
uncertainty policy to them (``ignore``: masked, ``zeros``: 0, ``ones``: 1).

Layouts (``--label-layout``):

* ``nih`` (NIH ChestX-ray14 ``Data_Entry.csv``): ``Image Index`` (the file name), ``Finding
  Labels`` (findings joined by ``|``, or ``No Finding``), ``Patient ID``. Every finding is 0 or 1.
* ``columns``: a key column (one of :data:`~cxr_cad.manifest.labels.LABEL_KEYS`, or ``Image
  Index`` / ``Path``) and one column per finding holding 1/0 (blank = unknown).
* ``chexpert`` (CheXpert / MIMIC-CXR): a key column (``Path`` or a :data:`LABEL_KEYS` one) and
  one column per observation holding ``1``, ``0``, ``-1`` (uncertain) or blank. Uncertain
  values follow ``uncertain`` (``ignore`` | ``zeros`` | ``ones``); blank (not mentioned in the
  report) is unknown and masked, as the CheXpert paper leaves it unlabelled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxr_cad.errors import ManifestError
from cxr_cad.manifest.labels import LABEL_KEYS, LabelJoinReport, join_labels
from cxr_cad.manifest.schema import _text

LAYOUTS = ("nih", "columns", "chexpert")
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
FINDING_PREFIX = "finding_"
NO_FINDING = "No Finding"
#: Key column names of the public layouts, mapped to the manifest column they join on.
LAYOUT_KEYS = {"Image Index": "path", "Path": "path", "Patient ID": None}


def finding_column(name: str) -> str:
    """The manifest column of finding ``name`` (``finding_<name>``)."""
    return FINDING_PREFIX + name


def findings_in(df: pd.DataFrame) -> list[str]:
    """The findings a manifest has columns for, in column order."""
    return [c[len(FINDING_PREFIX) :] for c in df.columns if str(c).startswith(FINDING_PREFIX)]


@dataclass
class MultilabelLabels:
    """A labels file read in one layout: ``table`` has ``key``-named column, ``label`` (the
    encoded per-finding values + patient id, see :func:`_encode`) and ``line``."""

    table: pd.DataFrame
    key: str
    findings: list[str]
    layout: str
    uncertain: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # finding -> {positive, negative, uncertain, blank}
    has_patient_id: bool = False

    def record(self) -> dict:
        """What ``ingest.json`` records under ``labels.multilabel``."""
        return {
            "task": "multilabel",
            "layout": self.layout,
            "uncertain": self.uncertain,
            "blank": "masked (unknown)",
            "findings": list(self.findings),
            "counts": self.counts,
            "patient_id_from_labels": self.has_patient_id,
        }


def _encode(values: Sequence[str], patient: str) -> str:
    return json.dumps([*values, patient], separators=(",", ":"))


def _read(labels: pd.DataFrame | str | os.PathLike) -> tuple[pd.DataFrame, str | None]:
    if isinstance(labels, pd.DataFrame):
        raw, source = labels.copy(), None
    else:
        from cxr_cad.manifest.schema import read_csv_regular

        source = os.path.abspath(os.fspath(labels))
        raw = read_csv_regular(source, "give the labels CSV")
    raw.columns = [str(c).strip() for c in raw.columns]
    return raw, source


def _key_column(cols: list[str], key: str | None) -> tuple[str, str]:
    """(column in the file, manifest column it joins on)."""
    if key is not None:
        if key not in cols:
            raise ManifestError([f"labels file has no {key!r} column (columns found: {', '.join(cols)})"])
        return key, LAYOUT_KEYS.get(key) or key
    for c in ("Image Index", "Path", *LABEL_KEYS):
        if c in cols:
            return c, LAYOUT_KEYS.get(c) or c
    raise ManifestError(
        [
            f"labels file has no key column (Image Index, Path or one of {', '.join(LABEL_KEYS)}); found {', '.join(cols)}"
        ]
    )


def _nih_values(raw: pd.DataFrame, findings: list[str] | None) -> tuple[dict[str, list[str]], list[str], list[str]]:
    problems: list[str] = []
    if "Finding Labels" not in raw.columns:
        raise ManifestError(["NIH layout needs a 'Finding Labels' column (findings joined by '|', or 'No Finding')"])
    rows = [[x.strip() for x in s.split("|") if x.strip()] for s in _text(raw["Finding Labels"])]
    for i, r in enumerate(rows):
        if not r:
            problems.append(f"empty Finding Labels on CSV line {i + 2}")
        elif NO_FINDING in r and len(r) > 1:
            problems.append(f"CSV line {i + 2} gives 'No Finding' together with findings")
    found = sorted({x for r in rows for x in r} - {NO_FINDING})
    names = list(findings) if findings else found
    values = {f: ["1" if f in r else "0" for r in rows] for f in names}
    return values, names, problems


def _coded_values(raw: pd.DataFrame, findings: list[str] | None, key_col: str, layout: str) -> tuple[dict, list, list]:
    problems: list[str] = []
    allowed = {"1", "0", ""} | ({"-1"} if layout == "chexpert" else set())
    if findings:
        missing = [f for f in findings if f not in raw.columns]
        if missing:
            problems.append(f"labels file has no column for finding(s) {', '.join(missing)}")
        names = [f for f in findings if f in raw.columns]
    else:
        names = [
            c for c in raw.columns if c != key_col and set(_norm(raw[c])) <= allowed and _norm(raw[c]).ne("").any()
        ]
    values: dict[str, list[str]] = {}
    for f in names:
        col = _norm(raw[f])
        bad = np.flatnonzero(~col.isin(allowed).to_numpy())
        if len(bad):
            problems.append(
                f"finding {f!r}: values other than {'/'.join(sorted(allowed - {''}))}/blank on CSV line(s) "
                + ", ".join(str(i + 2) for i in bad[:8])
            )
        values[f] = col.tolist()
    return values, names, problems


def _norm(col: pd.Series) -> pd.Series:
    """1.0 -> "1", -1.0 -> "-1", blanks -> ""."""
    text = _text(col)
    num = pd.to_numeric(text.replace("", np.nan), errors="coerce")
    return text.where(num.isna(), num.map(lambda v: str(int(v)) if float(v).is_integer() else str(v)))


def read_multilabel(
    labels: pd.DataFrame | str | os.PathLike,
    layout: str,
    *,
    findings: Iterable[str] | None = None,
    uncertain: str = "ignore",
    key: str | None = None,
) -> MultilabelLabels:
    """Read a multi-label labels file in ``layout`` (module docstring).

    Args:
        findings: the findings to keep, in this order (default: every finding found, sorted
            for ``nih``, in column order otherwise). NIH findings not listed are dropped.
        uncertain: how ``-1`` becomes a training value (``ignore``: unknown, ``zeros``, ``ones``).
        key: the key column (default: ``Image Index``, ``Path``, then :data:`LABEL_KEYS`).

    Raises:
        ManifestError: unknown layout or policy, missing columns, values outside the layout,
            'No Finding' with findings; every problem listed, by CSV line.
    """
    if layout not in LAYOUTS:
        raise ManifestError([f"label layout {layout!r} is not one of {', '.join(LAYOUTS)}"])
    if uncertain not in UNCERTAIN_POLICIES:
        raise ManifestError([f"uncertain policy {uncertain!r} is not one of {', '.join(UNCERTAIN_POLICIES)}"])
    raw, source = _read(labels)
    key_col, join_key = _key_column(list(raw.columns), key)
    wanted = [str(f).strip() for f in findings] if findings else None
    if layout == "nih":
        values, names, problems = _nih_values(raw, wanted)
    else:
        values, names, problems = _coded_values(raw, wanted, key_col, layout)
    if not names:
        problems.append("no finding column found; name them with --findings")
    if problems:
        raise ManifestError(problems, source=source)
    counts: dict[str, dict[str, int]] = {}
    mapped = {"ignore": "", "zeros": "0", "ones": "1"}[uncertain]
    for f in names:
        v = values[f]
        counts[f] = {
            "positive": v.count("1"),
            "negative": v.count("0"),
            "uncertain": v.count("-1"),
            "blank": v.count(""),
        }
        values[f] = [mapped if x == "-1" else x for x in v]
    patient = _text(raw["Patient ID"]) if "Patient ID" in raw.columns else pd.Series([""] * len(raw))
    keys = _text(raw[key_col])
    codes = [_encode([values[f][i] for f in names], str(patient.iat[i])) for i in range(len(raw))]
    table = pd.DataFrame({join_key: keys, "label": codes})
    table.attrs["source"] = source
    return MultilabelLabels(table, join_key, names, layout, uncertain, counts, "Patient ID" in raw.columns)


def readable_label(values: Sequence[str], findings: Sequence[str]) -> str:
    """``Effusion|Mass`` from one row's values, or ``No Finding`` when none is present."""
    present = [f for f, v in zip(findings, values) if v == "1"]
    return "|".join(present) if present else NO_FINDING


def join_multilabel(
    manifest: pd.DataFrame, labels: MultilabelLabels, *, base_dir: str | os.PathLike | None = None
) -> tuple[pd.DataFrame, LabelJoinReport]:
    """Give manifest rows their findings (``finding_<name>`` columns and a readable ``label``)
    and, where the labels file has ``Patient ID``, that patient id.

    The join itself is :func:`~cxr_cad.manifest.labels.join_labels` (same key detection, path
    matching and unmatched report); rows without a match get empty findings and label."""
    out, report = join_labels(manifest, labels.table, key=labels.key, label_column="label", base_dir=base_dir)
    codes = out["label"].tolist()
    decoded = [json.loads(c) if c else None for c in codes]
    for j, f in enumerate(labels.findings):
        out[finding_column(f)] = [d[j] if d is not None else "" for d in decoded]
    out["label"] = [readable_label(d[:-1], labels.findings) if d is not None else "" for d in decoded]
    if labels.has_patient_id:
        pid = [d[-1] if d is not None and d[-1] else None for d in decoded]
        previous = _text(out["patient_id"]) if "patient_id" in out.columns else pd.Series([""] * len(out))
        out["patient_id"] = [p if p is not None else q for p, q in zip(pid, previous)]
        if "patient_id_source" in out.columns:
            out["patient_id_source"] = [
                "labels:Patient ID" if p is not None else q for p, q in zip(pid, _text(out["patient_id_source"]))
            ]
    if not report.unmatched.empty:
        report.unmatched["label"] = [
            readable_label(json.loads(c)[:-1], labels.findings) for c in report.unmatched["label"]
        ]
    return out, report


def finding_matrix(df: pd.DataFrame, findings: Sequence[str], *, uncertain: str = "ignore") -> np.ndarray:
    """``(n, K)`` int8 matrix of the findings: 1, 0, or -1 for unknown (masked).

    Raw ``-1`` values follow ``uncertain``. Raises ManifestError naming missing columns and
    values other than 1/0/-1/blank."""
    problems: list[str] = []
    missing = [f for f in findings if finding_column(f) not in df.columns]
    if missing:
        raise ManifestError(
            [f"the manifest has no {finding_column(f)!r} column (ingest with --label-layout)" for f in missing]
        )
    y = np.full((len(df), len(findings)), -1, dtype=np.int8)
    uncertain_value = {"ignore": -1, "zeros": 0, "ones": 1}[uncertain]
    for j, f in enumerate(findings):
        col = _norm(df[finding_column(f)])
        bad = sorted(set(col) - {"1", "0", "-1", ""})
        if bad:
            problems.append(f"{finding_column(f)} holds {', '.join(map(repr, bad[:5]))}; use 1, 0, -1 or blank")
            continue
        v = col.to_numpy()
        y[v == "1", j] = 1
        y[v == "0", j] = 0
        y[v == "-1", j] = uncertain_value
    if problems:
        raise ManifestError(problems)
    return y

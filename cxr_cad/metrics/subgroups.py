"""Metrics per subgroup (view position, sex, age band, manufacturer, ...) and age banding (of ages
in years: reading a DICOM Age String is the caller's job, :func:`cxr_cad.io.age.age_in_years`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad.errors import ConfigError
from cxr_cad.metrics._common import UndefinedMetricWarning, warn_undefined
from cxr_cad.metrics.delong import delong_auc_ci
from cxr_cad.metrics.operating import binary_metrics

#: default age-band edges in years: <1, 1-4, 5-11, 12-17, 18-39, 40-64, 65-79, 80+
AGE_EDGES: tuple[float, ...] = (1, 5, 12, 18, 40, 65, 80)
UNKNOWN_AGE = "unknown"
MISSING = "(missing)"
_PROPORTIONS = ("sensitivity", "specificity", "accuracy", "ppv", "npv")


def _band_label(lo: float | None, hi: float | None) -> str:
    """``<1y``, ``5-11y`` (whole-year edges), ``1.5-<3y`` (fractional edges), ``80+y``."""
    if lo is None:
        return f"<{hi:g}y"
    if hi is None:
        return f"{lo:g}+y"
    if float(hi).is_integer() and float(lo).is_integer():
        return f"{lo:g}-{hi - 1:g}y"
    return f"{lo:g}-<{hi:g}y"


def age_band(years: float | None, *, edges: Sequence[float] = AGE_EDGES) -> str:
    """Age band label for an age in years, e.g. ``45`` -> ``"40-64y"``.

    Bands are ``[edge_i, edge_{i+1})`` in years with open ends: with the default edges
    ``<1y, 1-4y, 5-11y, 12-17y, 18-39y, 40-64y, 65-79y, 80+y``. A missing age (None, NaN), or
    one that is negative or infinite, gives ``"unknown"``. Ages are numbers: the caller reads a
    DICOM Age String (``"045Y"``) with :func:`cxr_cad.io.age.age_in_years` first.

    Raises:
        ConfigError: ``edges`` is empty or not increasing.
    """
    edges = [float(e) for e in edges]
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(f"age band edges must be a non-empty increasing sequence; got {edges}")
    if years is None or isinstance(years, bool) or not math.isfinite(float(years)) or float(years) < 0:
        return UNKNOWN_AGE
    years = float(years)
    i = int(np.searchsorted(edges, years, side="right"))
    lo = None if i == 0 else edges[i - 1]
    hi = None if i == len(edges) else edges[i]
    return _band_label(lo, hi)


def _labels01(series: pd.Series, positive_class: str | None) -> np.ndarray:
    if positive_class is not None:
        return (series.astype(str) == str(positive_class)).to_numpy(dtype=np.int8)
    return series.to_numpy()


def _row(
    column: str, value: str, y: np.ndarray, s: np.ndarray, threshold: float, alpha: float, class_names: tuple[str, str]
) -> dict:
    n_pos = int(np.sum(y == 1))
    row: dict[str, Any] = {
        "column": column,
        "value": value,
        "n": int(y.size),
        "n_pos": n_pos,
        "n_neg": int(y.size) - n_pos,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        ci = delong_auc_ci(y, s, alpha=alpha)
        bm = binary_metrics(y, s, threshold=threshold, alpha=alpha, class_names=class_names)
    row.update(auc=ci.auc, auc_low=ci.low, auc_high=ci.high)
    for name in _PROPORTIONS:
        row[name], row[f"{name}_low"], row[f"{name}_high"] = bm[name]["value"], bm[name]["low"], bm[name]["high"]
    row.update(
        tp=bm["confusion"]["tp"],
        fp=bm["confusion"]["fp"],
        tn=bm["confusion"]["tn"],
        fn=bm["confusion"]["fn"],
        f1=bm["f1"],
        balanced_accuracy=bm["balanced_accuracy"],
    )
    row["estimable"] = bool(n_pos > 0 and n_pos < y.size)
    if y.size == 0:
        row["note"] = "not estimable: no cases"
    elif not row["estimable"]:
        row["note"] = f"not estimable: one class only ({class_names[1] if n_pos else class_names[0]})"
    else:
        undefined = sorted(
            {str(w.message).split(":")[0] for w in caught if issubclass(w.category, UndefinedMetricWarning)}
        )
        row["note"] = ("undefined: " + ", ".join(undefined)) if undefined else ""
    return row


def subgroup_table(
    df: pd.DataFrame,
    by: str | Sequence[str],
    *,
    label_col: str = "label",
    score_col: str = "probability",
    threshold: float,
    positive_class: str | None = None,
    alpha: float = 0.05,
    include_overall: bool = True,
    class_names: tuple[str, str] = ("negative", "positive"),
) -> pd.DataFrame:
    """The same metrics for every value of one or more columns.

    Args:
        df: one row per image, with ``label_col``, ``score_col`` and the ``by`` columns.
        by: column name(s), e.g. ``"view_position"``, ``["patient_sex", "age_band"]``.
        label_col: 0/1 labels, or class names when ``positive_class`` is given.
        score_col: positive-class probability; positive call when ``score >= threshold``.
        threshold: operating threshold applied in every subgroup.
        positive_class: name of the positive class in ``label_col`` (else 0/1 expected).
        include_overall: add a first row ``column="(all)"``.

    Returns:
        DataFrame, one row per (column, value): counts ``n, n_pos, n_neg``, ``auc`` with DeLong
        ``auc_low/auc_high``, ``sensitivity/specificity/accuracy/ppv/npv`` with Wilson
        ``*_low/*_high``, ``tp, fp, tn, fn, f1, balanced_accuracy``, ``estimable`` (both
        classes present) and ``note`` ("not estimable: one class only (...)" etc.). Missing
        values form the group ``"(missing)"``. Undefined statistics are NaN; one summary
        :class:`UndefinedMetricWarning` names the subgroups that are not estimable.

    Raises:
        ValueError: a named column is missing, or labels/scores are invalid.
    """
    cols = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [label_col, score_col, *cols] if c not in df.columns]
    if missing:
        raise ValueError(f"subgroup_table: columns {missing} not in the table (have {list(df.columns)})")
    y_all = _labels01(df[label_col], positive_class)
    s_all = df[score_col].to_numpy(dtype=np.float64)
    rows = []
    if include_overall:
        rows.append(_row("(all)", "(all)", y_all, s_all, threshold, alpha, class_names))
    for col in cols:
        values = df[col].astype(object).where(df[col].notna(), MISSING).astype(str)
        values = values.where(values.str.strip() != "", MISSING)
        for value in sorted(values.unique()):
            mask = (values == value).to_numpy()
            rows.append(_row(col, value, y_all[mask], s_all[mask], threshold, alpha, class_names))
    table = pd.DataFrame(rows)
    bad = table.loc[~table["estimable"], ["column", "value"]]
    if len(bad):
        warn_undefined(
            "subgroup_table: not estimable (one class or no cases) in "
            + ", ".join(f"{c}={v}" for c, v in bad.itertuples(index=False))
        )
    return table

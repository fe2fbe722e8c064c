"""The predictions table a report reads: split into evaluable rows and rows that cannot be
evaluated, exact duplicates counted once, and the cohort summary's counts.

Input is a predictions table with one row per image (see :func:`prepare_predictions`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad import metrics
from cxr_cad.config.sections import name_problem
from cxr_cad.core.columns import SUBGROUP_COLUMNS
from cxr_cad.errors import ManifestError
from cxr_cad.io.age import age_in_years

__all__ = ["prepare_predictions", "dedupe_rows", "recorded", "cohort_summary", "table_problems"]


def prepare_predictions(
    predictions: pd.DataFrame,
    *,
    positive_class: str | int,
    negative_class: str | int | None = None,
    label_col: str = "label",
    score_col: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a predictions table into evaluable rows and rows that cannot be evaluated.

    Args:
        predictions: one row per image with a label column (class names or 0/1) and a score
            column (positive-class probability in [0, 1]). Optional: ``sop_instance_uid``,
            ``fold``, ``patient_id``, ``view_position``, ``patient_sex``, ``patient_age_years``
            (or ``age_band``), ``manufacturer``, ``reason``.
        positive_class: the label value of the positive class (never inferred from order).
        negative_class: the other label value; inferred when exactly one other value occurs.
        label_col: name of the label column.
        score_col: name of the score column; default ``probability``, else ``prob_<positive>``.

    Returns:
        ``(evaluable, not_evaluated)``. ``evaluable`` gains ``y_true`` (0/1), ``score`` and
        ``age_band``; ``not_evaluated`` holds rows without a label or a score with a
        ``reason`` (``NO_LABEL`` / ``NOT_SCORED`` unless the table gave one).

    Raises:
        ManifestError: a missing column, a label outside the two classes, scores outside [0, 1].
    """
    df = predictions.reset_index(drop=True).copy()
    score_col = _score_column(df, positive_class, label_col, score_col)
    df["image_index"] = np.arange(len(df))
    labels = df[label_col]
    pos = str(positive_class)
    lab_text = labels.astype("string").str.strip()
    no_label = labels.isna() | (lab_text == "")
    score = pd.to_numeric(df[score_col], errors="coerce")
    no_score = score.isna() & ~no_label
    bad = df.loc[~no_label & ~no_score]
    neg = _negative_class(set(lab_text[bad.index]), pos, negative_class, label_col)
    s = score[bad.index]
    if len(s) and (s.min() < 0 or s.max() > 1):
        raise ManifestError(
            f"predictions table: {score_col!r} must be probabilities in [0, 1]; found [{s.min():.4g}, {s.max():.4g}]"
        )
    reason = df["reason"].astype("string") if "reason" in df.columns else pd.Series("", index=df.index)
    rest = df.loc[no_label | no_score].copy()
    rest["reason"] = np.where(
        reason[rest.index].fillna("") != "",
        reason[rest.index].fillna(""),
        np.where(no_label[rest.index], "NO_LABEL", "NOT_SCORED"),
    )
    ev = bad.copy()
    ev["label"] = lab_text[ev.index].astype(str)
    ev["y_true"] = (ev["label"] == pos).astype(int)
    ev["score"] = s.astype(float)
    if "age_band" not in ev.columns:
        age_col = next((c for c in ("patient_age_years", "patient_age") if c in ev.columns), None)
        if age_col is not None:
            ev["age_band"] = [metrics.age_band(age_in_years(a)) for a in ev[age_col]]  # AS strings or years
    ev.attrs.update(positive_class=pos, negative_class=neg, score_col=score_col)
    return ev, rest


def _score_column(df: pd.DataFrame, positive_class: str | int, label_col: str, score_col: str | None) -> str:
    """The score column's name; raises ManifestError naming every missing column."""
    if score_col is None:
        score_col = "probability" if "probability" in df.columns else f"prob_{positive_class}"
    problems = [f"column {c!r} is missing" for c in (label_col,) if c not in df.columns]
    if score_col not in df.columns:
        problems.append(
            f"no score column: expected 'probability' or 'prob_{positive_class}'"
            if score_col == f"prob_{positive_class}"
            else f"column {score_col!r} is missing"
        )
    if problems:
        raise ManifestError(
            f"predictions table: {'; '.join(problems)} (columns present: {', '.join(map(str, df.columns))})"
        )
    return score_col


def _negative_class(labels: set[str], pos: str, negative_class: str | int | None, label_col: str) -> str:
    """The negative class: given, or the one label besides ``pos``; refuses a third label."""
    others = sorted(labels - {pos})
    if pos not in labels and negative_class is None and len(others) != 1:
        raise ManifestError(
            f"predictions table: positive class {pos!r} does not occur in column "
            f"{label_col!r} (values: {', '.join(others[:10]) or 'none'})"
        )
    if negative_class is None:
        if len(others) > 1:
            raise ManifestError(
                f"predictions table: a binary report needs two classes but {label_col!r} "
                f"holds {pos!r} and {', '.join(map(repr, others))}"
            )
        negative_class = others[0] if others else "negative"
    neg = str(negative_class)
    extra = sorted(set(others) - {neg})
    if extra:
        raise ManifestError(
            f"predictions table: labels {', '.join(map(repr, extra))} are neither the "
            f"positive class {pos!r} nor the negative class {neg!r}"
        )
    return neg


def _rows(mask: pd.Series) -> str:
    """``N row(s) (CSV lines a, b, c...)``: line numbers count the header as line 1."""
    lines = [str(i + 2) for i in np.flatnonzero(mask.to_numpy())[:5]]
    n = int(mask.sum())
    return f"{n} row(s) (CSV line{'s' if n > 1 else ''} {', '.join(lines)}{', ...' if n > 5 else ''})"


def table_problems(
    predictions: pd.DataFrame,
    *,
    positive_class: str | int | None,
    label_col: str = "label",
    score_col: str | None = None,
) -> list[str]:
    """Every reason a predictions table cannot give a complete report (empty list: it can).

    A complete report needs: the label and score columns; a label on every row, each a valid
    class name (docs/report.md#names); a finite probability in [0, 1] on every row; at least two
    evaluable rows holding both classes; one model (``model_sha256``) for every row.
    ``cxr-cad report --allow-partial`` writes a report anyway (bad rows counted as not evaluated).
    """
    df = predictions.reset_index(drop=True)
    if score_col is None:
        score_col = "probability" if "probability" in df.columns else f"prob_{positive_class}"
    missing = [c for c in (label_col, score_col) if c not in df.columns]
    if missing:
        return [f"column {c!r} is missing (columns present: {', '.join(map(str, df.columns))})" for c in missing]
    problems = []
    labels = df[label_col].astype("string").fillna("").str.strip()
    no_label = labels == ""
    if no_label.any():
        problems.append(f"{_rows(no_label)} have an empty {label_col!r}")
    bad_names = sorted({str(v) for v in labels[~no_label].unique() if name_problem(v)})
    problems += [f"{label_col!r}: {name_problem(v)}" for v in bad_names[:5]]
    raw = df[score_col].astype("string").fillna("").str.strip()
    number = pd.to_numeric(raw.where(raw != ""), errors="coerce")
    empty = raw == ""
    text = ~empty & number.isna() & ~raw.str.lower().isin(["nan", "-nan", "+nan"])
    nonfinite = ~empty & ~text & ~np.isfinite(number.fillna(np.nan).to_numpy(dtype=float))
    outside = np.isfinite(number.to_numpy(dtype=float)) & ((number < 0) | (number > 1)).fillna(False).to_numpy()
    for mask, what in (
        (empty, f"an empty {score_col!r}"),
        (text, f"a {score_col!r} that is not a number (e.g. {raw[text].iloc[0][:20]!r})" if text.any() else ""),
        (nonfinite, f"a non-finite {score_col!r} (NaN or infinite)"),
        (pd.Series(outside, index=df.index), f"a {score_col!r} outside [0, 1]"),
    ):
        if mask.any():
            problems.append(f"{_rows(mask)} have {what}")
    good = ~no_label & pd.Series(np.isfinite(number.to_numpy(dtype=float)) & ~outside, index=df.index)
    classes = sorted(set(labels[good]))
    if int(good.sum()) < 2:
        problems.append(f"only {int(good.sum())} row(s) have both a label and a probability; a report needs at least 2")
    elif len(classes) < 2:
        problems.append(
            f"every evaluable row is labelled {classes[0]!r}: the AUC, sensitivity and specificity need "
            f"images of both classes (positive class {positive_class!r})"
        )
    if "model_sha256" in df.columns:
        models = sorted(set(df["model_sha256"].astype("string").fillna("").str.strip()) - {""})
        if len(models) > 1:
            problems.append(
                f"the rows come from {len(models)} different models (model_sha256 "
                + ", ".join(m[:12] for m in models[:4])
                + "); report each model's predictions separately"
            )
    return problems


_MISSING_VALUES = ("", "unknown", "(missing)", "nan", "<NA>", "None")


def recorded(series: pd.Series) -> bool:
    """True when at least one value of a metadata column is recorded (not empty/unknown)."""
    return bool((~series.astype("string").fillna("").str.strip().isin(_MISSING_VALUES)).any())


def _counts(series: pd.Series, unknown: str = "(missing)") -> dict[str, int]:
    vals = series.astype("string").fillna("").str.strip().replace("", unknown)
    return {str(k): int(v) for k, v in vals.value_counts().sort_index().items()}


def cohort_summary(
    ev: pd.DataFrame, not_evaluated: pd.DataFrame, rejected: pd.DataFrame | None, cohort_info: Mapping[str, Any] | None
) -> dict:
    """Counts of accepted / rejected images, patients, classes and subgroup categories."""
    rej = rejected if rejected is not None else pd.DataFrame(columns=["reason"])
    by_reason = _counts(
        pd.concat([rej.get("reason", pd.Series(dtype=str)), not_evaluated.get("reason", pd.Series(dtype=str))])
    )
    out = dict(cohort_info or {})
    out.update(
        {
            "n_images_evaluated": int(len(ev)),
            "n_rejected": int(len(rej) + len(not_evaluated)),
            "rejected_by_reason": by_reason,
            "n_patients": int(ev["patient_id"].nunique()) if "patient_id" in ev.columns else None,
            "class_counts": _counts(ev["label"]),
            "distributions": {c: _counts(ev[c]) for c in SUBGROUP_COLUMNS if c in ev.columns and recorded(ev[c])},
        }
    )
    return out


def dedupe_rows(df: pd.DataFrame, key: str = "sop_instance_uid") -> tuple[pd.DataFrame, str | None]:
    """Drop exact duplicate image rows (same ``key``, label and probability) with a warning text.

    Raises :class:`~cxr_cad.errors.ManifestError` when one image appears with different labels or
    probabilities: which row is right cannot be decided.
    """
    if key not in df.columns:
        return df, None
    ids = df[key].astype("string").fillna("").str.strip()
    dup = ids.duplicated(keep=False) & (ids != "")
    if not dup.any():
        return df, None
    cols = [c for c in ("label", "probability") if c in df.columns]
    groups = df[dup].assign(_k=ids[dup]).groupby("_k")
    conflicting = [k for k, g in groups if len(g[cols].astype(str).drop_duplicates()) > 1]
    if conflicting:
        raise ManifestError(
            f"predictions table: {len(conflicting)} image(s) appear more than once with different "
            f"labels or probabilities ({key} {str(conflicting[0])[:24]}...); remove the duplicated rows"
        )
    keep = ~(ids.duplicated(keep="first") & (ids != ""))
    n_drop = int((~keep).sum())
    return (
        df[keep.to_numpy()].reset_index(drop=True),
        f"{n_drop} duplicated prediction row(s) (same {key}, label and probability) were removed; "
        "each image is counted once",
    )

"""What a predictions table records, for :func:`cxr_cad.api._report.report_cohort` when the bundle
(or the option) does not say: the positive class (:func:`resolve_positive_class`, checked against
the bundle and the cross-validation summary), the model (:func:`table_model`: its
``model_sha256``), the threshold (:func:`table_threshold`) and a cohort name (:func:`cohort_name`:
the folder holding the images)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cxr_cad.config.sections import name_problem
from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import UsageError

if TYPE_CHECKING:
    from cxr_cad.report import ReportOptions

__all__ = ["cohort_name", "resolve_positive_class", "table_model", "table_threshold"]

#: report_cohort's logger (the "positive class ... from ..." line)
log = logging.getLogger("cxr_cad.api._report")


def table_threshold(pred: pd.DataFrame, options: ReportOptions) -> ReportOptions:
    """Without a threshold and a model: the predictions' one ``threshold`` value, when they have one."""
    if options.threshold is not None or "threshold" not in pred.columns:
        return options
    values = set(pred["threshold"].astype(str)) - {""}
    if len(values) != 1:
        return options
    return options.replace(
        threshold=float(values.pop()),
        threshold_method=options.threshold_method or "as recorded in the predictions table",
        threshold_source="predictions table",
    )


def _one_value(pred: pd.DataFrame, column: str) -> str | None:
    """The single non-empty value of ``column``, or None (absent, empty or several values)."""
    if column not in pred.columns:
        return None
    values = set(pred[column].astype("string").fillna("").str.strip()) - {""}
    return values.pop() if len(values) == 1 else None


def _classes_from_table(pred: pd.DataFrame) -> tuple[str | None, list[str], str]:
    """``(positive class, classes, what was looked at)`` from the columns a predictions table
    carries: ``positive_class``; ``y_true`` beside ``label`` (out-of-fold predictions);
    ``decision`` beside ``probability`` and ``threshold`` (cxr-cad predict)."""
    positive = _one_value(pred, "positive_class")
    if positive is not None:
        return positive, [], "its positive_class column"
    looked = ["no positive_class column"]
    if {"y_true", "label"} <= set(pred.columns):
        y = pd.to_numeric(pred["y_true"], errors="coerce")
        labels = pred["label"].astype("string").fillna("").str.strip()
        pos, neg = set(labels[(y == 1) & (labels != "")]), set(labels[(y == 0) & (labels != "")])
        if len(pos) == 1 and len(neg) <= 1 and not pos & neg:
            return pos.pop(), sorted(neg), "its y_true and label columns"
        looked.append("y_true/label columns that do not name one positive class")
    else:
        looked.append("no y_true column")
    if {"decision", "probability", "threshold"} <= set(pred.columns):
        prob = pd.to_numeric(pred["probability"], errors="coerce")
        thr = pd.to_numeric(pred["threshold"], errors="coerce")
        decision = pred["decision"].astype("string").fillna("").str.strip().str.lstrip("'")
        known = prob.notna() & thr.notna() & (decision != "")
        pos, neg = set(decision[known & (prob >= thr)]), set(decision[known & (prob < thr)])
        if len(pos) == 1 and len(neg) <= 1 and not pos & neg:
            return pos.pop(), sorted(neg), "its decision, probability and threshold columns"
        looked.append("decision/probability/threshold columns that do not name one positive class")
    else:
        looked.append("no decision + probability + threshold columns")
    return None, [], "; ".join(looked)


def resolve_positive_class(
    pred: pd.DataFrame, opts: ReportOptions, info: dict | None, cv: Mapping[str, Any] | None
) -> tuple[ReportOptions, list[str]]:
    """The positive class, in order: the option (checked against the rest), the bundle, the
    cross-validation summary, the predictions table's columns. Returns the options with it and
    the classes found; UsageError listing what was looked at when none says."""
    settings = (cv or {}).get("settings") if isinstance((cv or {}).get("settings"), Mapping) else {}
    cv_pos = settings.get("positive_class") if settings else None
    cv_classes = [str(c) for c in settings.get("classes") or []] if settings else []
    table_pos, table_classes, looked_table = _classes_from_table(pred)
    found = [
        (w, str(v))
        for w, v in (
            ("the --model bundle", (info or {}).get("positive_class")),
            ("the --cv-metrics summary", cv_pos),
            ("the predictions table", table_pos),
        )
        if v is not None
    ]
    given = opts.positive_class
    if given is not None:
        clash = [f"{w} says {v!r}" for w, v in found if v != str(given)]
        if clash:
            raise UsageError(f"positive class {given!r} differs from what the inputs record: {'; '.join(clash)}")
    elif found:
        which, value = found[0]
        clash = [f"{w} says {v!r}" for w, v in found[1:] if v != value]
        if clash:
            raise UsageError(f"{which} says the positive class is {value!r}, but {'; '.join(clash)}")
        log.info("positive class %r from %s", value, which)
        opts = opts.replace(positive_class=value)
    else:
        raise UsageError(
            "the positive class is not known; looked at: the --model bundle (not given), the --cv-metrics "
            f"summary ({'no settings.positive_class' if cv else 'not given'}), the predictions table "
            f"({looked_table}); give --positive-class NAME (e.g. --positive-class PNEUMONIA)"
        )
    if opts.positive_class is not None and name_problem(opts.positive_class):
        raise UsageError(f"positive class: {name_problem(opts.positive_class)}")
    return opts, cv_classes or ([str(opts.positive_class), *table_classes] if table_classes else [])


def table_model(pred: pd.DataFrame, info: dict | None, classes: list[str]) -> dict | None:
    """The model header: the bundle's (its hash checked against the table's ``model_sha256``),
    else the one ``model_sha256`` the table records (a short hash names it), else None."""
    sha = _one_value(pred, "model_sha256")
    if info is not None:
        if sha is not None and info.get("sha256") and sha != info["sha256"]:
            raise UsageError(
                f"the predictions were made by the model with SHA-256 {sha[:12]}..., not by --model "
                f"{info.get('name')} ({str(info['sha256'])[:12]}...); give the bundle that made them"
            )
        return info
    if sha is None:
        return None
    return {
        "name": f"model {sha[:12]}",
        "sha256": sha,
        "classes": classes,
        "identified_by": "the predictions table's model_sha256 column (the bundle was not given)",
    }


def _data_folder_name(pred: pd.DataFrame) -> str | None:
    """The name of the folder holding the scored images (their common parent, above class
    folders), from the table's ``path`` column; None without usable paths."""
    if "path" not in pred.columns:
        return None
    paths = [p for p in pred["path"].astype("string").fillna("").str.strip() if p]
    if not paths:
        return None
    try:
        common = Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))
    except ValueError:  # mixed drives / relative and absolute
        return None
    labels = set(pred["label"].astype(str)) if "label" in pred.columns else set()
    while common.name in labels and common.parent != common:
        common = common.parent
    name = common.name
    return name if name and not name_problem(name) else None


def cohort_name(pred: pd.DataFrame, predictions: pd.DataFrame | PathLike, opts: ReportOptions) -> ReportOptions:
    """A cohort name when none was given: the folder holding the images, else the table's file name."""
    info = dict(opts.cohort_info or {})
    if info.get("name"):
        return opts
    name = _data_folder_name(pred)
    if name is None and not isinstance(predictions, pd.DataFrame):
        name = f"images scored in {Path(predictions).name}"
    return opts.replace(cohort_info={**info, "name": name or "unnamed cohort"})

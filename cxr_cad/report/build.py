"""Gather every number a report shows into one JSON-safe dict (``metrics.json``).

Nothing here computes a statistic: AUCs, intervals, thresholds, confusion metrics,
calibration and subgroup tables all come from :mod:`cxr_cad.metrics`. This module only
selects the cases and calls those functions; :mod:`cxr_cad.report.prepare` reads the
predictions table and counts the cohort's categories.
"""

from __future__ import annotations

import datetime as _dt
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad import metrics
from cxr_cad.core import provenance
from cxr_cad.core.columns import SUBGROUP_COLUMNS
from cxr_cad.errors import ManifestError
from cxr_cad.metrics.proportions import f1_ci
from cxr_cad.report import cautions, clinical
from cxr_cad.report.options import ReportOptions
from cxr_cad.report.prepare import cohort_summary, prepare_predictions, recorded

__all__ = ["SCHEMA", "ReportOptions", "build_report_data", "prepare_predictions", "recorded"]

log = logging.getLogger(__name__)

SCHEMA = "cxr_cad.report/1"
DECISION_RULE = "score >= threshold"
FOLD_THRESHOLDS_LABEL = "Each fold's own threshold (chosen on that fold's training data)"


def _f1_follows(m: dict, options: ReportOptions) -> dict:
    """Redo the F1 bootstrap with the report's resamples and seed (binary_metrics uses 2000, seed 0)."""
    c = m["confusion"]
    if 2 * c["tp"] + c["fp"] + c["fn"]:
        m["f1_ci"] = f1_ci(
            c["tp"], c["fp"], c["tn"], c["fn"], alpha=options.alpha, n_resamples=options.n_bootstrap, seed=options.seed
        )
    return m


def _operating_point(name: str, label: str, y, s, threshold: float, classes, options: ReportOptions) -> dict:
    m = metrics.binary_metrics(y, s, threshold=threshold, alpha=options.alpha, class_names=classes)
    return {"name": name, "label": label, "threshold": float(threshold), "metrics": _f1_follows(m, options)}


#: operating-point labels by where the threshold came from
_OP_LABELS = {
    "bundle": "Model's stored threshold (fixed before this cohort)",
    "command line": "Threshold given on the command line",
    "predictions table": "Threshold recorded in the predictions table",
    "caller": "Threshold given for this report",
}


def _subgroups(ev: pd.DataFrame, threshold: float, alpha: float, classes: tuple[str, str]) -> dict:
    out = {}
    for col in SUBGROUP_COLUMNS:
        if col not in ev.columns or not recorded(ev[col]):
            continue
        table = metrics.subgroup_table(
            ev,
            col,
            label_col="y_true",
            score_col="score",
            threshold=threshold,
            alpha=alpha,
            include_overall=False,
            class_names=classes,
        )
        out[col] = metrics.jsonable(table.to_dict(orient="records"))
    return out


def _fold_numbers(folds: pd.Series) -> np.ndarray:
    """Fold ids as integers (CSV text "0", "1"... or any labels, numbered in sorted order)."""
    as_num = pd.to_numeric(folds, errors="coerce")
    if as_num.notna().all() and (as_num == as_num.round()).all():
        return as_num.astype(np.int64).to_numpy()
    return pd.factorize(folds.astype(str), sort=True)[0]


def _cross_validation(
    ev: pd.DataFrame, cv: Mapping[str, Any] | None, classes: tuple[str, str], alpha: float
) -> dict | None:
    """Per-fold ROC curves + mean +/- SD band (metrics.crossval_roc) and per-fold metrics.

    Per-fold metrics at each fold's own threshold come from ``cv`` (cv_metrics.json:
    ``per_fold``/``across_folds``) or, when the predictions carry a per-fold ``threshold``
    column, from :func:`cxr_cad.metrics.crossval_summary`.
    """
    if "fold" not in ev.columns or ev["fold"].nunique() < 2:
        return {"crossval": dict(cv)} if cv else None
    folds = _fold_numbers(ev["fold"])
    y, s = ev["y_true"].to_numpy(), ev["score"].to_numpy()
    roc = metrics.crossval_roc(y, s, folds)
    out: dict[str, Any] = {
        "folds": [],
        "mean_roc": roc["mean"],
        "auc_summary": {"n_folds": len(roc["folds"]), "mean": roc["mean"]["auc_mean"], "sd": roc["mean"]["auc_sd"]},
    }
    for f in roc["folds"]:
        m = folds == f["fold"]
        out["folds"].append(
            {
                "fold": f["fold"],
                "n": int(m.sum()),
                "n_pos": int(y[m].sum()),
                "auc": f["auc"],
                "fpr": f["fpr"],
                "tpr": f["tpr"],
            }
        )
    summary = None
    if cv and cv.get("per_fold") and cv.get("across_folds"):
        summary = cv
    elif "threshold" in ev.columns:
        thr = pd.to_numeric(ev["threshold"], errors="coerce")
        if thr.notna().all() and (thr.groupby(folds).nunique() == 1).all():
            table = pd.DataFrame({"y_true": y, "probability": s, "fold": folds, "threshold": thr.to_numpy()})
            summary = metrics.crossval_summary(table, class_names=classes, n_bootstrap=0, alpha=alpha)
    if summary is not None:
        pooled = summary.get("pooled") or {}
        if pooled.get("at_fold_thresholds"):
            out["pooled_at_fold_thresholds"] = pooled["at_fold_thresholds"]
        out["per_fold_metrics"] = [
            {k: f.get(k) for k in ("fold", "n", "n_pos", "n_neg", "threshold", "auc", "metrics")}
            for f in summary["per_fold"]
        ]
        out["across_folds"] = summary["across_folds"]
    if cv:
        out["crossval"] = {k: v for k, v in cv.items() if k not in ("roc", "per_fold", "across_folds")}
    return out


def _comparison(
    ev: pd.DataFrame, comparison: Mapping[str, Any] | None, options: ReportOptions, key: str
) -> dict | None:
    """Both models on the images they both scored: each AUC with the report's primary interval
    (``options.auc_interval``, the one the summary shows), the paired DeLong test, and what the
    caller knows of the other model (its hash, its own shift verdict, the validation kind)."""
    alpha = options.alpha
    if not comparison:
        return None
    other = comparison["predictions"]
    if key not in ev.columns or key not in other.columns:
        raise ManifestError(f"comparing two models needs the id column {key!r} in both prediction tables")
    o_score = comparison.get("score_col") or "probability"
    joined = ev[[key, "y_true", "score"]].merge(
        other[[key, o_score]].rename(columns={o_score: "score_b"}), on=key, how="inner"
    )
    joined = joined.dropna(subset=["score_b"])
    if len(joined) < len(ev):
        log.warning(
            "model comparison: %d of %d images have a score from both models; the paired test uses only those",
            len(joined),
            len(ev),
        )
    y = joined["y_true"].to_numpy()
    a, b = joined["score"].to_numpy(), joined["score_b"].to_numpy(dtype=float)
    test = metrics.delong_paired_test(y, a, b, alpha=alpha)
    fa, ta, _ = metrics.roc_curve(y, a)
    fb, tb, _ = metrics.roc_curve(y, b)
    interval = options.auc_interval
    return {
        "name_a": comparison.get("name_a", "this model"),
        "name_b": comparison.get("name", "other model"),
        "sha256_b": comparison.get("sha256"),
        "shift_b": clinical.jsonable_shift(comparison.get("shift")),
        "validation_a": comparison.get("validation_a"),
        "validation_b": comparison.get("validation_b"),
        "n": int(len(joined)),
        "auc_interval": interval,
        "paired_delong": test,
        "auc_a_delong": metrics.delong_auc_ci(y, a, alpha=alpha, interval=interval),
        "auc_b_delong": metrics.delong_auc_ci(y, b, alpha=alpha, interval=interval),
        "roc_a": {"fpr": fa.tolist(), "tpr": ta.tolist()},
        "roc_b": {"fpr": fb.tolist(), "tpr": tb.tolist()},
    }


def build_report_data(
    ev: pd.DataFrame,
    not_evaluated: pd.DataFrame,
    options: ReportOptions,
    *,
    model_info: Mapping[str, Any] | None = None,
    rejected: pd.DataFrame | None = None,
    cv: Mapping[str, Any] | None = None,
    comparison: Mapping[str, Any] | None = None,
    id_col: str = "sop_instance_uid",
) -> dict:
    """All numbers of one report as a JSON-safe dict (the content of ``metrics.json``).

    ``ev``/``not_evaluated`` come from :func:`prepare_predictions`. ``options.threshold`` is the
    model's stored decision threshold (None: only the cohort's Youden point is reported); the
    threshold's method and source and the cohort description come from ``options`` too.
    Undefined statistics (one class, empty cells) are ``null``. Raises :class:`~cxr_cad.errors.ManifestError`
    when no image can be evaluated.
    """
    if ev.empty:
        raise ManifestError("no image in the predictions table has both a label and a score; nothing to evaluate")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", metrics.UndefinedMetricWarning)
        data = _numbers(ev, not_evaluated, options, model_info, rejected, cv, comparison, id_col)
    undefined: list[str] = []
    for w in caught:
        if issubclass(w.category, metrics.UndefinedMetricWarning):
            undefined.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    data["undefined_statistics"] = sorted(set(undefined))
    data = metrics.jsonable(data)
    data["warnings"] = cautions.collect_warnings(data)
    return data


def _numbers(
    ev: pd.DataFrame,
    not_evaluated: pd.DataFrame,
    options: ReportOptions,
    model_info: Mapping[str, Any] | None,
    rejected: pd.DataFrame | None,
    cv: Mapping[str, Any] | None,
    comparison: Mapping[str, Any] | None,
    id_col: str,
) -> dict:
    """The report's numbers (not yet JSON-safe); statistics warnings are caught by the caller."""
    pos, neg = ev.attrs["positive_class"], ev.attrs["negative_class"]
    y, s = ev["y_true"].to_numpy(), ev["score"].to_numpy()
    a, threshold = options.alpha, options.threshold
    fpr, tpr, thr = metrics.roc_curve(y, s)
    youden = metrics.youden_threshold(y, s)
    points, cv_data = _operating_points(ev, y, s, youden, cv, (neg, pos), options)
    data = {
        "schema": SCHEMA,
        "generated_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "software": provenance.software_versions(provenance.CORE_PACKAGES),
        "model": dict(model_info) if model_info else None,
        "cohort": cohort_summary(ev, not_evaluated, rejected, options.cohort_info),
        "positive_class": pos,
        "negative_class": neg,
        "settings": _settings(options),
        "auc": _auc(y, s, options),
        "roc": {"fpr": fpr, "tpr": tpr, "thresholds": thr},
        "youden_threshold": youden,
        "operating_points": points,
        "calibration": {
            "brier_score": metrics.brier_score(y, s),
            "ece": metrics.expected_calibration_error(y, s, n_bins=options.n_calibration_bins),
            "reliability": metrics.reliability_curve(y, s, n_bins=options.n_calibration_bins, alpha=a),
        },
        "subgroups": (
            _subgroups(ev, threshold if threshold is not None else youden, a, (neg, pos))
            if threshold is not None or np.isfinite(youden)
            else {}
        ),
        "subgroup_threshold": "model" if threshold is not None else "youden",
        "cross_validation": cv_data,
        "comparison": _comparison(ev, comparison, options, id_col),
    }
    _clinical_additions(data, ev, points, options, info=model_info)
    return data


def _operating_points(
    ev: pd.DataFrame,
    y: np.ndarray,
    s: np.ndarray,
    youden: float,
    cv: Mapping[str, Any] | None,
    classes: tuple[str, str],
    options: ReportOptions,
) -> tuple[list[dict], dict | None]:
    """The model's threshold, each fold's own thresholds (pooled), the cohort's Youden threshold;
    and the cross-validation block, which holds the pooled fold-threshold metrics."""
    points = []
    if options.threshold is not None:
        label = _OP_LABELS.get(options.threshold_source or "caller", _OP_LABELS["caller"])
        points.append(_operating_point("model", label, y, s, options.threshold, classes, options))
    cv_data = _cross_validation(ev, cv, classes, options.alpha)
    if cv_data and cv_data.get("pooled_at_fold_thresholds"):
        points.append(
            {
                "name": "folds",
                "label": FOLD_THRESHOLDS_LABEL,
                "threshold": None,
                "metrics": _f1_follows(dict(cv_data["pooled_at_fold_thresholds"]), options),
            }
        )
    if np.isfinite(youden):
        label = "Youden threshold chosen on this cohort (optimistic)"
        points.append(_operating_point("youden", label, y, s, youden, classes, options))
    return points, cv_data


def _settings(options: ReportOptions) -> dict:
    a = options.alpha
    return {
        "alpha": a,
        "confidence_level": 1 - a,
        "n_bootstrap": options.n_bootstrap,
        "bootstrap_seed": options.seed,
        "n_calibration_bins": options.n_calibration_bins,
        "decision_rule": DECISION_RULE,
        "proportion_ci": "Wilson score",
        "likelihood_ratio_ci": "log method (Simel 1991)",
        "prevalences": [float(p) for p in options.prevalences],
        "auc_interval": options.auc_interval,
    }


def _auc(y: np.ndarray, s: np.ndarray, options: ReportOptions) -> dict:
    a = options.alpha
    return {
        "primary": f"delong_{options.auc_interval}",
        "delong": metrics.delong_auc_ci(y, s, alpha=a),
        "delong_logit": metrics.delong_auc_ci(y, s, alpha=a, interval="logit"),
        "bootstrap": metrics.bootstrap_auc_ci(y, s, n_resamples=options.n_bootstrap, seed=options.seed, alpha=a),
    }


def _clinical_additions(
    data: dict, ev: pd.DataFrame, points: list[dict], options: ReportOptions, *, info: Mapping[str, Any] | None
) -> None:
    """Provenance, population, model description, patient-level CIs, utility, failures."""
    primary = points[0] if points else None
    fixed = primary["threshold"] if primary and primary["threshold"] is not None else None
    data["threshold_provenance"] = clinical.threshold_provenance(
        options.threshold, options.threshold_source, options.threshold_method, info
    )
    data["population"] = clinical.population(ev, options.cohort_info)
    # a model known only by the table's hash is not described (its architecture is unknown)
    data["model_description"] = clinical.model_description(info) if info and not info.get("identified_by") else None
    data["patient_level"] = clinical.patient_level(
        ev, fixed, n_resamples=options.n_bootstrap, seed=options.seed, alpha=options.alpha
    )
    data["utility"] = clinical.clinical_utility(
        ev,
        primary if fixed is not None else None,
        options.prevalences,
        n_bins=options.n_calibration_bins,
        n_resamples=options.n_bootstrap,
        seed=options.seed,
        alpha=options.alpha,
    )
    data["failures"] = {
        "operating_point": primary["name"] if primary is not None and fixed is not None else None,
        "threshold": fixed,
        "cases": clinical.failures(ev, fixed),
    }
    data["small_subgroups"] = cautions.small_subgroups(metrics.jsonable(data["subgroups"]))

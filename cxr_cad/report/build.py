"""Gather every number a report shows into one JSON-safe dict (``metrics.json``).

Nothing here computes a statistic: AUCs, intervals, thresholds, confusion metrics,
calibration and subgroup tables all come from :mod:`cxr_cad.metrics`. This module only
selects the cases, calls those functions and counts categories for the cohort summary.

Input is a predictions table with one row per image (see :func:`prepare_predictions`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxr_cad import metrics, versions
from cxr_cad.errors import UsageError
from cxr_cad.report import clinical

log = logging.getLogger(__name__)

SCHEMA = "cxr_cad.report/1"
#: Columns summarised in the cohort summary and the subgroup table (label shown in reports).
SUBGROUP_COLUMNS: dict[str, str] = {
    "view_position": "View position",
    "patient_sex": "Sex",
    "age_band": "Age band",
    "manufacturer": "Manufacturer",
}
#: Columns that identify a patient; never written unless identifiers are requested.
IDENTIFIER_COLUMNS = (
    "patient_id",
    "patient_name",
    "path",
    "study_instance_uid",
    "series_instance_uid",
    "accession_number",
    "patient_key",
)
_SOFTWARE = ("torch", "monai", "numpy", "pandas", "scipy", "scikit-learn", "pydicom", "matplotlib", "jinja2", "fpdf2")
DECISION_RULE = "score >= threshold"
FOLD_THRESHOLDS_LABEL = "Each fold's own threshold (chosen on that fold's training data)"


@dataclass(frozen=True)
class ReportOptions:
    """How the statistics are computed.

    alpha: 1 - confidence level (0.05 -> 95% intervals), in (0, 1).
    n_bootstrap: stratified bootstrap resamples for the AUC interval (>= 100).
    seed: seed of the bootstrap random generator.
    n_calibration_bins: equal-width probability bins of the reliability diagram / ECE.
    prevalences: prevalences at which PPV and NPV are shown (clinical utility).
    auc_interval: the primary DeLong AUC interval, ``"logit"`` (default; better measured
        coverage near AUC 1) or ``"wald"`` (clipped); both are written to metrics.json.
    """

    alpha: float = 0.05
    n_bootstrap: int = 2000
    seed: int = 0
    n_calibration_bins: int = 10
    prevalences: tuple[float, ...] = (0.05, 0.2)
    auc_interval: str = "logit"

    def __post_init__(self) -> None:
        if not self.prevalences or any(not 0.0 < float(p) < 1.0 for p in self.prevalences):
            raise UsageError(f"prevalences must be in (0, 1), e.g. 0.05,0.2; got {list(self.prevalences)}")
        if self.auc_interval not in ("logit", "wald"):
            raise UsageError(f"auc_interval must be 'logit' or 'wald'; got {self.auc_interval!r}")
        if not 0.0 < self.alpha < 1.0:
            raise UsageError(f"alpha must be in (0, 1), e.g. 0.05; got {self.alpha}")
        if self.n_bootstrap < 100:
            raise UsageError(f"n_bootstrap must be at least 100; got {self.n_bootstrap}")
        if self.n_calibration_bins < 2:
            raise UsageError(f"n_calibration_bins must be at least 2; got {self.n_calibration_bins}")


def software_versions() -> dict[str, str]:
    """Versions of cxr_cad, Python and the libraries the numbers depend on."""
    return versions.software_versions(_SOFTWARE)


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
        UsageError: a missing column, a label outside the two classes, scores outside [0, 1].
    """
    df = predictions.reset_index(drop=True).copy()
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
        raise UsageError(
            f"predictions table: {'; '.join(problems)} (columns present: {', '.join(map(str, df.columns))})"
        )
    df["image_index"] = np.arange(len(df))
    labels = df[label_col]
    pos = str(positive_class)
    lab_text = labels.astype("string").str.strip()
    no_label = labels.isna() | (lab_text == "")
    score = pd.to_numeric(df[score_col], errors="coerce")
    no_score = score.isna() & ~no_label
    bad = df.loc[~no_label & ~no_score]
    others = sorted(set(lab_text[bad.index]) - {pos})
    if pos not in set(lab_text[bad.index]) and negative_class is None and len(others) != 1:
        raise UsageError(
            f"predictions table: positive class {pos!r} does not occur in column "
            f"{label_col!r} (values: {', '.join(others[:10]) or 'none'})"
        )
    if negative_class is None:
        if len(others) > 1:
            raise UsageError(
                f"predictions table: a binary report needs two classes but {label_col!r} "
                f"holds {pos!r} and {', '.join(map(repr, others))}"
            )
        negative_class = others[0] if others else "negative"
    neg = str(negative_class)
    extra = sorted(set(others) - {neg})
    if extra:
        raise UsageError(
            f"predictions table: labels {', '.join(map(repr, extra))} are neither the "
            f"positive class {pos!r} nor the negative class {neg!r}"
        )
    s = score[bad.index]
    if len(s) and (s.min() < 0 or s.max() > 1):
        raise UsageError(
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
            ev["age_band"] = [metrics.age_band(a) for a in ev[age_col]]
    ev.attrs.update(positive_class=pos, negative_class=neg, score_col=score_col)
    return ev, rest


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


def _f1_follows(m: dict, options: ReportOptions) -> dict:
    """Redo the F1 bootstrap with the report's resamples and seed (binary_metrics uses 2000, seed 0)."""
    from cxr_cad.metrics.proportions import f1_ci

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


def _comparison(ev: pd.DataFrame, comparison: Mapping[str, Any] | None, alpha: float, key: str) -> dict | None:
    if not comparison:
        return None
    other = comparison["predictions"]
    if key not in ev.columns or key not in other.columns:
        raise UsageError(f"comparing two models needs the id column {key!r} in both prediction tables")
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
    return {
        "name_a": comparison.get("name_a", "this model"),
        "name_b": comparison.get("name", "other model"),
        "sha256_b": comparison.get("sha256"),
        "n": int(len(joined)),
        "paired_delong": test,
        "auc_a_delong": metrics.delong_auc_ci(y, a, alpha=alpha),
        "auc_b_delong": metrics.delong_auc_ci(y, b, alpha=alpha),
        "roc_a": {"fpr": fa.tolist(), "tpr": ta.tolist()},
        "roc_b": {"fpr": fb.tolist(), "tpr": tb.tolist()},
    }


def build_report_data(
    ev: pd.DataFrame,
    not_evaluated: pd.DataFrame,
    *,
    threshold: float | None,
    threshold_method: str | None = None,
    model_info: Mapping[str, Any] | None = None,
    cohort_info: Mapping[str, Any] | None = None,
    rejected: pd.DataFrame | None = None,
    cv: Mapping[str, Any] | None = None,
    comparison: Mapping[str, Any] | None = None,
    options: ReportOptions = ReportOptions(),
    id_col: str = "sop_instance_uid",
    threshold_source: str | None = None,
) -> dict:
    """All numbers of one report as a JSON-safe dict (the content of ``metrics.json``).

    ``ev``/``not_evaluated`` come from :func:`prepare_predictions`. ``threshold`` is the
    model's stored decision threshold (None: only the cohort's Youden point is reported).
    Undefined statistics (one class, empty cells) are ``null``. Raises :class:`UsageError`
    when no image can be evaluated.
    """
    if ev.empty:
        raise UsageError("no image in the predictions table has both a label and a score; nothing to evaluate")
    pos, neg = ev.attrs["positive_class"], ev.attrs["negative_class"]
    y, s = ev["y_true"].to_numpy(), ev["score"].to_numpy()
    a = options.alpha
    undefined: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", metrics.UndefinedMetricWarning)
        fpr, tpr, thr = metrics.roc_curve(y, s)
        youden = metrics.youden_threshold(y, s)
        points = []
        if threshold is not None:
            points.append(
                _operating_point(
                    "model",
                    _OP_LABELS.get(threshold_source or "caller", _OP_LABELS["caller"]),
                    y,
                    s,
                    threshold,
                    (neg, pos),
                    options,
                )
            )
        cv_data = _cross_validation(ev, cv, (neg, pos), a)
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
            points.append(
                _operating_point(
                    "youden", "Youden threshold chosen on this cohort (optimistic)", y, s, youden, (neg, pos), options
                )
            )
        data = {
            "schema": SCHEMA,
            "generated_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "software": software_versions(),
            "model": dict(model_info) if model_info else None,
            "cohort": cohort_summary(ev, not_evaluated, rejected, cohort_info),
            "positive_class": pos,
            "negative_class": neg,
            "settings": {
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
            },
            "auc": {
                "primary": f"delong_{options.auc_interval}",
                "delong": metrics.delong_auc_ci(y, s, alpha=a),
                "delong_logit": metrics.delong_auc_ci(y, s, alpha=a, interval="logit"),
                "bootstrap": metrics.bootstrap_auc_ci(
                    y, s, n_resamples=options.n_bootstrap, seed=options.seed, alpha=a
                ),
            },
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
            "comparison": _comparison(ev, comparison, a, id_col),
        }
        _clinical_additions(
            data,
            ev,
            points,
            threshold,
            threshold_source,
            threshold_method,
            info=model_info,
            cohort_info=cohort_info,
            options=options,
        )
    for w in caught:
        if issubclass(w.category, metrics.UndefinedMetricWarning):
            undefined.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    data["undefined_statistics"] = sorted(set(undefined))
    data = metrics.jsonable(data)
    data["warnings"] = clinical.collect_warnings(data)
    return data


def _clinical_additions(
    data: dict,
    ev: pd.DataFrame,
    points: list[dict],
    threshold: float | None,
    threshold_source: str | None,
    threshold_method: str | None,
    *,
    info,
    cohort_info,
    options: ReportOptions,
) -> None:
    """Provenance, population, model description, patient-level CIs, utility, failures."""
    primary = points[0] if points else None
    fixed = primary["threshold"] if primary and primary["threshold"] is not None else None
    data["threshold_provenance"] = clinical.threshold_provenance(threshold, threshold_source, threshold_method, info)
    data["population"] = clinical.population(ev, cohort_info)
    data["model_description"] = clinical.model_description(info) if info else None
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
        "operating_point": primary["name"] if fixed is not None else None,
        "threshold": fixed,
        "cases": clinical.failures(ev, fixed),
    }
    data["small_subgroups"] = clinical.small_subgroups(metrics.jsonable(data["subgroups"]))

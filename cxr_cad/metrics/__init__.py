"""Clinical ROC statistics: pure functions over arrays and DataFrames, no I/O.

Conventions: ``y_true`` is 0/1 (1 = the configured positive class), ``y_score`` the
positive-class probability; a case is called positive when ``score >= threshold``.
Undefined statistics are NaN with :class:`UndefinedMetricWarning`, never an invented value.
Results are plain dicts or frozen dataclasses with ``to_dict()``; :func:`jsonable`
makes any of them strict-JSON safe (NaN -> null).

Errors: a bad setting (``alpha``, ``n_resamples``, ``n_bins``, ``strategy``, ``interval``, a target
sensitivity/specificity, age-band ``edges``, a threshold probability or prevalence) raises
:class:`~cxr_cad.errors.ConfigError`; data that cannot be scored (labels other than 0/1,
mismatched lengths, NaN scores) raises ``ValueError``.
"""

from cxr_cad.metrics._common import UndefinedMetricWarning, jsonable
from cxr_cad.metrics.bootstrap import bootstrap_auc_ci
from cxr_cad.metrics.calibration import ReliabilityCurve, brier_score, expected_calibration_error, reliability_curve
from cxr_cad.metrics.cv import crossval_roc, crossval_summary, mean_sd, roc_table
from cxr_cad.metrics.delong import AucCI, PairedTest, delong_auc_ci, delong_paired_test
from cxr_cad.metrics.multiclass import confusion_matrix_k, one_vs_rest_auc, per_class_accuracy
from cxr_cad.metrics.operating import (
    MIN_CLASS_COUNT,
    YoudenChoice,
    binary_metrics,
    confusion_counts,
    small_class_warning,
    threshold_for_sensitivity,
    threshold_for_specificity,
    youden_choice,
    youden_threshold,
)
from cxr_cad.metrics.proportions import likelihood_ratios, proportion, wilson_ci
from cxr_cad.metrics.recalibration import (
    Calibration,
    apply_calibration,
    calibrated_policy,
    fit_calibration,
    fit_platt,
    fit_temperature,
    log_odds,
    midpoint_policy,
    sensitivity_policy,
)
from cxr_cad.metrics.roc import interpolate_roc, mean_roc, roc_auc, roc_curve
from cxr_cad.metrics.subgroups import age_band, subgroup_table

__all__ = [
    "AucCI",
    "PairedTest",
    "ReliabilityCurve",
    "UndefinedMetricWarning",
    "age_band",
    "binary_metrics",
    "bootstrap_auc_ci",
    "brier_score",
    "confusion_counts",
    "confusion_matrix_k",
    "crossval_roc",
    "crossval_summary",
    "mean_sd",
    "roc_table",
    "delong_auc_ci",
    "delong_paired_test",
    "expected_calibration_error",
    "interpolate_roc",
    "jsonable",
    "likelihood_ratios",
    "mean_roc",
    "one_vs_rest_auc",
    "per_class_accuracy",
    "proportion",
    "reliability_curve",
    "roc_auc",
    "roc_curve",
    "subgroup_table",
    "threshold_for_sensitivity",
    "threshold_for_specificity",
    "wilson_ci",
    "youden_threshold",
    "MIN_CLASS_COUNT",
    "YoudenChoice",
    "small_class_warning",
    "youden_choice",
    "Calibration",
    "apply_calibration",
    "calibrated_policy",
    "fit_calibration",
    "fit_platt",
    "fit_temperature",
    "log_odds",
    "midpoint_policy",
    "sensitivity_policy",
]

"""The report's options: how the statistics are computed, which threshold and classes are
reported, the cohort's description and which files are written (:class:`ReportOptions`).

A bad value raises one :class:`~cxr_cad.errors.ConfigError` that lists every problem with
its field name, whether the options come from the command line, a workflow file or Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypedDict

from pydantic import Field, field_validator

from cxr_cad.config.base import StrictModel, parse_model
from cxr_cad.errors import UsageError

__all__ = ["ReportOptions", "LegacyReportKwargs", "fold_legacy_kwargs"]


class ReportOptions(StrictModel):
    """Everything about a report that is a choice rather than data (frozen; unknown fields refused).

    Statistics:
        alpha: 1 - confidence level (0.05 -> 95% intervals), in (0, 1).
        n_bootstrap: stratified bootstrap resamples for the AUC interval (>= 100).
        seed: seed of the bootstrap random generator.
        n_calibration_bins: equal-width probability bins of the reliability diagram / ECE (>= 2).
        prevalences: prevalences at which PPV and NPV are shown (clinical utility), each in (0, 1).
        auc_interval: the primary DeLong AUC interval, ``"logit"`` (default; better measured
            coverage near AUC 1) or ``"wald"`` (clipped); both are written to metrics.json.

    Classes and threshold:
        positive_class: label of the positive class; default ``model_info["positive_class"]``.
        threshold: the model's stored decision threshold in [0, 1]; default
            ``model_info["threshold"]``; None (and no model) reports only the cohort's Youden threshold.
        threshold_method: how that threshold was chosen (shown in the header and Methods).
        threshold_source: where ``threshold`` came from: ``"bundle"``, ``"command line"``,
            ``"predictions table"``; default ``"bundle"`` when it is taken from ``model_info``,
            else ``"caller"``. Only ``"bundle"`` is described as fixed before this cohort.
        label_col: the label column of the predictions table.
        score_col: the score column; default ``probability``, else ``prob_<positive class>``.

    Cohort and outputs:
        cohort_info: ``name``, ``manifest_hash``, ``date`` and the population items of the cohort.
        include_identifiers: also write ``patient_id``, ``path`` and study UIDs to predictions.csv.
        pdf: also write report.pdf (without it an older report.pdf in the folder is removed).
        gradcam_note: the note shown when no Grad-CAM source is given.
        allow_partial: write a report from a table whose rows are not all evaluable (no label,
            no finite probability; one class, one row): they are counted as not evaluated and
            the AUC may be "not estimable". Off (the default), :func:`cxr_cad.api.report_cohort`
            refuses such a table, listing every problem (``cxr-cad report --allow-partial``).
    """

    error_source: ClassVar[str | None] = "report options"

    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    n_bootstrap: int = Field(default=2000, ge=100)
    seed: int = 0
    n_calibration_bins: int = Field(default=10, ge=2)
    prevalences: tuple[float, ...] = (0.05, 0.2)
    auc_interval: Literal["logit", "wald"] = "logit"

    positive_class: str | int | None = None
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    threshold_method: str | None = None
    threshold_source: str | None = None
    label_col: str = "label"
    score_col: str | None = None

    cohort_info: dict[str, Any] | None = None
    include_identifiers: bool = False
    pdf: bool = True
    gradcam_note: str | None = None
    allow_partial: bool = False

    @field_validator("prevalences")
    @classmethod
    def _prevalences_in_unit_interval(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0.0 < float(p) < 1.0 for p in value):
            raise ValueError(f"prevalences must be in (0, 1), e.g. 0.05,0.2; got {list(value)}")
        return value


class LegacyReportKwargs(TypedDict, total=False):
    """The keyword arguments ``write_report`` took before :class:`ReportOptions` held them."""

    positive_class: str | int | None
    threshold: float | None
    threshold_method: str | None
    threshold_source: str | None
    label_col: str
    score_col: str | None
    cohort_info: Mapping[str, Any] | None
    include_identifiers: bool
    pdf: bool
    gradcam_note: str | None


_LEGACY = frozenset(LegacyReportKwargs.__annotations__)


def fold_legacy_kwargs(options: ReportOptions | Mapping[str, Any] | None, legacy: dict[str, Any]) -> ReportOptions:
    """``options`` (a :class:`ReportOptions`, or a mapping of its fields, e.g. a workflow's
    ``report:`` section) with the old-style keyword arguments of ``write_report`` folded in.

    Raises:
        TypeError: a keyword ``write_report`` never took (a programming error, as Python reports it).
        UsageError: a keyword that contradicts the same field set explicitly in ``options``.
        ConfigError: a bad value.
    """
    unknown = sorted(set(legacy) - _LEGACY)
    if unknown:
        raise TypeError(f"write_report() got unexpected keyword argument(s): {', '.join(unknown)}")
    if options is None:
        options = ReportOptions()
    elif not isinstance(options, ReportOptions):
        options = parse_model(ReportOptions, options, source=ReportOptions.error_source)
    if not legacy:
        return options
    clash = [k for k in legacy if k in options.model_fields_set and getattr(options, k) != legacy[k]]
    if clash:
        raise UsageError(
            f"write_report: {', '.join(clash)} given both as a keyword and in options with different values"
        )
    return options.replace(**legacy)

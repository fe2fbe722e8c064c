"""The warnings a reader of a report must see: small samples, zero-width or clipped
intervals, wide intervals, a saturated threshold, poor calibration, small subgroups
(``metrics["warnings"]``, ``metrics["small_subgroups"]``). The rules: docs/report.md#warnings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cxr_cad.report.fmt import finite_or_none

__all__ = [
    "SMALL_CLASS",
    "SMALL_CI_WIDTH",
    "SMALL_SUBGROUP_N",
    "SMALL_SUBGROUP_CLASS",
    "SATURATED_LOW",
    "SATURATED_HIGH",
    "POOR_ECE",
    "POOR_ECE_MIN_N",
    "POOR_BRIER",
    "collect_warnings",
    "small_subgroups",
]

#: a sample is "small" below this many images of either class, or with a CI wider than SMALL_CI_WIDTH
SMALL_CLASS = 50
SMALL_CI_WIDTH = 0.2
#: subgroups are flagged below this many images or this many of either class
SMALL_SUBGROUP_N = 30
SMALL_SUBGROUP_CLASS = 10
#: a stored threshold at or beyond these calls (almost) every image one class
SATURATED_LOW = 0.001
SATURATED_HIGH = 0.999
#: poor calibration: ECE above POOR_ECE with at least POOR_ECE_MIN_N images, or a Brier score above
#: POOR_BRIER (worse than scoring every image 0.5) at any size
POOR_ECE = 0.1
POOR_ECE_MIN_N = 50
POOR_BRIER = 0.25


def _ci_warning(name: str, ci: Mapping[str, Any] | None, *, value_key: str = "value") -> str | None:
    if not ci:
        return None
    v, lo, hi = finite_or_none(ci.get(value_key)), finite_or_none(ci.get("low")), finite_or_none(ci.get("high"))
    if v is None or lo is None or hi is None:
        return None
    if hi - lo == 0:
        return (
            f"{name}: the interval has zero width ({v:.3f} ({lo:.3f}\u2013{hi:.3f})); with this few cases "
            "or a perfect split the data cannot show the uncertainty, which is not zero"
        )
    return None


def collect_warnings(d: Mapping[str, Any]) -> list[str]:
    """Warnings for the headline and metrics.json: small samples, zero-width and clipped intervals."""
    out: list[str] = []
    if (d.get("threshold_provenance") or {}).get("warning"):
        out.append(str(d["threshold_provenance"]["warning"]))
    auc = d["auc"]
    n_pos, n_neg = auc["delong"].get("n_pos") or 0, auc["delong"].get("n_neg") or 0
    if n_pos < SMALL_CLASS or n_neg < SMALL_CLASS:
        out.append(
            f"Small sample: {n_pos} positive and {n_neg} negative images (fewer than {SMALL_CLASS} of a "
            "class); every estimate here is imprecise."
        )
    for key, label in (
        ("delong_logit", "AUC (DeLong, logit)"),
        ("delong", "AUC (DeLong, Wald)"),
        ("bootstrap", "AUC (bootstrap)"),
    ):
        ci = auc.get(key)
        w = _ci_warning(label, ci, value_key="auc")
        if w:
            out.append(w)
        if ci and ci.get("clipped"):
            out.append(
                f"{label}: the interval was clipped at {'1' if (ci.get('high') or 0) >= 1 else '0'}; "
                "the logit interval does not need clipping"
            )
    wide = []
    for op in d["operating_points"][:1]:
        m = op["metrics"]
        for key in ("sensitivity", "specificity"):
            w = _ci_warning(f"{key.capitalize()} at {op['label']}", m.get(key))
            if w:
                out.append(w)
            lo, hi = finite_or_none((m.get(key) or {}).get("low")), finite_or_none((m.get(key) or {}).get("high"))
            if lo is not None and hi is not None and hi - lo > SMALL_CI_WIDTH:
                wide.append(f"{key} ({hi - lo:.2f})")
        f1 = m.get("f1_ci") or {}
        if finite_or_none(f1.get("value")) in (0.0, 1.0) and finite_or_none(f1.get("low")) == finite_or_none(
            f1.get("high")
        ):
            out.append(
                f"F1 at {op['label']} is {f1['value']:.0f} and its bootstrap interval has zero width: "
                "every resample gives the same value, which does not mean there is no uncertainty"
            )
    pl = d.get("patient_level") or {}
    for key in ("auc", "sensitivity", "specificity"):
        ci = pl.get(key) or {}
        if finite_or_none(ci.get("low")) is not None and ci.get("low") == ci.get("high"):
            out.append(
                f"Patient-level {key} interval has zero width ({ci['low']:.3f}–{ci['high']:.3f}): every "
                "patient resample gives the same value, which does not mean there is no uncertainty"
            )
    lo, hi = finite_or_none(auc["delong_logit"].get("low")), finite_or_none(auc["delong_logit"].get("high"))
    if lo is not None and hi is not None and hi - lo > SMALL_CI_WIDTH:
        wide.append(f"AUC ({hi - lo:.2f})")
    if wide:
        out.append(f"Wide confidence intervals (wider than {SMALL_CI_WIDTH}): " + ", ".join(wide) + ".")
    if n_pos == 1 or n_neg == 1:
        out.append("Only one image in a class: bootstrap intervals are degenerate.")
    out += _threshold_and_calibration(d, n_pos + n_neg)
    return out


def _threshold_and_calibration(d: Mapping[str, Any], n: int) -> list[str]:
    """A saturated stored threshold; poor calibration (docs/report.md#warnings)."""
    out = []
    model = next((op for op in d["operating_points"] if op["name"] == "model"), None)
    thr = finite_or_none(model["threshold"]) if model else None
    if thr is not None and (thr >= SATURATED_HIGH or thr <= SATURATED_LOW):
        calls = d.get("negative_class") if thr >= SATURATED_HIGH else d.get("positive_class")
        out.append(
            f"Saturated threshold: the model's threshold is {thr:.4g} (at or beyond {SATURATED_LOW:g} / "
            f"{SATURATED_HIGH:g}), so it calls almost every image {calls}; the sensitivity and specificity "
            "at it say little. Check how the threshold was chosen (a validation set with one class, or "
            "scores that are all 0 or 1)."
        )
    cal = d.get("calibration") or {}
    ece, brier = finite_or_none(cal.get("ece")), finite_or_none(cal.get("brier_score"))
    poor = []
    if ece is not None and ece > POOR_ECE and n >= POOR_ECE_MIN_N:
        poor.append(f"ECE {ece:.3f} > {POOR_ECE:g}")
    if brier is not None and brier > POOR_BRIER:
        poor.append(f"Brier score {brier:.3f} > {POOR_BRIER:g}, worse than scoring every image 0.5")
    if poor:
        out.append(
            "Poor calibration: "
            + "; ".join(poor)
            + ". The scores are not probabilities of disease on this cohort; do not read them as risks."
        )
    return out


def small_subgroups(subgroups: Mapping[str, list]) -> list[str]:
    """``column=value`` of every subgroup under 30 images or 10 of a class."""
    flagged = []
    for col, rows in subgroups.items():
        for r in rows:
            if r["n"] < SMALL_SUBGROUP_N or min(r["n_pos"], r["n_neg"]) < SMALL_SUBGROUP_CLASS:
                flagged.append(f"{col}={r['value']}")
    return flagged

"""Operating points (thresholds) and the confusion-matrix metrics at a threshold.

Decision rule: a case is called **positive when ``score >= threshold``**. Every function
here and :func:`cxr_cad.metrics.roc.roc_curve` use this rule, so the sensitivity and
specificity that a threshold was chosen for are exactly what :func:`binary_metrics`
reports at that threshold. The thresholds returned are observed score values (or,
for "call nothing positive", the next float above the largest score), never midpoints.

Youden's J is compared exactly: ``J = tp/P - fp/N`` as a :class:`fractions.Fraction`, so
two operating points with the same J tie however the floats round (``2/3 - 0`` and
``1 - 1/3`` are equal). Among tied thresholds the one nearest the middle of the tie range
is taken (the highest of two equally near ones): a threshold in the middle of a plateau
moves least when scores shift, an end sits next to a worse operating point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from cxr_cad.errors import ConfigError
from cxr_cad.metrics._common import check_alpha, check_binary, warn_one_class, warn_undefined
from cxr_cad.metrics.proportions import balanced_accuracy_ci, f1_ci, likelihood_ratios, proportion

_EPS = 1e-9


def _counts_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(tps, fps, thresholds) at every distinct score, decreasing, without the +inf point."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[last]
    fps = last + 1 - tps
    n_pos = int(y.sum())
    return tps, fps, s_sorted[last], n_pos, int(y.size - n_pos)


def _both_classes(name: str, y: np.ndarray) -> bool:
    return not warn_one_class(name, y, "threshold is undefined (NaN)")[2]


#: Fewer validation images than this in either class make a threshold unreliable (warned).
MIN_CLASS_COUNT = 20


@dataclass(frozen=True)
class YoudenChoice:
    """The Youden operating point and how it was chosen.

    Attributes:
        threshold: the chosen observed score (decision ``score >= threshold``).
        j: Youden's J there (float of the exact value).
        tie_low, tie_high: lowest and highest observed thresholds reaching the maximal J
            (equal when there is no tie); ``n_tied`` how many distinct thresholds tie.
        n_pos, n_neg: class counts of the data it was chosen on.
    """

    threshold: float
    j: float
    tie_low: float
    tie_high: float
    n_tied: int
    n_pos: int
    n_neg: int

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "j": self.j,
            "tie_range": [self.tie_low, self.tie_high],
            "n_tied": self.n_tied,
            "n_positive": self.n_pos,
            "n_negative": self.n_neg,
        }


def youden_choice(y_true, y_score) -> YoudenChoice | None:
    """The Youden operating point with its tie range; None (+ warning) when a class is missing.

    J is compared exactly (``Fraction(tp, P) - Fraction(fp, N)``). When several distinct
    thresholds reach the maximal J, the tie range is [lowest, highest] of them and the
    chosen threshold is the tied one nearest its midpoint; of two equally near ones the
    higher (the documented "ties: highest threshold" rule, which decides a two-way tie).
    """
    y, s = check_binary(y_true, y_score)
    if not _both_classes("youden_threshold", y):
        return None
    tps, fps, thr, n_pos, n_neg = _counts_curve(y, s)
    j = [Fraction(int(tp), n_pos) - Fraction(int(fp), n_neg) for tp, fp in zip(tps, fps)]
    best = max(j)
    tied = [i for i, v in enumerate(j) if v == best]  # thresholds decreasing with i
    hi, lo = float(thr[tied[0]]), float(thr[tied[-1]])
    mid = Fraction(hi) / 2 + Fraction(lo) / 2
    pick = min(tied, key=lambda i: (abs(Fraction(float(thr[i])) - mid), i))  # i smaller = higher threshold
    return YoudenChoice(
        threshold=float(thr[pick]), j=float(best), tie_low=lo, tie_high=hi, n_tied=len(tied), n_pos=n_pos, n_neg=n_neg
    )


def youden_threshold(y_true, y_score) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (exact comparison).

    Ties: the tied threshold nearest the middle of the tie range, the highest of two
    equally near ones (so a two-way tie takes the higher, more specific threshold); see
    :func:`youden_choice`. NaN with :class:`UndefinedMetricWarning` when a class is missing.
    """
    choice = youden_choice(y_true, y_score)
    return float("nan") if choice is None else choice.threshold


def small_class_warning(n_pos: int, n_neg: int, *, minimum: int = MIN_CLASS_COUNT) -> str | None:
    """A warning text when either class has fewer than ``minimum`` images (else None)."""
    if min(n_pos, n_neg) >= minimum:
        return None
    return (
        f"the threshold was chosen on {n_pos} positive and {n_neg} negative images; with fewer than "
        f"{minimum} of either class it is unreliable (use a larger validation split)"
    )


def threshold_for_sensitivity(y_true, y_score, target: float) -> float:
    """Highest threshold whose sensitivity is at least ``target`` (in (0, 1]).

    Sensitivity falls as the threshold rises, so this is the operating point with the best
    specificity among those reaching the target. NaN + warning when a class is missing.
    Raises ``ValueError`` for a target outside (0, 1].
    """
    target = float(target)
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"target sensitivity must be in (0, 1]; got {target}")
    y, s = check_binary(y_true, y_score)
    if not _both_classes("threshold_for_sensitivity", y):
        return float("nan")
    tps, _, thr, n_pos, _ = _counts_curve(y, s)
    ok = np.flatnonzero(tps >= target * n_pos - _EPS)
    return float(thr[ok[0]])


def threshold_for_specificity(y_true, y_score, target: float) -> float:
    """Lowest threshold whose specificity is at least ``target`` (in [0, 1]).

    Specificity rises with the threshold, so this is the operating point with the best
    sensitivity among those reaching the target. When only "call nothing positive" reaches
    it, the next float above the largest score is returned. NaN + warning when a class is
    missing. Raises ``ValueError`` for a target outside [0, 1].
    """
    target = float(target)
    if not 0.0 <= target <= 1.0:
        raise ConfigError(f"target specificity must be in [0, 1]; got {target}")
    y, s = check_binary(y_true, y_score)
    if not _both_classes("threshold_for_specificity", y):
        return float("nan")
    _, fps, thr, _, n_neg = _counts_curve(y, s)
    ok = np.flatnonzero(n_neg - fps >= target * n_neg - _EPS)
    if ok.size == 0:
        return float(np.nextafter(s.max(), np.inf))
    return float(thr[ok[-1]])


def confusion_counts(y_true, y_score, *, threshold: float) -> dict:
    """``{"tp", "fp", "tn", "fn"}`` with decision ``score >= threshold``."""
    y, s = check_binary(y_true, y_score)
    if threshold is None or math.isnan(float(threshold)):
        raise ValueError("threshold must be a number (it is NaN/None: was it chosen on a cohort with only one class?)")
    pred = s >= float(threshold)
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def binary_metrics(
    y_true, y_score, *, threshold: float, alpha: float = 0.05, class_names: tuple[str, str] = ("negative", "positive")
) -> dict:
    """Confusion matrix and clinical metrics at one operating point.

    Args:
        y_true: 0/1 labels (1 = positive class).
        y_score: positive-class scores; a case is called positive when ``score >= threshold``.
        threshold: the operating threshold (finite, or +/-inf for all-negative/all-positive).
        alpha: 1 - confidence level for every interval (Wilson for proportions, log method
            for likelihood ratios).
        class_names: names of class 0 and class 1, used as keys of ``per_class_accuracy``.

    Returns:
        dict with ``threshold``, ``n``, ``n_pos``, ``n_neg``, ``confusion`` (tp, fp, tn, fn),
        proportions ``accuracy``, ``sensitivity`` (recall of class 1), ``specificity``
        (recall of class 0), ``ppv``, ``npv`` each as ``{"value", "low", "high", "k", "n"}``;
        ``per_class_accuracy`` ({class name: proportion}, the study's "individual class
        accuracy" = recall of each class); floats ``f1``, ``balanced_accuracy`` and the same
        with intervals as ``f1_ci`` (stratified bootstrap, 2000 resamples, seed 0) and
        ``balanced_accuracy_ci`` (MOVER-Wilson); and
        ``lr_pos``/``lr_neg`` as ``{"value", "low", "high"}``. Undefined entries (zero
        denominators) are NaN with :class:`UndefinedMetricWarning`.

    Raises:
        ValueError: bad labels/scores, NaN threshold, bad alpha.
    """
    alpha = check_alpha(alpha)
    c = confusion_counts(y_true, y_score, threshold=threshold)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    n_pos, n_neg = tp + fn, fp + tn
    n = n_pos + n_neg
    sens = proportion(tp, n_pos, alpha=alpha, name="sensitivity")
    spec = proportion(tn, n_neg, alpha=alpha, name="specificity")
    f1_den = 2 * tp + fp + fn
    if f1_den == 0:
        warn_undefined("f1: no positive cases and no positive calls; undefined (NaN)")
        f1 = float("nan")
    else:
        f1 = 2 * tp / f1_den
    lr_pos, lr_neg = likelihood_ratios(tp, fp, tn, fn, alpha=alpha)
    return {
        "threshold": float(threshold),
        "n": n,
        "n_pos": n_pos,
        "n_neg": n_neg,
        "confusion": c,
        "accuracy": proportion(tp + tn, n, alpha=alpha, name="accuracy"),
        "sensitivity": sens,
        "specificity": spec,
        "ppv": proportion(tp, tp + fp, alpha=alpha, name="ppv"),
        "npv": proportion(tn, tn + fn, alpha=alpha, name="npv"),
        "f1": f1,
        "balanced_accuracy": (sens["value"] + spec["value"]) / 2.0,
        "f1_ci": f1_ci(tp, fp, tn, fn, alpha=alpha)
        if f1_den
        else {"value": f1, "low": f1, "high": f1, "method": "stratified bootstrap"},
        "balanced_accuracy_ci": balanced_accuracy_ci(sens, spec),
        "per_class_accuracy": {str(class_names[0]): spec, str(class_names[1]): sens},
        "lr_pos": lr_pos,
        "lr_neg": lr_neg,
    }

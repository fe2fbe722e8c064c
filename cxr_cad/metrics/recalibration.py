"""Recalibration and threshold policies: pure functions over arrays (no I/O, no torch).

A model's score is recalibrated on its **positive-class log-odds** ``s = log(p / (1 - p))``
(for a two-class softmax ``s`` is the logit difference, so temperature scaling of the
logits is exactly ``sigmoid(s / T)``):

* **Platt** scaling: ``p' = sigmoid(a * s + b)``, ``a`` and ``b`` fitted by unpenalised
  logistic regression on ``s`` (scikit-learn ``LogisticRegression``);
* **temperature** scaling: ``p' = sigmoid(s / T)``, ``T > 0`` minimising the negative
  log-likelihood (``scipy.optimize.minimize_scalar`` over ``log T``).

Both are fitted to Platt's smoothed targets (Platt 1999): ``(N+ + 1) / (N+ + 2)`` for a
positive, ``1 / (N- + 2)`` for a negative, instead of 1 and 0 (as two weighted rows per image).
Without them a small, perfectly separated calibration set (25 site images often are) drives
the slope to infinity and every calibrated probability to exactly 0 or 1.

Both are monotone increasing in ``s`` when ``a > 0`` (temperature always; Platt whenever
the scores rank the classes better than chance), so the AUC is unchanged; what changes is
what the probabilities mean, and so where a probability cut-off such as 0.5 falls.

Log-odds are computed from probabilities clipped to ``[LOGIT_EPS, 1 - LOGIT_EPS]``
(:func:`log_odds`), the same clip the prediction engine applies, so a calibration fitted on
probabilities is applied identically to the model's logits.

Threshold policies (:func:`sensitivity_policy`, :func:`calibrated_policy`,
:func:`midpoint_policy`) return the threshold with the operating point it reaches on the data
it was chosen on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cxr_cad.errors import ConfigError
from cxr_cad.metrics._common import check_alpha, check_binary
from cxr_cad.metrics.operating import confusion_counts, threshold_for_sensitivity
from cxr_cad.metrics.proportions import wilson_ci

__all__ = [
    "CALIBRATION_KINDS",
    "LOGIT_EPS",
    "Calibration",
    "apply_calibration",
    "calibrated_policy",
    "fit_calibration",
    "fit_platt",
    "fit_temperature",
    "log_loss",
    "log_odds",
    "sensitivity_policy",
    "smoothed_targets",
]

#: Probabilities are clipped to [LOGIT_EPS, 1 - LOGIT_EPS] before taking log-odds (|s| <= 27.7):
#: small enough that float32 softmax outputs keep their order (ties only below 1e-12).
LOGIT_EPS = 1e-12
CALIBRATION_KINDS = ("platt", "temperature")
_T_BOUNDS = (-7.0, 7.0)  # log T: T in [1e-3, 1e3]


def log_odds(p: Any) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities clipped to ``[LOGIT_EPS, 1 - LOGIT_EPS]`` (float64)."""
    q = np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(q) - np.log1p(-q)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def log_loss(y_true: Any, p: Any) -> float:
    """Mean negative log-likelihood of 0/1 labels under probabilities ``p`` (clipped like :func:`log_odds`)."""
    y, q = check_binary(y_true, p, name="p", probabilities=True)
    q = np.clip(q, LOGIT_EPS, 1.0 - LOGIT_EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q))) if y.size else float("nan")


@dataclass(frozen=True)
class Calibration:
    """A fitted recalibration ``p' = sigmoid(a * s + b)`` of the positive-class log-odds ``s``.

    Attributes:
        kind: ``platt`` or ``temperature`` (then ``a = 1 / temperature``, ``b = 0``).
        a, b: slope and intercept on the log-odds scale.
        temperature: ``1 / a`` for temperature scaling, else None.
        n, n_positive: the data it was fitted on.
        nll_before, nll_after: mean negative log-likelihood there before and after.
    """

    kind: str
    a: float
    b: float
    temperature: float | None
    n: int
    n_positive: int
    nll_before: float
    nll_after: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """The calibration stored in a bundle (ValueError when it is not a usable one)."""
        try:
            kind, a, b = str(d["kind"]), float(d["a"]), float(d["b"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"calibration record {d!r} lacks kind/a/b: {exc}") from exc
        if kind not in CALIBRATION_KINDS or not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
            raise ValueError(f"calibration record {d!r}: kind must be one of {CALIBRATION_KINDS} and a > 0 finite")
        t = d.get("temperature")
        return cls(
            kind=kind,
            a=a,
            b=b,
            temperature=None if t is None else float(t),
            n=int(d.get("n", 0)),
            n_positive=int(d.get("n_positive", 0)),
            nll_before=float(d.get("nll_before", float("nan"))),
            nll_after=float(d.get("nll_after", float("nan"))),
        )

    def apply_log_odds(self, s: Any) -> np.ndarray:
        """Calibrated probabilities of log-odds ``s`` (already clipped)."""
        return _sigmoid(self.a * np.asarray(s, dtype=np.float64) + self.b)

    def __call__(self, p: Any) -> np.ndarray:
        """Calibrated probabilities of raw probabilities ``p``."""
        return self.apply_log_odds(log_odds(p))


def _fit_input(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, log-odds, Platt's smoothed targets)."""
    y, p = check_binary(y_true, y_prob, name="y_prob", probabilities=True)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(f"a calibration needs both classes; got {n_pos} positive of {y.size}")
    n_neg = y.size - n_pos
    target = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    return y, log_odds(p), target


def smoothed_targets(y_true: Any) -> np.ndarray:
    """Platt's targets of 0/1 labels: ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``."""
    y = np.asarray(y_true)
    n_pos = int(y.sum())
    return np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (y.size - n_pos + 2))


def fit_platt(y_true: Any, y_prob: Any) -> Calibration:
    """Platt scaling of raw probabilities ``y_prob``: unpenalised logistic regression of
    the smoothed targets of ``y_true`` on their log-odds. ValueError with one class, or when the fitted slope is not
    positive (scores that rank the classes no better than chance cannot be recalibrated
    monotonically)."""
    from sklearn.linear_model import LogisticRegression

    y, s, t = _fit_input(y_true, y_prob)
    lr = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=10_000, tol=1e-10)  # C = inf: unpenalised
    # soft targets as two weighted rows per image: weight t labelled 1, weight 1 - t labelled 0
    lr.fit(np.r_[s, s][:, None], np.r_[np.ones_like(y), np.zeros_like(y)], sample_weight=np.r_[t, 1 - t])
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if not (a > 0 and math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"Platt scaling slope {a:.4g} is not positive: the scores do not rank these classes")
    return Calibration(
        kind="platt",
        a=a,
        b=b,
        temperature=None,
        n=int(y.size),
        n_positive=int(y.sum()),
        nll_before=log_loss(y, _sigmoid(s)),
        nll_after=log_loss(y, _sigmoid(a * s + b)),
    )


def fit_temperature(y_true: Any, y_prob: Any) -> Calibration:
    """Temperature scaling of raw probabilities: ``T`` minimising the cross-entropy of the
    smoothed targets under ``sigmoid(s / T)`` (bounded scalar minimisation over ``log T`` in [-7, 7])."""
    from scipy.optimize import minimize_scalar

    y, s, target = _fit_input(y_true, y_prob)

    def nll(log_t: float) -> float:
        z = s * math.exp(-log_t)
        return float(np.mean(np.logaddexp(0.0, z) - target * z))

    res = minimize_scalar(nll, bounds=_T_BOUNDS, method="bounded", options={"xatol": 1e-9})
    t = float(math.exp(res.x))
    return Calibration(
        kind="temperature",
        a=1.0 / t,
        b=0.0,
        temperature=t,
        n=int(y.size),
        n_positive=int(y.sum()),
        nll_before=log_loss(y, _sigmoid(s)),
        nll_after=log_loss(y, _sigmoid(s / t)),
    )


def fit_calibration(y_true: Any, y_prob: Any, kind: str = "platt") -> Calibration:
    """:func:`fit_platt` or :func:`fit_temperature` by name (ConfigError for another ``kind``)."""
    if kind == "platt":
        return fit_platt(y_true, y_prob)
    if kind == "temperature":
        return fit_temperature(y_true, y_prob)
    raise ConfigError(f"calibration must be one of {', '.join(CALIBRATION_KINDS)}, not {kind!r}")


def apply_calibration(y_prob: Any, calibration: Calibration | dict[str, Any] | None) -> np.ndarray:
    """Calibrated probabilities of raw probabilities ``y_prob`` (unchanged copy for None)."""
    p = np.asarray(y_prob, dtype=np.float64)
    if calibration is None:
        return p.copy()
    cal = calibration if isinstance(calibration, Calibration) else Calibration.from_dict(calibration)
    return cal(p)


def _sensitivity_record(y: np.ndarray, s: np.ndarray, threshold: float, alpha: float) -> dict[str, Any]:
    c = confusion_counts(y, s, threshold=threshold)
    n_pos, n_neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    sens_ci = wilson_ci(c["tp"], n_pos, alpha=alpha)
    spec_ci = wilson_ci(c["tn"], n_neg, alpha=alpha)
    return {
        "achieved_sensitivity": c["tp"] / n_pos,
        "sensitivity_ci": [sens_ci[0], sens_ci[1]],
        "achieved_specificity": c["tn"] / n_neg,
        "specificity_ci": [spec_ci[0], spec_ci[1]],
        "confusion": c,
        "alpha": alpha,
    }


def sensitivity_policy(y_true: Any, y_score: Any, target: float, *, alpha: float = 0.05) -> dict[str, Any]:
    """The highest threshold reaching ``target`` sensitivity on this data, with what it
    reaches there: ``{"threshold", "target", "achieved_sensitivity", "sensitivity_ci" (Wilson),
    "achieved_specificity", "specificity_ci", "confusion", "alpha"}``. ValueError with one class."""
    alpha = check_alpha(alpha)
    y, s = check_binary(y_true, y_score)
    if int(y.sum()) in (0, y.size):
        raise ValueError("a sensitivity threshold needs both classes")
    thr = threshold_for_sensitivity(y, s, target)
    return {"threshold": float(thr), "target": float(target), **_sensitivity_record(y, s, thr, alpha)}


def calibrated_policy(
    y_true: Any, y_prob: Any, *, kind: str = "platt", cutoff: float = 0.5, alpha: float = 0.05
) -> dict[str, Any]:
    """Fit a calibration (:func:`fit_calibration`) on raw probabilities, then the cut-off
    ``cutoff`` on the calibrated scale: ``{"threshold": cutoff, "calibration": dict,
    "raw_threshold"`` (the raw probability the cut-off corresponds to), ``"achieved_sensitivity"``,
    ... as :func:`sensitivity_policy`}. ValueError with one class."""
    alpha = check_alpha(alpha)
    cutoff = float(cutoff)
    if not 0.0 < cutoff < 1.0:
        raise ConfigError(f"the calibrated cut-off must be in (0, 1); got {cutoff}")
    cal = fit_calibration(y_true, y_prob, kind)
    y, p = check_binary(y_true, y_prob, name="y_prob", probabilities=True)
    calibrated = cal(p)
    s_cut = (math.log(cutoff / (1 - cutoff)) - cal.b) / cal.a
    return {
        "threshold": cutoff,
        "calibration": cal.to_dict(),
        "raw_threshold": float(_sigmoid(np.array([s_cut]))[0]),
        **_sensitivity_record(y, calibrated, cutoff, alpha),
    }


def midpoint_policy(y_true: Any, y_prob: Any, *, alpha: float = 0.05) -> dict[str, Any]:
    """The threshold halfway, on the log-odds scale, between the median validation score of
    the negatives and that of the positives: ``{"threshold", "class_medians"`` (negative,
    positive; probabilities), ``"achieved_sensitivity"``, ... as :func:`sensitivity_policy`}.

    Hand-written (no library offers it): it is the equal-prior decision point of two classes
    described by their centres, as a nearest-centroid classifier on the log-odds would place
    it. Youden's J and a sensitivity target put the threshold at the edge of one class's
    validation scores; when validation separates the classes almost perfectly, that edge is
    where a shifted test population's negatives pile up (docs/generalisation.md#thresholds).
    The midpoint keeps the largest margin from both classes. ValueError with one class.
    """
    alpha = check_alpha(alpha)
    y, p = check_binary(y_true, y_prob, name="y_prob", probabilities=True)
    if int(y.sum()) in (0, y.size):
        raise ValueError("a midpoint threshold needs both classes")
    s = log_odds(p)
    neg, pos = float(np.median(s[y == 0])), float(np.median(s[y == 1]))
    thr = float(_sigmoid(np.array([(neg + pos) / 2.0]))[0])
    medians = [float(_sigmoid(np.array([v]))[0]) for v in (neg, pos)]
    return {"threshold": thr, "class_medians": medians, **_sensitivity_record(y, p, thr, alpha)}

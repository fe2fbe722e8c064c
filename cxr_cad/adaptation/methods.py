"""The site-adaptation ladder, cheapest first, on the parent's cached scores of the site rows
(:class:`cxr_cad.inference.features.FeatureScores`): each method returns an :class:`Adapted`
(the child's threshold, its threshold record, its calibration or new head) that can turn any
cached parent scores into the child's probabilities (:meth:`Adapted.probabilities`), exactly
what the saved child bundle gives (docs/adaptation.md).

* ``threshold``: the parent's threshold policy re-run on the site rows (on the parent's own
  output probabilities; a ``calibrated`` or ``fixed`` parent policy becomes Youden);
* ``recalibrate``: Platt or temperature scaling of the raw log-odds fitted on the site rows
  (replacing any calibration of the parent), then the cut-off (default 0.5) on that scale;
* ``head``: the final linear layer refitted by L2 logistic regression on the penultimate
  features (standardised) plus the parent's own log-odds (itself linear in the features, so
  the result is still one linear layer, folded back into the head's weights); the penalty
  is chosen by patient-grouped cross-validation on the site rows, and the threshold policy
  runs on the out-of-fold probabilities (an in-sample threshold would be optimistic).

``finetune`` trains the network itself and lives in :mod:`cxr_cad.api._adapt`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr_cad.config import ThresholdConfig
from cxr_cad.errors import UsageError
from cxr_cad.metrics import Calibration
from cxr_cad.training.threshold import choose_threshold, selection_params

__all__ = ["METHODS", "Adapted", "adapt_head", "adapt_recalibrate", "adapt_threshold", "parent_policy"]

#: The ladder, cheapest first.
METHODS = ("threshold", "recalibrate", "head", "finetune")
#: Inverse L2 strengths tried by the head refit's grouped cross-validation.
HEAD_C_GRID = tuple(float(c) for c in np.logspace(-4, 1, 11))


@dataclass
class Adapted:
    """What one adaptation method chose.

    Attributes:
        method: the ladder step (``threshold``, ``recalibrate``, ``head``).
        threshold: the child's decision threshold (on its output probability).
        policy: the threshold method recorded in the child (``youden``, ``sensitivity``, ``midpoint``, ``calibrated``, ``fixed``).
        params: the child's ``threshold_selection.params`` (with ``calibration`` when it has one).
        detail: everything the policy reported on the site rows.
        calibration: applied to the raw probability (None: none).
        head: per network, ``(w, b)`` of the new positive-minus-negative logit; None: the parent's head.
        site_probability: the child's probabilities of the site rows the threshold was chosen on
            (out-of-fold for ``head``).
        fit: what the fit chose (the head's ``C``, its cross-validated log loss, ...).
    """

    method: str
    threshold: float
    policy: str
    params: dict[str, Any]
    detail: dict[str, Any]
    calibration: Calibration | None = None
    head: list[tuple[np.ndarray, float]] | None = None
    site_probability: np.ndarray | None = None
    fit: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, raw_probability: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The child's output probabilities from the parent's cached raw probabilities and
        features ``(n, members, views, d)``."""
        if self.head is not None:
            return head_probability(self.head, features)
        p = np.asarray(raw_probability, dtype=np.float64)
        return p.copy() if self.calibration is None else self.calibration(p)


def parent_policy(selection: dict[str, Any]) -> ThresholdConfig:
    """The threshold config of a bundle's ``threshold_selection`` (its policy and parameters)."""
    method = str(selection.get("method", "youden"))
    params = selection.get("params") or {}
    values: dict[str, Any] = {
        "method": method if method in ("youden", "sensitivity", "midpoint", "calibrated") else "youden"
    }
    if "target" in params:
        values["target_sensitivity"] = float(params["target"])
    cal = params.get("calibration") or {}
    if cal.get("kind") in ("platt", "temperature"):
        values["calibration"] = cal["kind"]
    if "cutoff" in params:
        values["cutoff"] = float(params["cutoff"])
    return ThresholdConfig(**values)


def _choose(y: np.ndarray, p: np.ndarray, cfg: ThresholdConfig) -> tuple[float, str, dict[str, Any], dict[str, Any]]:
    thr, method, detail = choose_threshold(y, p, cfg)
    return thr, method, detail, selection_params(method, thr, detail)


def _check_site(y: np.ndarray) -> None:
    n_pos = int(np.sum(y))
    if n_pos == 0 or n_pos == len(y):
        raise UsageError(f"the site rows hold one class only ({n_pos} positive of {len(y)}); adaptation needs both")


def adapt_threshold(
    y: np.ndarray, raw_probability: np.ndarray, policy: ThresholdConfig, parent_calibration: Calibration | None
) -> Adapted:
    """Re-choose the threshold by ``policy`` (``calibrated``/``fixed`` -> ``youden``) on the
    parent's output probabilities of the site rows; the parent's calibration is kept."""
    _check_site(y)
    p = np.asarray(raw_probability, np.float64)
    out = p if parent_calibration is None else parent_calibration(p)
    if policy.method not in ("youden", "sensitivity", "midpoint"):
        policy = policy.replace(method="youden")
    thr, method, detail, params = _choose(y, out, policy)
    if parent_calibration is not None:
        params["calibration"] = parent_calibration.to_dict()
    return Adapted("threshold", thr, method, params, detail, calibration=parent_calibration, site_probability=out)


def adapt_recalibrate(
    y: np.ndarray, raw_probability: np.ndarray, *, kind: str = "platt", cutoff: float = 0.5
) -> Adapted:
    """Fit ``kind`` calibration of the raw log-odds on the site rows; threshold ``cutoff`` on its scale."""
    _check_site(y)
    cfg = ThresholdConfig(method="calibrated", calibration=kind, cutoff=cutoff)
    thr, method, detail, params = _choose(y, np.asarray(raw_probability, np.float64), cfg)
    if method != "calibrated":
        raise UsageError(f"recalibration on the site rows failed: {detail.get('reason')}")
    cal = Calibration.from_dict(params["calibration"])
    return Adapted("recalibrate", thr, method, params, detail, calibration=cal, site_probability=cal(raw_probability))


def _head_logits(features: np.ndarray, logits: np.ndarray, positive_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Per member: design matrix rows (n * views, d + 1) = features + the parent's log-odds."""
    n, m, v, _ = features.shape
    others = [k for k in range(logits.shape[-1]) if k != positive_index]
    if len(others) != 1:
        raise UsageError("--method head refits a two-class head; this model has more classes")
    parent = logits[..., positive_index].astype(np.float64) - logits[..., others[0]].astype(np.float64)
    return features, parent


def head_probability(head: list[tuple[np.ndarray, float]], features: np.ndarray) -> np.ndarray:
    """Mean over members and views of ``sigmoid(w . x + b)`` (what the refitted bundle outputs)."""
    total = np.zeros(features.shape[0])
    count = 0
    for m, (w, b) in enumerate(head):
        for v in range(features.shape[2]):
            z = features[:, m, v, :].astype(np.float64) @ w + b
            total += np.exp(-np.logaddexp(0.0, -z))
            count += 1
    return total / count


def _grouped_folds(y: np.ndarray, groups: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = min(len(set(groups[y == c])) for c in (0, 1))
    k = min(5, per_class)
    if k < 2:
        raise UsageError("--method head needs at least 2 patients of each class among the site rows")
    return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups))


def _fit_lr(x: np.ndarray, y: np.ndarray, weight: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """L2 logistic regression on standardised ``x``; returns ``(w, b)`` on the original scale."""
    from sklearn.linear_model import LogisticRegression

    mu = np.average(x, axis=0, weights=weight)
    sd = np.sqrt(np.average((x - mu) ** 2, axis=0, weights=weight))
    sd[sd < 1e-8] = 1.0
    lr = LogisticRegression(C=c, max_iter=5000, tol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter at the weakest penalties
        lr.fit((x - mu) / sd, y, sample_weight=weight)
    w = lr.coef_[0] / sd
    return w, float(lr.intercept_[0] - w @ mu)


def _member_design(features: np.ndarray, parent: np.ndarray, m: int) -> np.ndarray:
    """(n, views, d + 1): member ``m``'s features and its parent log-odds."""
    return np.concatenate([features[:, m].astype(np.float64), parent[:, m, :, None]], axis=-1)


def _fit_members(design: list[np.ndarray], y: np.ndarray, rows: np.ndarray, c: float) -> list[tuple[np.ndarray, float]]:
    fits = []
    for d in design:
        n, v, k = d[rows].shape
        x = d[rows].reshape(n * v, k)
        fits.append(_fit_lr(x, np.repeat(y[rows], v), np.full(n * v, 1.0 / v), c))
    return fits


def _design_probability(fits: list[tuple[np.ndarray, float]], design: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    total = np.zeros(len(rows))
    for (w, b), d in zip(fits, design):
        z = d[rows] @ w + b  # (n, views)
        total += np.exp(-np.logaddexp(0.0, -z)).mean(axis=1)
    return total / len(fits)


def adapt_head(
    y: np.ndarray,
    groups: np.ndarray,
    features: np.ndarray,
    logits: np.ndarray,
    positive_index: int,
    parent_head: list[tuple[np.ndarray, float]],
    policy: ThresholdConfig,
    *,
    seed: int = 0,
) -> Adapted:
    """Refit the head on the site rows (module docstring); ``parent_head``: per member the
    parent's ``(w, b)`` of the positive-minus-negative logit (to fold the log-odds column back)."""
    _check_site(y)
    y = np.asarray(y, np.int64)
    groups = np.asarray(groups).astype(str)
    feats, parent = _head_logits(features, logits, positive_index)
    design = [_member_design(feats, parent, m) for m in range(feats.shape[1])]
    folds = _grouped_folds(y, groups, seed)
    scores = []
    for c in HEAD_C_GRID:
        oof = np.zeros(len(y))
        for train, test in folds:
            oof[test] = _design_probability(_fit_members(design, y, train, c), design, test)
        q = np.clip(oof, 1e-7, 1 - 1e-7)
        scores.append((float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q))), c, oof))
    best_loss, best_c, best_oof = min(scores, key=lambda t: t[0])
    fits = _fit_members(design, y, np.arange(len(y)), best_c)
    head = []
    for (w, b), (pw, pb) in zip(fits, parent_head):  # log-odds column folded back into the features
        head.append((w[:-1] + w[-1] * pw, float(b + w[-1] * pb)))
    if policy.method not in ("youden", "sensitivity", "midpoint"):
        policy = policy.replace(method="youden")  # the refitted head is already calibrated to the site
    thr, method, detail, params = _choose(y, best_oof, policy)
    fit = {
        "C": best_c,
        "cv_log_loss": best_loss,
        "cv_folds": len(folds),
        "c_grid": list(HEAD_C_GRID),
        "cv_log_loss_by_c": [s[0] for s in scores],
        "parent_log_odds_weight": [float(w[-1]) for w, _ in fits],
    }
    detail["threshold_chosen_on"] = "out-of-fold probabilities of the site rows"
    return Adapted("head", thr, method, params, detail, head=head, site_probability=best_oof, fit=fit)

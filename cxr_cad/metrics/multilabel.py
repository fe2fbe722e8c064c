"""Multi-label (one sigmoid per finding) evaluation: per-finding ROC AUC with DeLong intervals,
sensitivity and specificity at each finding's threshold, macro and micro averages, small-sample
flags, label co-occurrence and a patient-cluster bootstrap per finding.

Conventions: ``y`` is an ``(n, K)`` matrix of 1 (present), 0 (absent) and -1 (unknown: left
out of that finding's statistics); ``scores`` the ``(n, K)`` sigmoid probabilities;
``thresholds`` one per finding (a case is positive when ``score >= threshold``).

A finding with fewer than ``min_positives`` positives (or negatives) among its known labels is
**flagged** (``"small_sample": true``) and its AUC, CI, sensitivity and specificity are reported
as null, not as numbers; it is left out of the macro average. The micro average pools every
known (image, finding) pair of the findings that are not flagged.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from cxr_cad.metrics._common import UndefinedMetricWarning
from cxr_cad.metrics.cluster import cluster_bootstrap
from cxr_cad.metrics.delong import delong_auc_ci
from cxr_cad.metrics.proportions import proportion
from cxr_cad.metrics.roc import roc_auc

__all__ = ["MIN_POSITIVES", "check_multilabel", "cooccurrence", "mean_auc", "multilabel_summary", "per_finding"]

#: Default fewest positives (and negatives) a finding needs for its numbers to be reported.
MIN_POSITIVES = 5

_NAN = float("nan")


def check_multilabel(y, scores) -> tuple[np.ndarray, np.ndarray]:
    """``(y int8 (n, K), scores float64 (n, K))``; ValueError for other shapes or values."""
    y = np.asarray(y)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"y and scores must be (n, K) matrices of one shape (got {y.shape} and {s.shape})")
    if not np.isin(y, (-1, 0, 1)).all():
        raise ValueError("y holds values other than 1, 0 and -1 (unknown)")
    if np.isnan(s[y >= 0]).any():
        raise ValueError("scores hold NaN where the label is known")
    return y.astype(np.int8), s


def mean_auc(y, scores, *, min_positives: int = MIN_POSITIVES) -> tuple[float, list[int]]:
    """Mean ROC AUC over findings with at least ``min_positives`` positives and negatives among
    their known labels (the model-selection criterion); ``(mean, finding indices used)``.
    NaN (no warning) when no finding qualifies."""
    y, s = check_multilabel(y, scores)
    aucs, used = [], []
    for k in range(y.shape[1]):
        known = y[:, k] >= 0
        n_pos = int((y[known, k] == 1).sum())
        if n_pos >= min_positives and int(known.sum()) - n_pos >= min_positives:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                a = roc_auc(y[known, k], s[known, k])
            if math.isfinite(a):
                aucs.append(a)
                used.append(k)
    return (float(np.mean(aucs)) if aucs else _NAN), used


def _finding_row(
    name: str,
    y: np.ndarray,
    s: np.ndarray,
    threshold: float,
    groups: np.ndarray | None,
    *,
    min_positives: int,
    alpha: float,
    n_bootstrap: int,
    seed: int,
) -> dict:
    known = y >= 0
    yk, sk = y[known].astype(np.int64), s[known]
    n_pos = int(yk.sum())
    n_neg = int(yk.size - n_pos)
    row: dict = {
        "finding": name,
        "n": int(yk.size),
        "n_unknown": int((~known).sum()),
        "n_positive": n_pos,
        "n_negative": n_neg,
        "prevalence": n_pos / yk.size if yk.size else _NAN,
        "threshold": float(threshold),
        "small_sample": n_pos < min_positives or n_neg < min_positives,
        "auc": _NAN,
        "auc_low": _NAN,
        "auc_high": _NAN,
        "auc_se": _NAN,
        "sensitivity": None,
        "specificity": None,
        "positive_calls": int((sk >= threshold).sum()) if math.isfinite(threshold) else None,
        "cluster_bootstrap": None,
    }
    if row["small_sample"]:
        row["note"] = f"fewer than {min_positives} positive or negative images: not reported"
        return row
    ci = delong_auc_ci(yk, sk, alpha=alpha, interval="logit")
    row.update(auc=ci.auc, auc_low=ci.low, auc_high=ci.high, auc_se=ci.se)
    if math.isfinite(threshold):
        pred = sk >= threshold
        row["sensitivity"] = proportion(int((pred & (yk == 1)).sum()), n_pos, alpha=alpha, name="sensitivity")
        row["specificity"] = proportion(int((~pred & (yk == 0)).sum()), n_neg, alpha=alpha, name="specificity")
    if groups is not None and n_bootstrap > 0:
        row["cluster_bootstrap"] = cluster_bootstrap(
            yk,
            sk,
            groups[known],
            threshold=threshold if math.isfinite(threshold) else None,
            n_resamples=n_bootstrap,
            seed=seed,
            alpha=alpha,
        )
    return row


def per_finding(
    y,
    scores,
    findings: Sequence[str],
    thresholds: Sequence[float],
    *,
    groups=None,
    min_positives: int = MIN_POSITIVES,
    alpha: float = 0.05,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> list[dict]:
    """One dict per finding: counts, prevalence, DeLong AUC with its logit interval, sensitivity
    and specificity (Wilson intervals) at the finding's threshold, the small-sample flag and,
    with ``groups`` and ``n_bootstrap`` > 0, the patient-cluster bootstrap intervals."""
    y, s = check_multilabel(y, scores)
    if len(findings) != y.shape[1] or len(thresholds) != y.shape[1]:
        raise ValueError(f"{y.shape[1]} columns but {len(findings)} findings and {len(thresholds)} thresholds")
    g = None if groups is None else np.asarray(groups).astype(str)
    return [
        _finding_row(
            str(f),
            y[:, k],
            s[:, k],
            float(thresholds[k]),
            g,
            min_positives=min_positives,
            alpha=alpha,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        for k, f in enumerate(findings)
    ]


def cooccurrence(y, findings: Sequence[str]) -> dict:
    """Label co-occurrence: ``counts[i][j]`` images where findings i and j are both present
    (diagonal: images with finding i), ``n_images_by_count`` images by number of present findings."""
    y = np.asarray(y)
    pos = (y == 1).astype(np.int64)
    counts = pos.T @ pos
    by_count = np.bincount(pos.sum(axis=1), minlength=len(findings) + 1)
    return {
        "findings": [str(f) for f in findings],
        "counts": counts.tolist(),
        "n_images_by_count": {str(i): int(c) for i, c in enumerate(by_count) if c},
    }


def multilabel_summary(
    y,
    scores,
    findings: Sequence[str],
    thresholds: Sequence[float],
    *,
    groups=None,
    min_positives: int = MIN_POSITIVES,
    alpha: float = 0.05,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict:
    """Everything a multi-label report shows: ``per_finding`` (:func:`per_finding`), ``macro``
    (mean and SD of the reported AUCs, their number), ``micro`` (AUC with DeLong interval over
    pooled known pairs of reported findings, and sensitivity/specificity at each finding's own
    threshold), ``flagged`` (findings not reported), ``cooccurrence``, ``n_images``."""
    y, s = check_multilabel(y, scores)
    rows = per_finding(
        y,
        s,
        findings,
        thresholds,
        groups=groups,
        min_positives=min_positives,
        alpha=alpha,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    reported = [k for k, r in enumerate(rows) if not r["small_sample"]]
    aucs = np.array([rows[k]["auc"] for k in reported], dtype=np.float64)
    macro = {
        "auc": float(aucs.mean()) if aucs.size else _NAN,
        "auc_sd": float(aucs.std(ddof=1)) if aucs.size > 1 else _NAN,
        "n_findings": int(aucs.size),
    }
    micro: dict = {"auc": _NAN, "auc_low": _NAN, "auc_high": _NAN, "n_pairs": 0}
    if reported:
        cols = np.array(reported)
        yk, sk = y[:, cols], s[:, cols]
        known = yk >= 0
        yy, ss = yk[known].astype(np.int64), sk[known]
        ci = delong_auc_ci(yy, ss, alpha=alpha, interval="logit")
        thr = np.broadcast_to(np.array([rows[k]["threshold"] for k in reported]), yk.shape)[known]
        pred = ss >= thr
        micro = {
            "auc": ci.auc,
            "auc_low": ci.low,
            "auc_high": ci.high,
            "n_pairs": int(yy.size),
            "sensitivity": proportion(int((pred & (yy == 1)).sum()), int(yy.sum()), alpha=alpha, name="sensitivity"),
            "specificity": proportion(
                int((~pred & (yy == 0)).sum()), int((yy == 0).sum()), alpha=alpha, name="specificity"
            ),
        }
    return {
        "task": "multilabel",
        "n_images": int(y.shape[0]),
        "min_positives": int(min_positives),
        "alpha": float(alpha),
        "per_finding": rows,
        "macro": macro,
        "micro": micro,
        "flagged": [r["finding"] for r in rows if r["small_sample"]],
        "cooccurrence": cooccurrence(y, findings),
    }

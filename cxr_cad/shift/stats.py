"""The shift score's statistics: the training-data summary, image scores and the cohort rule.

Pure numpy/scipy/scikit-learn, no torch and no I/O; :mod:`cxr_cad.shift.monitor` (which
re-exports every public name here) adds the feature hook and the training-time summary.
The method and its reasons are in docs/shift.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SUMMARY_KEY = "shift"  # key under the bundle's ``extra``
SUMMARY_FORMAT = 1
SHIFT_FILE = "shift.json"  # cohort result written next to predictions.csv
IMAGE_QUANTILE = 0.99  # an image beyond this reference quantile is flagged
IMAGE_LIMIT = 1.0  # shift_score = distance / reference q99; flagged above this
EXPECTED_RATE = 1.0 - IMAGE_QUANTILE
MIN_COHORT_FRACTION = 0.05  # a cohort needs >= 5x the expected rate of flagged images ...
COHORT_ALPHA = 0.001  # ... and a binomial tail probability below this under p = 1%
MAX_COMPONENTS = 64
REF_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
EMPIRICAL_MIN = 300  # reference distances needed for empirical quantiles
META_MIN = 20  # ages/views known for at least this many training images
SIZE_FACTOR = 2.0  # stored shorter side this many times below/above the training range: a size never seen


def _pca(x: np.ndarray, k: int):
    from sklearn.decomposition import PCA

    return PCA(n_components=k, svd_solver="full").fit(x)


def _n_components(n: int, d: int) -> int:
    return int(max(1, min(MAX_COMPONENTS, d - 1, n // 5)))


def _distances(mean, components, variances, noise, x: np.ndarray) -> np.ndarray:
    """Mahalanobis distance under the PPCA covariance ``W diag(var) W^T + noise * (I - W W^T)``.

    Same quadratic form as scikit-learn's ``PCA.get_precision()`` (hand-written so the bundle
    stores only ``k x d`` numbers and no pickled estimator).
    """
    c = np.asarray(x, np.float64) - np.asarray(mean, np.float64)
    w = np.asarray(components, np.float64)
    z = c @ w.T
    inside = (z**2 / np.asarray(variances, np.float64)).sum(1)
    rest = np.maximum((c**2).sum(1) - (z**2).sum(1), 0.0) / float(noise)
    return np.sqrt(inside + rest)


def _fit(x: np.ndarray) -> dict:
    k = _n_components(*x.shape)
    p = _pca(x, k)
    noise = float(p.noise_variance_) if p.noise_variance_ > 0 else float(p.explained_variance_[-1]) * 1e-3
    return {
        "mean": p.mean_,
        "components": p.components_,
        "variances": np.maximum(p.explained_variance_, 1e-12),
        "noise": max(noise, 1e-12),
    }


def _crossfit_distances(x: np.ndarray, groups: Sequence | None, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each row's distance under a PPCA fitted without its fold (folds grouped by patient)."""
    from sklearn.model_selection import GroupKFold

    n = len(x)
    g = np.arange(n) if groups is None else np.asarray([str(v) for v in groups])
    n_folds = min(n_folds, len(np.unique(g)))
    out = np.full(n, np.nan)
    if n_folds < 2:
        return out
    order = np.random.default_rng(seed).permutation(n)  # GroupKFold is deterministic in group sizes
    for fit_idx, held in GroupKFold(n_splits=n_folds).split(x[order], groups=g[order]):
        fit_idx, held = order[fit_idx], order[held]
        m = _fit(x[fit_idx])
        out[held] = _distances(m["mean"], m["components"], m["variances"], m["noise"], x[held])
    return out


def _lognormal_quantiles(d: np.ndarray) -> np.ndarray:
    """:data:`REF_QUANTILES` of a log-normal fitted to the median and 90th percentile of ``d``.

    With fewer than :data:`EMPIRICAL_MIN` reference distances the empirical 99th percentile is
    one or two extreme values (measured on the 100-image sample: q99 = 3x q95); the body of
    the distribution is estimated well and extrapolated instead.
    """
    from scipy.stats import norm

    lo, hi = np.log(np.quantile(d, [0.5, 0.9]))
    sigma = max((hi - lo) / norm.ppf(0.9), 1e-6)
    return np.exp(lo + sigma * norm.ppf(REF_QUANTILES))


def _age_summary(ages: Iterable | None) -> dict | None:
    if ages is None:
        return None
    a = np.asarray(_floats(ages), np.float64)
    a = a[np.isfinite(a)]
    if len(a) < META_MIN:
        return None
    q = np.quantile(a, [0.005, 0.5, 0.995])
    return {"n": int(len(a)), "low": float(q[0]), "median": float(q[1]), "high": float(q[2])}


def _floats(values: Iterable) -> list[float]:
    """Floats from strings/numbers; blanks and junk become NaN."""
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def _size_summary(sizes: tuple[Iterable, Iterable] | None) -> dict | None:
    """The stored pixel size of the training images: 0.5/50/99.5% quantiles of the shorter side.

    Downscaled or re-encoded copies of a collection (e.g. a public 224x224 release) differ from
    the training images in sharpness, noise and compression, which the network's features do not
    necessarily expose (docs/generalisation.md); their stored size does."""
    if sizes is None:
        return None
    rows, cols = (np.asarray(_floats(v), np.float64) for v in sizes)
    short = np.fmin(rows, cols)
    short = short[np.isfinite(short) & (short > 0)]
    if len(short) < META_MIN:
        return None
    q = np.quantile(short, [0.005, 0.5, 0.995])
    return {"n": int(len(short)), "low": float(q[0]), "median": float(q[1]), "high": float(q[2])}


def _view_summary(views: Iterable | None) -> dict | None:
    if views is None:
        return None
    known = [str(v).strip().upper() for v in views if v is not None and str(v).strip() not in ("", "nan")]
    if len(known) < META_MIN:
        return None
    vals, counts = np.unique(known, return_counts=True)
    return {"n": len(known), "counts": {str(v): int(c) for v, c in zip(vals, counts)}}


def fit_summary(
    train_features: np.ndarray,
    reference_features: np.ndarray | None = None,
    *,
    train_groups: Sequence | None = None,
    ages: Iterable | None = None,
    views: Iterable | None = None,
    sizes: tuple[Iterable, Iterable] | None = None,
) -> dict:
    """The bundle's training-data summary (plain types; :data:`SUMMARY_FORMAT`).

    ``train_features``: penultimate features of the training images (eval chain, final
    weights); the PPCA model is fitted on them. ``reference_features``: images of the same
    source the PPCA does not see (the validation split); their distances, together with the
    training images' cross-fitted distances (folds grouped by ``train_groups``), give the
    reference quantiles. ``ages`` (years) / ``views`` (ViewPosition) of the training images,
    when known; ``sizes``: their stored (rows, columns). Raises ValueError with fewer than 10
    training images.
    """
    x = np.asarray(train_features, np.float64)
    if x.ndim != 2 or len(x) < 10:
        raise ValueError(f"the shift summary needs >= 10 training images' features, got shape {x.shape}")
    m = _fit(x)
    ref = [_crossfit_distances(x, train_groups)]
    n_val = 0
    if reference_features is not None and len(reference_features):
        r = np.asarray(reference_features, np.float64)
        ref.append(_distances(m["mean"], m["components"], m["variances"], m["noise"], r))
        n_val = len(r)
    d = np.concatenate(ref)
    d = d[np.isfinite(d)]
    if len(d) == 0:  # a single patient: nothing held out; in-sample distances (optimistic)
        d = _distances(m["mean"], m["components"], m["variances"], m["noise"], x)
    q = np.quantile(d, REF_QUANTILES)
    if len(d) < EMPIRICAL_MIN:  # too few points beyond the 99th percentile: log-normal extrapolation
        q = _lognormal_quantiles(d)
    f32 = lambda a: np.asarray(a, np.float32).tolist()  # noqa: E731 -- float32 precision is plenty
    return {
        "format": SUMMARY_FORMAT,
        "features": "penultimate (fc input)",
        "dim": int(x.shape[1]),
        "n_train": int(len(x)),
        "n_reference": int(len(d)),
        "n_validation": n_val,
        "reference": "validation images + cross-fitted training images" if n_val else "cross-fitted training images",
        "mean": f32(m["mean"]),
        "components": f32(m["components"]),
        "variances": f32(m["variances"]),
        "noise_variance": float(m["noise"]),
        "quantiles": {f"q{int(round(p * 1000)):03d}": float(v) for p, v in zip(REF_QUANTILES, q)},
        "quantile_method": "empirical" if len(d) >= EMPIRICAL_MIN else "log-normal fit to q50 and q90",
        "image_quantile": IMAGE_QUANTILE,
        "age_years": _age_summary(ages),
        "view": _view_summary(views),
        "stored_size": _size_summary(sizes),
    }


def summary_from_bundle(bundle: Any) -> dict | None:
    """The bundle's shift summary, or None for bundles written without one (or unreadable)."""
    meta = getattr(bundle, "meta", bundle) or {}
    s = (meta.get("extra") or {}).get(SUMMARY_KEY) if isinstance(meta, dict) else None
    if not isinstance(s, dict):
        return None
    if s.get("format") != SUMMARY_FORMAT or not all(
        k in s for k in ("mean", "components", "variances", "noise_variance", "quantiles")
    ):
        log.warning("the bundle's shift summary has an unknown format %r; no shift score", s.get("format"))
        return None
    return s


def image_distances(summary: dict, features: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each feature row under the summary's PPCA model."""
    return _distances(
        summary["mean"],
        summary["components"],
        summary["variances"],
        summary["noise_variance"],
        np.asarray(features, np.float64).reshape(len(features), -1),
    )


def image_scores(summary: dict, features: np.ndarray) -> np.ndarray:
    """``shift_score`` per image: distance / the reference 99th percentile (flagged above 1)."""
    return image_distances(summary, features) / float(summary["quantiles"]["q990"])


def min_flagged(n: int) -> int | None:
    """Smallest number of flagged images that flags a cohort of ``n`` (None: ``n`` is too small).

    Both must hold: the fraction exceeds :data:`MIN_COHORT_FRACTION` (5x the 1% expected of
    the training source; the margin absorbs the error of a 99th percentile estimated from a
    few hundred reference images), and so many flags would be this rare, P(X >= k) <
    :data:`COHORT_ALPHA` for X ~ Binomial(n, 1%), in a cohort from the training source.
    """
    from scipy.stats import binom

    if n < 1:
        return None
    k = max(int(math.floor(MIN_COHORT_FRACTION * n)) + 1, int(binom.isf(COHORT_ALPHA, n, EXPECTED_RATE)))
    while k <= n and binom.sf(k - 1, n, EXPECTED_RATE) >= COHORT_ALPHA:
        k += 1
    return k if k <= n else None


def _outside_age(summary: dict, ages: Iterable | None) -> tuple[int, int]:
    ref = summary.get("age_years")
    if not ref or ages is None:
        return 0, 0
    a = np.asarray(_floats(ages), np.float64)
    a = a[np.isfinite(a)]
    return int(((a < ref["low"]) | (a > ref["high"])).sum()), int(len(a))


def _unseen_views(summary: dict, views: Iterable | None) -> tuple[int, int]:
    ref = summary.get("view")
    if not ref or views is None:
        return 0, 0
    known = [str(v).strip().upper() for v in views if v is not None and str(v).strip() not in ("", "nan")]
    return sum(1 for v in known if v not in ref["counts"]), len(known)


def _unseen_sizes(summary: dict, sizes: tuple[Iterable, Iterable] | None) -> tuple[int, int, float]:
    """(images stored at a size never seen in training, images with a known size, their median
    shorter side): shorter side below the training 0.5% quantile / :data:`SIZE_FACTOR` or above
    the 99.5% quantile x :data:`SIZE_FACTOR`."""
    ref = summary.get("stored_size")
    if not ref or sizes is None:
        return 0, 0, math.nan
    rows, cols = (np.asarray(_floats(v), np.float64) for v in sizes)
    short = np.fmin(rows, cols)
    short = short[np.isfinite(short) & (short > 0)]
    if not len(short):
        return 0, 0, math.nan
    bad = (short < ref["low"] / SIZE_FACTOR) | (short > ref["high"] * SIZE_FACTOR)
    return int(bad.sum()), int(len(short)), float(np.median(short))


def cohort_shift(
    scores: Sequence[float],
    summary: dict,
    *,
    ages: Iterable | None = None,
    views: Iterable | None = None,
    sizes: tuple[Iterable, Iterable] | None = None,
) -> dict:
    """The cohort's shift result (the ``"shift"`` entry of metrics.json and shift.json).

    ``scores``: per-image ``shift_score`` (NaN/blank entries are ignored). ``ages``/``views``:
    the cohort's known ages (years) and ViewPosition values, compared with the training
    ones when the summary has them (same counting rule: outside the training 0.5-99.5%
    age range, or a view never seen in training). ``sizes``: the images' stored (rows,
    columns), compared with the training images' stored shorter side (:func:`_unseen_sizes`).

    Returns ``{"cohort_score", "threshold", "flagged", "n_images", "n_flagged",
    "fraction_flagged", "message"}``; ``cohort_score`` is the fraction of images beyond the
    training source's 99th percentile and ``threshold`` the fraction at which a cohort of
    this size is flagged (1.0 when it is too small to be flagged; see :func:`min_flagged`).
    """
    s = np.asarray(_floats(scores), np.float64)
    s = s[np.isfinite(s)]
    n = int(len(s))
    k = int((s > IMAGE_LIMIT).sum())
    k_min = min_flagged(n)
    fraction = k / n if n else 0.0
    threshold = k_min / n if k_min else 1.0
    flagged = bool(k_min is not None and k >= k_min)
    reasons = []
    if flagged:
        reasons.append(
            f"{k} of {n} images ({fraction:.1%}) lie beyond the training images' 99th percentile "
            f"of feature distance (about 1% expected; median shift score {np.median(s):.2f})"
        )
    for what, (bad, known) in (
        ("outside the training age range", _outside_age(summary, ages)),
        ("of a view never seen in training", _unseen_views(summary, views)),
    ):
        need = min_flagged(known)
        if need is not None and bad >= need:
            flagged = True
            reasons.append(f"{bad} of {known} images with a known value are {what}")
    bad, known, median = _unseen_sizes(summary, sizes)
    need = min_flagged(known)
    if need is not None and bad >= need:
        ref = summary["stored_size"]
        flagged = True
        reasons.append(
            f"{bad} of {known} images are stored at a size never seen in training (median shorter side "
            f"{median:.0f} px; training {ref['low']:.0f}-{ref['high']:.0f} px): downscaled or re-encoded "
            "copies differ in sharpness and noise, which the model may read as findings"
        )
    if n == 0:
        message = "no images were scored; no shift assessment"
    elif flagged:
        message = (
            "cohort is unlike the training data: " + "; ".join(reasons) + ". The model's accuracy on it is unknown."
        )
    else:
        message = (
            f"cohort resembles the training data: {k} of {n} images ({fraction:.1%}) beyond the training "
            f"99th percentile (flagged from {threshold:.1%}{'' if k_min else ', not reachable at this size'})"
        )
    return {
        "cohort_score": float(fraction),
        "threshold": float(threshold),
        "flagged": flagged,
        "n_images": n,
        "n_flagged": k,
        "fraction_flagged": float(fraction),
        "message": message,
    }


def stored_sizes(table: pd.DataFrame) -> tuple[Iterable, Iterable] | None:
    """A manifest or joined predictions table's stored (rows, columns), when it has them."""
    return (table["rows"], table["columns"]) if {"rows", "columns"} <= set(table.columns) else None


def table_shift(table: pd.DataFrame, summary: dict | None) -> tuple[dict | None, bool]:
    """:func:`cohort_shift` of a predictions table (``shift_score``, and ``patient_age_years`` /
    ``view_position`` / stored ``rows`` and ``columns`` when present), and whether only the age/view comparison flagged it
    (the feature verdict was already logged by batch prediction). ``(None, False)`` without
    a summary or a ``shift_score`` column."""
    if summary is None or "shift_score" not in table.columns:
        return None, False
    scores = table["shift_score"].tolist()
    result = cohort_shift(
        scores,
        summary,
        ages=table["patient_age_years"] if "patient_age_years" in table.columns else None,
        views=table["view_position"] if "view_position" in table.columns else None,
        sizes=stored_sizes(table),
    )
    return result, result["flagged"] and not cohort_shift(scores, summary)["flagged"]

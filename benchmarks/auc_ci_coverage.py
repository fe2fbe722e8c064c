"""Measured coverage of the DeLong AUC intervals (clipped Wald vs logit) by simulation.

Binormal scores with equal variances: negatives N(0, 1), positives N(d, 1), where
d = sqrt(2) * Phi^-1(AUC) gives the true AUC. Each repetition draws a cohort, computes both
nominal 95% intervals with :func:`cxr_cad.metrics.delong_auc_ci` and counts whether the
true AUC lies inside. Usage::

    .venv/bin/python benchmarks/auc_ci_coverage.py --reps 4000
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np
from scipy.stats import norm

from cxr_cad.metrics import UndefinedMetricWarning, delong_auc_ci


def coverage(n_pos: int, n_neg: int, auc: float, reps: int, seed: int = 0, alpha: float = 0.05) -> dict:
    rng = np.random.default_rng(seed)
    d = math.sqrt(2) * norm.ppf(auc)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    hits = {"wald": 0, "logit": 0}
    widths = {"wald": [], "logit": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for _ in range(reps):
            s = np.r_[rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)]
            for kind in hits:
                ci = delong_auc_ci(y, s, alpha=alpha, interval=kind)
                hits[kind] += ci.low <= auc <= ci.high
                widths[kind].append(ci.high - ci.low)
    return {k: {"coverage": hits[k] / reps, "mean_width": float(np.mean(widths[k]))} for k in hits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("n_pos n_neg  AUC   wald_cov logit_cov  wald_width logit_width")
    for n_pos, n_neg, auc in ((10, 40, 0.95), (10, 40, 0.80), (30, 30, 0.95), (50, 50, 0.90), (100, 100, 0.97)):
        r = coverage(n_pos, n_neg, auc, args.reps, args.seed)
        print(
            f"{n_pos:5d} {n_neg:5d} {auc:5.2f}   {r['wald']['coverage']:.3f}    {r['logit']['coverage']:.3f}"
            f"      {r['wald']['mean_width']:.3f}      {r['logit']['mean_width']:.3f}"
        )


if __name__ == "__main__":
    main()

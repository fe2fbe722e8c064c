"""Report figures as SVG files (matplotlib, SVG canvas, no pyplot global state).

Vector graphics: the HTML embeds the SVG and the PDF draws it as vector paths (fpdf2), so
curves and labels stay sharp at any zoom and in print. Text is stored as paths
(``svg.fonttype = "path"``), so no font is needed to show it; the SVG carries no metadata
block (no date, no identifier). Every curve is drawn from the values in ``metrics.json``
(the dict from :func:`cxr_cad.report.build.build_report_data`); the score histograms
draw the scores themselves.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

from cxr_cad.core.atomic import atomic_write_text
from cxr_cad.report.fmt import fmt_auc, fmt_p, fmt_threshold, level

log = logging.getLogger(__name__)

#: every figure file a report may write (stale copies are removed before a report is written)
FIGURE_FILES = (
    "roc.svg",
    "calibration.svg",
    "score_histogram.svg",
    "cv_roc.svg",
    "comparison_roc.svg",
    "precision_recall.svg",
    "decision_curve.svg",
)
_OP_STYLE = {"model": ("o", "#d62728"), "youden": ("s", "#2ca02c"), "folds": ("D", "#9467bd")}
_OP_NAME = {"model": "fixed threshold", "youden": "Youden (this cohort)", "folds": "each fold's own threshold"}
_METADATA_RE = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def _new(w: float = 5.2, h: float = 4.6) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasSVG(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "cxr_cad"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    atomic_write_text(path, _METADATA_RE.sub("", buf.getvalue().decode("utf-8")))
    log.debug("wrote %s", path)
    return path


def _roc_axes(ax, title: str) -> None:
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        aspect="equal",
        title=title,
        xlabel="1 \u2212 specificity (false-positive rate)",
        ylabel="Sensitivity (true-positive rate)",
    )
    ax.grid(alpha=0.3)


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def roc_figure(d: dict, path: Path) -> Path:
    """Pooled ROC curve, AUC with both CIs in the legend, operating points marked."""
    fig, ax = _new()
    _roc_axes(ax, "ROC curve")
    auc = d["auc"]
    ax.plot(
        _arr(d["roc"]["fpr"]),
        _arr(d["roc"]["tpr"]),
        color="#1f77b4",
        lw=2,
        label=(
            f"AUC {fmt_auc(auc.get('delong_logit') or auc['delong'])} DeLong\n"
            f"      {fmt_auc(auc['bootstrap'])} bootstrap\n      ({level(d)} CIs)"
        ),
    )
    for op in d["operating_points"]:
        m = op["metrics"]
        spec, sens = m["specificity"]["value"], m["sensitivity"]["value"]
        if spec is None or sens is None:
            continue
        marker, color = _OP_STYLE.get(op["name"], ("^", "black"))
        thr = "" if op["threshold"] is None else f" {fmt_threshold(op['threshold'])}"
        ax.plot(
            [1 - spec],
            [sens],
            marker=marker,
            color=color,
            ms=8,
            ls="none",
            label=f"{_OP_NAME.get(op['name'], op['name'])}{thr}",
        )
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def cv_roc_figure(d: dict, path: Path) -> Path:
    """One ROC curve per cross-validation fold, the vertical mean and the mean +/- 1 SD band."""
    cv = d["cross_validation"]
    fig, ax = _new()
    _roc_axes(ax, f"Cross-validation ROC ({len(cv['folds'])} folds)")
    for f in cv["folds"]:
        auc = "n/e" if f["auc"] is None else f"{f['auc']:.3f}"
        ax.plot(_arr(f["fpr"]), _arr(f["tpr"]), lw=1, alpha=0.6, label=f"fold {f['fold']} (AUC {auc})")
    mr = cv["mean_roc"]
    grid = _arr(mr["fpr"])
    ax.fill_between(grid, _arr(mr["tpr_low"]), _arr(mr["tpr_high"]), color="grey", alpha=0.35, label="mean \u00b1 1 SD")
    sm = cv["auc_summary"]
    mean_txt = "n/e" if sm.get("mean") is None else f"{sm['mean']:.3f}"
    sd_txt = "n/e" if sm.get("sd") is None else f"{sm['sd']:.3f}"
    ax.plot(grid, _arr(mr["tpr_mean"]), color="black", lw=2, label=f"mean (AUC {mean_txt} \u00b1 {sd_txt})")
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def calibration_figure(d: dict, path: Path) -> Path:
    """Reliability diagram with Wilson intervals and a bar of images per bin."""
    rel = d["calibration"]["reliability"]
    fig = Figure(figsize=(5.2, 5.4), layout="constrained")
    FigureCanvasSVG(fig)
    ax, axn = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    mp, fp = _arr(rel["mean_predicted"]), _arr(rel["fraction_positive"])
    lo, hi = _arr(rel["low"]), _arr(rel["high"])
    ok = np.isfinite(mp)
    ax.errorbar(
        mp[ok],
        fp[ok],
        yerr=[fp[ok] - lo[ok], hi[ok] - fp[ok]],
        marker="o",
        color="#1f77b4",
        capsize=3,
        label=f"observed ({level(d)} CI)",
    )
    cal = d["calibration"]
    brier = "n/e" if cal["brier_score"] is None else f"{cal['brier_score']:.4f}"
    ece = "n/e" if cal["ece"] is None else f"{cal['ece']:.4f}"
    ax.set(
        xlim=(0, 1),
        ylim=(-0.02, 1.02),
        ylabel="Observed fraction positive",
        title=f"Reliability diagram (Brier {brier}, ECE {ece})",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    edges = _arr(rel["edges"])
    axn.bar(edges[:-1], rel["count"], width=np.diff(edges), align="edge", color="#aec7e8", edgecolor="white")
    axn.set(xlabel="Predicted probability (score)", ylabel="Images")
    return _save(fig, path)


def score_histogram_figure(ev: pd.DataFrame, d: dict, path: Path) -> Path:
    """Histogram of scores for each true class, with the thresholds as vertical lines."""
    fig, ax = _new(5.6, 3.6)
    bins = np.linspace(0, 1, 26).tolist()
    for cls, y, color in ((d["negative_class"], 0, "#1f77b4"), (d["positive_class"], 1, "#ff7f0e")):
        s = ev.loc[ev["y_true"] == y, "score"].to_numpy()
        ax.hist(s, bins=bins, alpha=0.6, color=color, label=f"truly {cls} (n={s.size})")
    for op in d["operating_points"]:
        if op["threshold"] is None:
            continue
        _, color = _OP_STYLE.get(op["name"], ("", "black"))
        ax.axvline(
            op["threshold"],
            color=color,
            ls="--",
            lw=1.5,
            label=("fixed" if op["name"] == "model" else "Youden") + f" threshold {fmt_threshold(op['threshold'])}",
        )
    ax.set(
        xlabel=f"Score (probability of {d['positive_class']})",
        ylabel="Images",
        title="Scores by true class",
        xlim=(0, 1),
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def comparison_figure(d: dict, path: Path) -> Path:
    """Both models' ROC curves on the same images, with the paired DeLong p-value."""
    c = d["comparison"]
    t = c["paired_delong"]
    fig, ax = _new()
    _roc_axes(ax, f"Paired comparison (DeLong {fmt_p(t.get('p_value'))})")
    ax.plot(
        _arr(c["roc_a"]["fpr"]),
        _arr(c["roc_a"]["tpr"]),
        lw=2,
        label=f"{c['name_a']}: AUC {fmt_auc(c['auc_a_delong'])} ({level(d)} CI)",
    )
    ax.plot(
        _arr(c["roc_b"]["fpr"]), _arr(c["roc_b"]["tpr"]), lw=2, label=f"{c['name_b']}: AUC {fmt_auc(c['auc_b_delong'])}"
    )
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def precision_recall_figure(d: dict, path: Path) -> Path:
    """Precision-recall curve (scikit-learn's steps) with AUPRC and the no-skill prevalence line."""
    pr = d["utility"]["precision_recall"]
    fig, ax = _new(5.2, 4.2)
    auprc = "n/e" if pr["auprc"] is None else f"{pr['auprc']:.3f}"
    ax.step(
        _arr(pr["recall"]), _arr(pr["precision"]), where="post", color="#1f77b4", lw=2, label=f"model (AUPRC {auprc})"
    )
    if pr["prevalence"] is not None:
        ax.axhline(pr["prevalence"], ls=":", color="grey", label=f"no skill (prevalence {pr['prevalence']:.2f})")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.02),
        xlabel="Recall (sensitivity)",
        ylabel="Precision (PPV)",
        title="Precision-recall curve",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def decision_curve_figure(d: dict, path: Path) -> Path:
    """Net benefit of the model against treat-all and treat-none over threshold probabilities."""
    dc = d["utility"]["decision_curve"]
    pt = _arr(dc["threshold"])
    model, treat_all = _arr(dc["model"]), _arr(dc["treat_all"])
    fig, ax = _new(5.2, 4.2)
    ax.plot(pt, model, color="#1f77b4", lw=2, label="model")
    ax.plot(pt, treat_all, color="#ff7f0e", lw=1.2, ls="--", label="treat all")
    ax.plot(pt, np.zeros_like(pt), color="black", lw=1, label="treat none")
    top = np.nanmax(np.r_[model, treat_all, 0.0])
    ax.set(
        xlim=(0, 1),
        ylim=(-0.05 * max(top, 0.1), max(top, 0.01) * 1.1),
        xlabel="Threshold probability",
        ylabel="Net benefit",
        title="Decision curve",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def write_figures(d: dict, ev: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Write every figure the data calls for into ``out_dir``; returns {file name: path}.

    Text is drawn as given: ``$`` in a class or model name is not read as mathtext (and the
    SVG stores text as paths, so no name can add markup to it)."""
    with matplotlib.rc_context({"text.parse_math": False}):
        return _write_figures(d, ev, Path(out_dir))


def _write_figures(d: dict, ev: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    paths = {
        "roc.svg": roc_figure(d, out_dir / "roc.svg"),
        "calibration.svg": calibration_figure(d, out_dir / "calibration.svg"),
        "score_histogram.svg": score_histogram_figure(ev, d, out_dir / "score_histogram.svg"),
        "precision_recall.svg": precision_recall_figure(d, out_dir / "precision_recall.svg"),
        "decision_curve.svg": decision_curve_figure(d, out_dir / "decision_curve.svg"),
    }
    if d.get("cross_validation") and d["cross_validation"].get("folds"):
        paths["cv_roc.svg"] = cv_roc_figure(d, out_dir / "cv_roc.svg")
    if d.get("comparison"):
        paths["comparison_roc.svg"] = comparison_figure(d, out_dir / "comparison_roc.svg")
    return paths

"""The calibration section of the report: reliability diagram and score histograms, Brier
score and expected calibration error with bootstrap intervals, calibration slope and intercept,
and the reliability bins. Numbers are formatted from ``metrics.json`` with
:mod:`cxr_cad.report.fmt`; the section is placed by :func:`cxr_cad.report.view.build_document`."""

from __future__ import annotations

from cxr_cad.report.fmt import DASH, fmt_interval, fmt_num, kv, level, table

__all__ = ["calibration"]


def calibration(d: dict) -> list[dict]:
    """Reliability diagram and score histograms, Brier/ECE with CIs, slope/intercept, bins."""
    cal = d["calibration"]
    rel = cal["reliability"]
    rows = []
    for i, n in enumerate(rel["count"]):
        if n:
            rows.append(
                [
                    f"{rel['edges'][i]:.1f}{DASH}{rel['edges'][i + 1]:.1f}",
                    str(n),
                    fmt_num(rel["mean_predicted"][i]),
                    fmt_num(rel["fraction_positive"][i]),
                    fmt_interval(rel["low"][i], rel["high"][i]),
                ]
            )
    lv = level(d)
    util = d.get("utility") or {}
    ci = util.get("calibration_ci") or {}
    fit = util.get("calibration_fit") or {}
    b, e = ci.get("brier") or {}, ci.get("ece") or {}
    return [
        {
            "kind": "figrow",
            "items": [
                {
                    "file": "calibration.svg",
                    "caption": f"Reliability diagram (observed fraction positive per probability bin, Wilson {lv} CI).",
                },
                {"file": "score_histogram.svg", "caption": "Distribution of the score for each true class."},
            ],
        },
        kv(
            [
                (
                    f"Brier score (0 = perfect), bootstrap {lv} CI",
                    f"{fmt_num(cal['brier_score'], 4)} {fmt_interval(b.get('low'), b.get('high'), digits=4)}",
                ),
                (
                    f"Expected calibration error, bootstrap {lv} CI",
                    f"{fmt_num(cal['ece'], 4)} {fmt_interval(e.get('low'), e.get('high'), digits=4)}",
                ),
                ("Calibration slope (1 = ideal; < 1 = scores too extreme)", fmt_num(fit.get("slope"), 2)),
                (
                    "Calibration intercept, slope fixed at 1 (0 = ideal; > 0 = scores too low)",
                    fmt_num(fit.get("intercept"), 2),
                ),
            ],
            "Calibration",
        ),
        table(
            ["Probability bin", "Images", "Mean predicted", "Observed positive", f"{lv} CI"],
            rows,
            "Reliability bins (empty bins omitted)",
            [1.2, 0.8, 1.2, 1.2, 1.4],
        ),
    ]

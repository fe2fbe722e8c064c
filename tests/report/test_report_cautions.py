"""Summary-box warnings of issue 20: a saturated stored threshold and poor calibration
(rules in docs/report.md#warnings), shown in the headline box and metrics.json."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_cad.report import ReportOptions, write_report
from cxr_cad.report.cautions import POOR_BRIER, POOR_ECE
from tests.report.test_report import MODEL_INFO, html_text, synthetic_predictions

FAST = {"n_bootstrap": 100, "seed": 1}


def _warnings(tmp_path, df, threshold):
    info = {**MODEL_INFO, "threshold": threshold}
    result = write_report(df, tmp_path, ReportOptions(pdf=False, **FAST), model_info=info)
    return result.data["warnings"], html_text(tmp_path / "report.html")


@pytest.mark.parametrize("threshold, calls", [(0.9995, "NORMAL"), (0.999, "NORMAL"), (0.0005, "PNEUMONIA")])
def test_a_saturated_threshold_is_warned_about(tmp_path, threshold, calls):
    warnings, page = _warnings(tmp_path, synthetic_predictions(120, seed=1), threshold)
    sat = [w for w in warnings if w.startswith("Saturated threshold")]
    assert len(sat) == 1 and f"almost every image {calls}" in sat[0]
    summary = page[: page.index("2. Model, cohort")]
    assert "Saturated threshold" in summary  # in the headline box


def test_an_ordinary_threshold_and_calibrated_scores_are_not(tmp_path):
    df = synthetic_predictions(400, seed=1)
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, len(df)).round(6)  # labels drawn from the scores: calibrated
    df["probability"] = p
    df["label"] = np.where(rng.random(len(df)) < p, "PNEUMONIA", "NORMAL")
    warnings, _ = _warnings(tmp_path, df, 0.5)
    assert not [w for w in warnings if w.startswith(("Saturated", "Poor calibration"))]


def test_poor_calibration_is_warned_about(tmp_path):
    """Scores pushed to the wrong end (the demo that had Brier 0.458, ECE 0.462)."""
    df = synthetic_predictions(200, seed=2)
    rng = np.random.default_rng(0)
    pos = df["label"] == "PNEUMONIA"
    df["probability"] = np.where(pos, rng.uniform(0.0, 0.3, len(df)), rng.uniform(0.6, 1.0, len(df))).round(6)
    warnings, page = _warnings(tmp_path, df, 0.5)
    poor = [w for w in warnings if w.startswith("Poor calibration")]
    assert len(poor) == 1 and f"> {POOR_ECE:g}" in poor[0] and f"> {POOR_BRIER:g}" in poor[0]
    assert "Poor calibration" in page[: page.index("2. Model, cohort")]


def test_high_ece_on_a_small_sample_is_not_called_poor(tmp_path):
    df = synthetic_predictions(30, seed=3)
    df["probability"] = np.where(df["label"] == "PNEUMONIA", 0.62, 0.38)  # ECE ~0.38, Brier ~0.14
    warnings, _ = _warnings(tmp_path, df, 0.5)
    assert not [w for w in warnings if w.startswith("Poor calibration")]

"""The multi-label report: findings overview, small-sample flags, per-finding sections and the
complete CLAIM / TRIPOD+AI appendix, in report.html, report.pdf and metrics.json."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from cxr_cad.metrics.multilabel import multilabel_summary
from cxr_cad.report.checklist import ITEMS
from cxr_cad.report.multilabel import build_multilabel_document, write_multilabel_report


@pytest.fixture(scope="module")
def summary():
    rng = np.random.default_rng(3)
    y = (rng.random((150, 3)) < [0.3, 0.25, 0.02]).astype(np.int8)
    s = np.clip(0.3 * (y == 1) + rng.normal(0.4, 0.2, y.shape), 0, 1)
    d = multilabel_summary(
        y, s, ["Effusion", "Mass", "Hernia"], [0.5, 0.5, 0.5], groups=np.arange(150) // 2, n_bootstrap=100
    )
    return {**d, "n_folds": 5, "fold_method": "patient-grouped iterative stratification", "uncertain": "ignore"}


def test_overview_has_one_row_per_finding_and_flags_small_ones(summary):
    doc = build_multilabel_document(summary)
    overview = next(s for s in doc["sections"] if s["id"] == "study")
    rows = overview["blocks"][0]["rows"]
    assert [r[0] for r in rows] == ["Effusion", "Mass", "Hernia"]
    assert rows[2][2] == "too few cases: not reported" and rows[2][-1] == "yes"
    assert rows[0][2].startswith(f"{summary['per_finding'][0]['auc']:.3f} (")
    ids = [s["id"] for s in doc["sections"]]
    assert ids[:4] == ["summary", "header", "cohort", "study"] and "findings" in ids and ids[-1] == "checklist"
    appendix = doc["sections"][-1]["blocks"][1]["rows"]
    assert len(appendix) == len(ITEMS)  # every CLAIM / TRIPOD+AI item listed


def test_write_report_html_pdf_metrics(summary, tmp_path):
    paths = write_multilabel_report(summary, tmp_path, cohort_name="nih sample")
    html = paths["html"].read_text()
    assert "Findings overview" in html and "Hernia" in html and "CLAIM 2024" in html
    assert json.loads(paths["metrics"].read_text())["flagged"] == ["Hernia"]
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(paths["pdf"]), "-"], capture_output=True, text=True).stdout
        assert "Findings overview" in text and "Effusion" in text

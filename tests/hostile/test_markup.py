"""Issue 25: names from a bundle or a CSV (class, cohort) are checked against the documented
character set when they are read, and escaped wherever they are drawn (HTML, PDF, SVG, CSV)."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest

from cxr_cad.cli import main
from cxr_cad.config.sections import DataConfig, name_problem
from cxr_cad.errors import ConfigError
from tests.hostile import inputs as H
from tests.hostile.runner import run_cli
from tests.report.test_report import html_text, pdf_text, synthetic_predictions

SCRIPT = "<script>alert(1)</script>"


def test_a_bundle_whose_class_is_markup_is_refused_at_load(tmp_path, bundle):
    def edit(p):
        p["classes"] = ["NORMAL", SCRIPT]
        p["positive_class"] = SCRIPT

    bad = H.rewrite_bundle(bundle, tmp_path / "bad.pt", edit)
    H.write_pngs(tmp_path / "imgs", n=2)
    o = run_cli(["predict", tmp_path / "imgs", "--model", bad, "--out", tmp_path / "o", "--workers", "0"])
    assert o.rc == 1 and not o.has_traceback, o.stderr  # was: exit 0, the script in predictions.csv
    assert "classes" in o.last_line and "not a valid name" in o.last_line
    assert not (tmp_path / "o" / "predictions.csv").exists()


@pytest.mark.parametrize("name", [SCRIPT, "=HYPERLINK(1)", "@SUM(A1)", "-1+2", "a\nb", "x" * 65, " lead"])
def test_names_outside_the_character_set_are_refused(name):
    assert name_problem(name)
    with pytest.raises(ConfigError, match="classes"):
        DataConfig(classes=("NORMAL", name), positive_class="NORMAL")


@pytest.mark.parametrize("name", ["PNEUMONIA", "No Finding", "COVID-19", "Pleural_Effusion", "Épanchement", "a/b (c)"])
def test_ordinary_names_pass(name):
    assert name_problem(name) is None


def test_cohort_name_with_markup_exits_2(tmp_path, capsys):
    synthetic_predictions(40).to_csv(tmp_path / "p.csv", index=False)
    rc = main(
        ["report", str(tmp_path / "p.csv"), "--out", str(tmp_path / "r"), "--positive-class", "PNEUMONIA"]
        + ["--cohort-name", SCRIPT, "--no-pdf"]
    )
    assert rc == 2
    assert "cohort name" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.html").exists()


def test_csv_labels_outside_the_character_set_exit_2(tmp_path, capsys):
    df = synthetic_predictions(40)
    df.loc[df["label"] == "NORMAL", "label"] = "=cmd|' /C calc'!A0"
    df.to_csv(tmp_path / "p.csv", index=False)
    rc = main(
        ["report", str(tmp_path / "p.csv"), "--out", str(tmp_path / "r"), "--positive-class", "PNEUMONIA", "--no-pdf"]
    )
    assert rc == 2
    assert "not a valid name" in capsys.readouterr().err


def test_names_are_escaped_where_they_are_drawn(tmp_path):
    """The report layer draws whatever it is given safely (names that bypass the load-time check,
    e.g. from Python): HTML escaped, PDF literal, SVG without mathtext, CSV without formulas."""
    from cxr_cad.report import ReportOptions, write_report

    df = synthetic_predictions(60, seed=5)
    neg, pos = "=1+1 <b>$x$</b>", "<i>P&Q</i>"
    df["label"] = df["label"].map({"NORMAL": neg, "PNEUMONIA": pos})
    result = write_report(
        df,
        tmp_path,
        ReportOptions(positive_class=pos, threshold=0.5, n_bootstrap=100, cohort_info={"name": "<u>c</u>"}),
        model_info={"name": "<em>m</em>.pt", "sha256": "ab" * 32, "classes": [neg, pos], "positive_class": pos},
    )
    raw = (tmp_path / "report.html").read_text()
    assert "<i>P&Q</i>" not in raw and "<b>$x$</b>" not in raw and "<u>c</u>" not in raw and "<em>m" not in raw
    assert "&lt;i&gt;P&amp;Q&lt;/i&gt;" in raw
    assert pos in html_text(tmp_path / "report.html")
    assert "<i>P&Q</i>" in pdf_text(tmp_path / "report.pdf")
    for svg in ("roc.svg", "score_histogram.svg"):
        assert "<i>" not in (tmp_path / svg).read_text() and "<b>" not in (tmp_path / svg).read_text()
    rows = list(csv.DictReader(io.StringIO((tmp_path / "predictions.csv").read_text())))
    assert {r["label"] for r in rows} == {"'" + neg, pos}
    assert {r["decision"] for r in rows} <= {"'" + neg, pos}
    assert json.loads((tmp_path / "metrics.json").read_text())["negative_class"] == neg  # data kept as given
    assert result.files["report.html"].parent == tmp_path


def test_predict_csv_cells_never_start_a_formula():
    from cxr_cad.inference.outputs import _csv_text

    text = _csv_text(
        ["path", "decision", "probability"], [{"path": "/a.png", "decision": "=HYPERLINK(1)", "probability": 0.5}]
    )
    row = next(csv.DictReader(io.StringIO(text)))
    assert row == {"path": "/a.png", "decision": "'=HYPERLINK(1)", "probability": "0.5"}
    assert pd.read_csv(io.StringIO(text))["probability"].iloc[0] == 0.5

"""``cxr-cad report PREDICTIONS.csv --out DIR``: from a predictions table, with and without a model."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxr_cad.cli import main
from tests.test_report import PATIENT_TAG, synthetic_predictions


@pytest.fixture
def predictions_csv(tmp_path):
    df = synthetic_predictions(120, seed=7, folds=3)
    path = tmp_path / "oof_predictions.csv"
    df.to_csv(path, index=False)
    return df, path


def test_report_from_csv_without_model(predictions_csv, tmp_path, capsys):
    df, path = predictions_csv
    other = df[["sop_instance_uid"]].assign(probability=np.random.default_rng(0).random(len(df)))
    other.to_csv(tmp_path / "old.csv", index=False)
    (tmp_path / "cv_metrics.json").write_text(json.dumps({"n_folds": 3, "seed": 0}))
    out = tmp_path / "report"
    rc = main(["-q", "report", str(path), "--out", str(out), "--positive-class", "PNEUMONIA", "--threshold", "0.4",
               "--bootstrap", "200", "--compare-predictions", str(tmp_path / "old.csv"), "--compare-name", "old",
               "--cv-metrics", str(tmp_path / "cv_metrics.json"), "--no-pdf", "--cohort-name", "oof"])
    assert rc == 0, capsys.readouterr().err
    assert "AUC" in capsys.readouterr().out
    d = json.loads((out / "metrics.json").read_text())
    assert d["operating_points"][0]["threshold"] == 0.4
    assert d["model"] is None and d["cohort"]["name"] == "oof"
    assert len(d["cross_validation"]["folds"]) == 3 and d["cross_validation"]["crossval"]["seed"] == 0
    assert d["comparison"]["name_b"] == "old"
    assert d["gradcam"]["cases"] == [] and "without the model" in d["gradcam"]["note"]
    assert (out / "cv_roc.png").is_file() and (out / "comparison_roc.png").is_file()
    assert PATIENT_TAG not in (out / "predictions.csv").read_text()


def test_report_takes_the_threshold_column(tmp_path):
    df = synthetic_predictions(60, seed=8).assign(threshold="0.35")
    df.to_csv(tmp_path / "p.csv", index=False)
    rc = main(["-q", "report", str(tmp_path / "p.csv"), "--out", str(tmp_path / "r"), "--positive-class",
               "PNEUMONIA", "--bootstrap", "200", "--no-pdf"])
    assert rc == 0
    d = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert d["operating_points"][0]["threshold"] == 0.35


@pytest.mark.parametrize("args, message", [
    (["--threshold", "0.5"], "positive class"),
    (["--positive-class", "PNEUMONIA", "--cv-metrics", "missing.json"], "cv-metrics"),
])
def test_report_usage_errors_exit_2(predictions_csv, tmp_path, capsys, args, message):
    _, path = predictions_csv
    rc = main(["-q", "report", str(path), "--out", str(tmp_path / "r"), "--no-pdf", *args])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_missing_predictions_file_exit_2(tmp_path, capsys):
    assert main(["-q", "report", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "r")]) == 2
    assert "nope.csv" in capsys.readouterr().err


def test_report_after_predict_with_model_and_manifest_draws_gradcam(tmp_path):
    from tests.synth import write_png_cohort
    from tests.test_cli_evaluate import _bundle

    root = tmp_path / "cohort"
    write_png_cohort(root, n_patients=6, images_per_patient=2, size=64, seed=2)
    bundle = _bundle(tmp_path / "m.pt", 0)
    assert main(["-q", "predict", str(root / "manifest.csv"), "--model", str(bundle), "--out",
                 str(tmp_path / "scores"), "--workers", "0"]) == 0
    out = tmp_path / "report"
    rc = main(["-q", "report", str(tmp_path / "scores" / "predictions.csv"), "--model", str(bundle),
               "--manifest", str(root / "manifest.csv"), "--out", str(out), "--bootstrap", "200",
               "--gradcam-per-group", "1", "--rejected", str(tmp_path / "scores" / "rejected.csv")])
    assert rc == 0
    d = json.loads((out / "metrics.json").read_text())
    assert d["cohort"]["n_patients"] == 6 and d["cohort"]["manifest_hash"]
    assert d["model"]["threshold"] == 0.5 and d["model"]["name"] == "m.pt"
    assert d["gradcam"]["cases"] and all((out / c["file"]).is_file() for c in d["gradcam"]["cases"])
    pred = pd.read_csv(out / "predictions.csv")
    assert "patient_id" not in pred.columns and "path" not in pred.columns

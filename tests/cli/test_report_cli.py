"""``cxr-cad report PREDICTIONS.csv --out DIR``: from a predictions table, with and without a model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxr_cad.cli import main
from tests.report.test_report import PATIENT_TAG, synthetic_predictions


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
    (tmp_path / "cv_metrics.json").write_text(json.dumps({**_cv_metrics(df), "seed": 0}))
    out = tmp_path / "report"
    rc = main(
        [
            "-q",
            "report",
            str(path),
            "--out",
            str(out),
            "--positive-class",
            "PNEUMONIA",
            "--threshold",
            "0.4",
            "--bootstrap",
            "200",
            "--compare-predictions",
            str(tmp_path / "old.csv"),
            "--compare-name",
            "old",
            "--cv-metrics",
            str(tmp_path / "cv_metrics.json"),
            "--no-pdf",
            "--cohort-name",
            "oof",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert "AUC" in capsys.readouterr().out
    d = json.loads((out / "metrics.json").read_text())
    assert d["operating_points"][0]["threshold"] == 0.4
    assert d["model"] is None and d["cohort"]["name"] == "oof"
    assert len(d["cross_validation"]["folds"]) == 3 and d["cross_validation"]["crossval"]["seed"] == 0
    assert d["comparison"]["name_b"] == "old"
    assert d["gradcam"]["cases"] == [] and "without the model" in d["gradcam"]["note"]
    assert (out / "cv_roc.svg").is_file() and (out / "comparison_roc.svg").is_file()
    prov = d["threshold_provenance"]["text"]
    assert prov.startswith("0.4000, given on the command line") and "stored" not in prov and "before" not in prov
    assert PATIENT_TAG not in (out / "predictions.csv").read_text()


def _cv_metrics(df: pd.DataFrame) -> dict:
    """A cv_metrics.json as cxr-cad crossval writes it, for folds with fixed thresholds."""
    from cxr_cad import metrics

    table = pd.DataFrame(
        {
            "y_true": (df["label"] == "PNEUMONIA").astype(int),
            "probability": df["probability"],
            "fold": df["fold"],
            "threshold": 0.4 + 0.05 * df["fold"],
        }
    )
    return metrics.jsonable(metrics.crossval_summary(table, class_names=("NORMAL", "PNEUMONIA"), n_bootstrap=0))


@pytest.mark.parametrize(
    "content, message",
    [
        ({"n_folds": 3, "seed": 0}, "per_fold must be a non-empty list"),
        ([1, 2, 3], "expected a JSON object"),
        ({"per_fold": [{"fold": "a", "threshold": 7, "metrics": {}}], "across_folds": {}}, "fold must be an integer"),
        ({"per_fold": [{"fold": 0, "threshold": 7, "metrics": {}}], "across_folds": {}}, "threshold must be a number"),
    ],
)
def test_cv_metrics_schema_is_checked_exit_2(predictions_csv, tmp_path, capsys, content, message):
    _, path = predictions_csv
    (tmp_path / "cv.json").write_text(json.dumps(content))
    rc = main(
        [
            "-q",
            "report",
            str(path),
            "--out",
            str(tmp_path / "r"),
            "--positive-class",
            "PNEUMONIA",
            "--no-pdf",
            "--bootstrap",
            "100",
            "--cv-metrics",
            str(tmp_path / "cv.json"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "cv.json" in err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_duplicated_rows_are_counted_once_conflicts_refused(tmp_path, capsys):
    df = synthetic_predictions(40, seed=3)
    pd.concat([df, df.iloc[:5]]).to_csv(tmp_path / "dup.csv", index=False)
    rc = main(
        [
            "-q",
            "report",
            str(tmp_path / "dup.csv"),
            "--out",
            str(tmp_path / "r"),
            "--positive-class",
            "PNEUMONIA",
            "--threshold",
            "0.5",
            "--no-pdf",
            "--bootstrap",
            "100",
        ]
    )
    assert rc == 0
    d = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert d["cohort"]["n_images_evaluated"] == 40 and d["duplicates_removed"] == 5
    assert any("5 duplicated prediction row(s)" in w for w in d["warnings"])
    bad = pd.concat([df, df.iloc[:1].assign(probability=0.123)])
    bad.to_csv(tmp_path / "conflict.csv", index=False)
    rc = main(
        [
            "-q",
            "report",
            str(tmp_path / "conflict.csv"),
            "--out",
            str(tmp_path / "r2"),
            "--positive-class",
            "PNEUMONIA",
            "--no-pdf",
            "--bootstrap",
            "100",
        ]
    )
    assert rc == 2 and "more than once with different" in capsys.readouterr().err


def test_rerun_without_pdf_removes_the_stale_pdf(tmp_path):
    df = synthetic_predictions(40, seed=5)
    df.to_csv(tmp_path / "p.csv", index=False)
    args = [
        "-q",
        "report",
        str(tmp_path / "p.csv"),
        "--out",
        str(tmp_path / "r"),
        "--positive-class",
        "PNEUMONIA",
        "--threshold",
        "0.5",
        "--bootstrap",
        "100",
    ]
    assert main(args) == 0 and (tmp_path / "r" / "report.pdf").is_file()
    assert main(args + ["--no-pdf"]) == 0
    assert not (tmp_path / "r" / "report.pdf").exists() and (tmp_path / "r" / "report.html").is_file()


def test_cohort_info_file_and_prevalences(tmp_path, capsys):
    df = synthetic_predictions(50, seed=9)
    df.to_csv(tmp_path / "p.csv", index=False)
    (tmp_path / "cohort.yaml").write_text(
        "source: Hospital A PACS export\nvalidation: external\nreference_standard: two radiologists, consensus\n"
    )
    rc = main(
        [
            "-q",
            "report",
            str(tmp_path / "p.csv"),
            "--out",
            str(tmp_path / "r"),
            "--positive-class",
            "PNEUMONIA",
            "--threshold",
            "0.5",
            "--no-pdf",
            "--bootstrap",
            "100",
            "--cohort-info",
            str(tmp_path / "cohort.yaml"),
            "--prevalence",
            "0.1,0.3,0.5",
        ]
    )
    assert rc == 0
    d = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert d["population"]["source"] == "Hospital A PACS export" and d["population"]["site"] == "not recorded"
    assert [v["prevalence"] for v in d["utility"]["predictive_values"]] == [0.1, 0.3, 0.5]
    page = (tmp_path / "r" / "report.html").read_text()
    assert "two radiologists, consensus" in page and "external" in page
    (tmp_path / "bad.yaml").write_text("sauce: x\n")
    rc = main(
        [
            "-q",
            "report",
            str(tmp_path / "p.csv"),
            "--out",
            str(tmp_path / "r3"),
            "--positive-class",
            "PNEUMONIA",
            "--no-pdf",
            "--cohort-info",
            str(tmp_path / "bad.yaml"),
        ]
    )
    assert rc == 2 and "unknown key 'sauce'" in capsys.readouterr().err
    assert (
        main(
            [
                "-q",
                "report",
                str(tmp_path / "p.csv"),
                "--out",
                str(tmp_path / "r4"),
                "--positive-class",
                "PNEUMONIA",
                "--prevalence",
                "0,2",
            ]
        )
        == 2
    )


def test_report_takes_the_threshold_column(tmp_path):
    df = synthetic_predictions(60, seed=8).assign(threshold="0.35")
    df.to_csv(tmp_path / "p.csv", index=False)
    rc = main(
        [
            "-q",
            "report",
            str(tmp_path / "p.csv"),
            "--out",
            str(tmp_path / "r"),
            "--positive-class",
            "PNEUMONIA",
            "--bootstrap",
            "200",
            "--no-pdf",
        ]
    )
    assert rc == 0
    d = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert d["operating_points"][0]["threshold"] == 0.35


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threshold", "0.5"], "positive class"),
        (["--positive-class", "PNEUMONIA", "--cv-metrics", "missing.json"], "cv-metrics"),
    ],
)
def test_report_usage_errors_exit_2(predictions_csv, tmp_path, capsys, args, message):
    _, path = predictions_csv
    rc = main(["-q", "report", str(path), "--out", str(tmp_path / "r"), "--no-pdf", *args])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_missing_predictions_file_exit_2(tmp_path, capsys):
    assert main(["-q", "report", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "r")]) == 2
    assert "nope.csv" in capsys.readouterr().err


def test_report_after_predict_with_model_and_manifest_draws_gradcam(tmp_path):
    from tests.cli.test_cli_evaluate import _bundle
    from tests.factories.synth import write_png_cohort

    root = tmp_path / "cohort"
    write_png_cohort(root, n_patients=6, images_per_patient=2, size=64, seed=2)
    bundle = _bundle(tmp_path / "m.pt", 0)
    assert (
        main(
            [
                "-q",
                "predict",
                str(root / "manifest.csv"),
                "--model",
                str(bundle),
                "--out",
                str(tmp_path / "scores"),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    out = tmp_path / "report"
    rc = main(
        [
            "-q",
            "report",
            str(tmp_path / "scores" / "predictions.csv"),
            "--model",
            str(bundle),
            "--manifest",
            str(root / "manifest.csv"),
            "--out",
            str(out),
            "--bootstrap",
            "200",
            "--gradcam-per-group",
            "1",
            "--rejected",
            str(tmp_path / "scores" / "rejected.csv"),
        ]
    )
    assert rc == 0
    d = json.loads((out / "metrics.json").read_text())
    assert d["cohort"]["n_patients"] == 6 and d["cohort"]["manifest_hash"]
    assert d["model"]["threshold"] == 0.5 and d["model"]["name"] == "m.pt"
    assert d["gradcam"]["cases"] and all((out / c["file"]).is_file() for c in d["gradcam"]["cases"])
    pred = pd.read_csv(out / "predictions.csv")
    assert "patient_id" not in pred.columns and "path" not in pred.columns

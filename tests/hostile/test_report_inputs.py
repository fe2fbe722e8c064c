"""Issues 20 and 25: ``cxr-cad report`` / ``evaluate`` on the inputs that were measured to go
wrong: the README's journey 2, tables that carry the model and the shift, tables that cannot
give a complete report, a failed write, and evaluate's scratch folder."""

from __future__ import annotations

import errno
import json
import os
import signal

import numpy as np
import pandas as pd
import pytest

from cxr_cad.cli import main
from tests.factories.synth import write_png_cohort
from tests.hostile.runner import run_cli

SHA = "0123456789abcdef" * 4


def _errors(capsys) -> list[str]:
    return [
        ln
        for ln in capsys.readouterr().err.splitlines()
        if ln.strip() and not ln.startswith(("INFO", "WARNING", "DEBUG"))
    ]


def _predict_table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """A table as ``cxr-cad predict`` writes it on a labelled manifest of /data/site_a/<class>/."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2 == 1
    prob = np.clip(rng.normal(np.where(y, 0.7, 0.3), 0.15), 0, 1).round(6)
    label = np.where(y, "PNEUMONIA", "NORMAL")
    shift = np.where(np.arange(n) < n // 2, 1.8, 0.4)  # half the images beyond the training 99th percentile
    return pd.DataFrame(
        {
            "path": [f"/data/site_a/{lab}/P{i:04d}-0.dcm" for i, lab in enumerate(label)],
            "sop_instance_uid": [f"1.2.3.{i}" for i in range(n)],
            "label": label,
            "probability": prob,
            "decision": np.where(prob >= 0.5, "PNEUMONIA", "NORMAL"),
            "threshold": 0.5,
            "model_sha256": SHA,
            "shift_score": shift,
            "shift_flag": shift > 1,
            "view_position": np.where(np.arange(n) % 3 == 0, "AP", "PA"),
        }
    )


def test_readme_journey_2_crossval_then_report(tmp_path):
    """README.md journey 2, word for word (relative paths, run from the working folder)."""
    write_png_cohort(tmp_path / "cohort", n_patients=12, images_per_patient=2, size=48)
    train = ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu"]
    cv = run_cli(
        [
            "crossval",
            "--manifest",
            "cohort/manifest.csv",
            "--folds",
            "3",
            "--out",
            "runs/cv",
            "--init",
            "none",
            "--val-fraction",
            "0",
        ]
        + train
        + ["--no-report", "--bootstrap", "100"],
        cwd=str(tmp_path),
        timeout=600,
    )
    assert cv.rc == 0, cv.stderr
    o = run_cli(
        [
            "report",
            "runs/cv/oof_predictions.csv",
            "--cv-metrics",
            "runs/cv/cv_metrics.json",
            "--out",
            "runs/cv_report",
            "--bootstrap",
            "100",
            "--no-pdf",
        ],
        cwd=str(tmp_path),
    )
    assert o.rc == 0, o.stderr  # was: exit 2 "the positive class is not known"
    d = json.loads((tmp_path / "runs" / "cv_report" / "metrics.json").read_text())
    assert d["positive_class"] == "PNEUMONIA" and d["cohort"]["n_images_evaluated"] == 24
    # without --cv-metrics the table's y_true and label columns say it
    o = run_cli(
        ["report", "runs/cv/oof_predictions.csv", "--out", "runs/r2", "--bootstrap", "100", "--no-pdf"],
        cwd=str(tmp_path),
    )
    assert o.rc == 0, o.stderr
    assert json.loads((tmp_path / "runs" / "r2" / "metrics.json").read_text())["positive_class"] == "PNEUMONIA"


def test_positive_class_error_lists_what_was_looked_at(tmp_path, capsys):
    _predict_table().drop(columns=["decision", "threshold"]).to_csv(tmp_path / "p.csv", index=False)
    assert main(["report", str(tmp_path / "p.csv"), "--out", str(tmp_path / "r"), "--no-pdf"]) == 2
    err = " ".join(_errors(capsys))
    for looked in ("--model bundle (not given)", "--cv-metrics summary (not given)", "positive_class column"):
        assert looked in err, err
    assert "--positive-class" in err


def test_report_from_a_predict_table_identifies_model_cohort_and_shift(tmp_path, capsys):
    run = tmp_path / "model"  # the folder the table sits in must not name the cohort
    run.mkdir()
    _predict_table().to_csv(run / "predictions.csv", index=False)
    out = tmp_path / "r"
    assert main(["-q", "report", str(run / "predictions.csv"), "--out", str(out), "--bootstrap", "100"]) == 0
    d = json.loads((out / "metrics.json").read_text())
    assert d["positive_class"] == "PNEUMONIA"  # from decision + probability + threshold
    assert d["model"]["sha256"] == SHA and d["model"]["name"] == f"model {SHA[:12]}"
    assert d["cohort"]["name"] == "site_a"  # the folder holding the images, above the class folders
    assert d["shift"]["n_flagged"] == 30 and d["shift"]["flagged"]
    assert "view_position" in d["subgroups"]
    page = (out / "report.html").read_text()
    assert f"Model model {SHA[:12]} on cohort site_a" in page
    assert "not computed" not in page.split("Cohort shift check")[1][:300]
    assert any(w.startswith(f"Cohort shift, model {SHA[:12]}") for w in d["warnings"])


def test_a_bundle_that_did_not_make_the_table_is_refused(tmp_path, bundle, capsys):
    _predict_table().to_csv(tmp_path / "p.csv", index=False)
    rc = main(["report", str(tmp_path / "p.csv"), "--model", str(bundle), "--out", str(tmp_path / "r"), "--no-pdf"])
    assert rc == 2
    assert "give the bundle that made them" in _errors(capsys)[-1]


def _bad_values(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["probability"] = df["probability"].astype(object)
    df.loc[0, "probability"], df.loc[1, "probability"], df.loc[2, "probability"] = "nan", "", "abc"
    df.loc[3, "label"] = ""
    return df


@pytest.mark.parametrize(
    "edit, needles",
    [
        (
            lambda df: _bad_values(df),
            ["non-finite 'probability'", "empty 'probability'", "not a number (e.g. 'abc')", "empty 'label'"],
        ),
        (lambda df: df.assign(label="NORMAL", decision="NORMAL"), ["every evaluable row is labelled 'NORMAL'"]),
        (lambda df: df.iloc[:1], ["only 1 row(s)"]),
    ],
    ids=["bad-values", "one-class", "one-row"],
)
def test_a_table_that_cannot_give_a_complete_report_exits_2(tmp_path, capsys, edit, needles):
    edit(_predict_table()).to_csv(tmp_path / "p.csv", index=False)
    argv = ["report", str(tmp_path / "p.csv"), "--out", str(tmp_path / "r"), "--no-pdf", "--bootstrap", "100"]
    assert main([*argv, "--positive-class", "PNEUMONIA"]) == 2
    err = " ".join(_errors(capsys))
    for needle in needles:
        assert needle in err, err
    assert "--allow-partial" in err and not (tmp_path / "r" / "metrics.json").exists()


def test_allow_partial_writes_the_report_counting_bad_rows(tmp_path):
    df = _predict_table()
    df["probability"] = df["probability"].astype(object)
    df.loc[0, "probability"], df.loc[1, "probability"], df.loc[2, "label"] = "nan", "abc", ""
    df.to_csv(tmp_path / "p.csv", index=False)
    out = tmp_path / "r"
    assert main(["-q", "report", str(tmp_path / "p.csv"), "--out", str(out), "--no-pdf", "--allow-partial"]) == 0
    c = json.loads((out / "metrics.json").read_text())["cohort"]
    assert c["n_images_evaluated"] == 57 and c["rejected_by_reason"] == {"NOT_SCORED": 2, "NO_LABEL": 1}


def test_a_failed_report_write_leaves_no_partial_files(tmp_path, monkeypatch, capsys):
    """ENOSPC while the second figure is written: no lone roc.svg, no staging folder, the error
    names the user's folder."""
    import cxr_cad.report.figures as figures

    _predict_table().to_csv(tmp_path / "p.csv", index=False)
    real = figures.atomic_write_text
    calls = []

    def full_after_one(path, text, **kw):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text, **kw)

    monkeypatch.setattr(figures, "atomic_write_text", full_after_one)
    out = tmp_path / "r"
    assert main(["report", str(tmp_path / "p.csv"), "--out", str(out), "--no-pdf", "--bootstrap", "100"]) == 1
    err = _errors(capsys)
    assert len(err) == 1 and str(out) in err[0] and "No space left" in err[0] and ".cxr-cad" not in err[0]
    assert sorted(os.listdir(out)) == []


def test_report_on_a_real_full_disk_leaves_nothing(tmp_path, full_disk):
    disk, _ = full_disk
    _predict_table().to_csv(tmp_path / "p.csv", index=False)
    out = disk / "rep"
    o = run_cli(["report", tmp_path / "p.csv", "--out", out, "--no-pdf", "--bootstrap", "100"])
    assert o.rc == 1 and not o.has_traceback, o.stderr
    assert str(out) in o.last_line
    assert not out.exists() or sorted(os.listdir(out)) == []


def test_evaluate_scratch_is_inside_out_and_removed_on_sigterm(tmp_path, bundle, monkeypatch, capsys):
    import cxr_cad.api._report_evaluate as rep

    write_png_cohort(tmp_path / "c", n_patients=4, images_per_patient=1, size=32)
    out = tmp_path / "ev"
    (out / ".cxr-cad-evaluate-stale").mkdir(parents=True)  # left by a kill -9'd run
    (out / ".cxr-cad-evaluate-stale" / "predictions.csv").write_text("x")
    seen = []
    real = rep._scores

    def scores_then_term(model, manifest_path, work, options, label):
        seen.append(work)
        result = real(model, manifest_path, work, options, label)
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stopping the job
        return result

    monkeypatch.setattr(rep, "_scores", scores_then_term)
    rc = main(
        ["evaluate", "--model", str(bundle), "--manifest", str(tmp_path / "c" / "manifest.csv")]
        + ["--out", str(out), "--workers", "0", "--device", "cpu", "--no-pdf", "--bootstrap", "100"]
    )
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    assert seen and seen[0].parent.parent == out and seen[0].parent.name.startswith(".cxr-cad-evaluate-")
    assert not seen[0].exists()
    assert sorted(os.listdir(out)) == []  # the stale scratch went too
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

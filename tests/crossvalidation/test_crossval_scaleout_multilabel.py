"""Multi-label ``crossval --fold K`` jobs + ``crossval --merge RUN`` give exactly what one
process gives, and the merge refuses what it refuses for binary (exit 2)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from cxr_cad.cli import main
from tests.crossvalidation.test_crossval_scaleout import ARGS
from tests.factories.synth import write_multilabel_cohort

CONFIG = "data:\n  task: multilabel\n  classes: [Opacity, Other]\n  min_positives: 1\nforce: true\n"


@pytest.fixture(scope="module")
def ml_runs(tmp_path_factory):
    """(a) one process; (b) folds 1, 2, 0 as separate jobs, then the merge (with the report)."""
    root = tmp_path_factory.mktemp("scaleout_ml")
    manifest, config = root / "manifest.csv", root / "multilabel.yaml"
    write_multilabel_cohort(root / "cohort", n_patients=12).to_csv(manifest, index=False)
    config.write_text(CONFIG)
    common = ["--manifest", str(manifest), "--config", str(config), *ARGS]
    one, parts = root / "one", root / "parts"
    assert main(["-q", "crossval", "--out", str(one), *common, "--final", "retrain", "--no-report"]) == 0
    for k in (1, 2, 0):
        assert main(["-q", "crossval", "--out", str(parts), *common, "--fold", str(k)]) == 0
    assert not (parts / "oof_predictions.csv").exists()  # a fold job pools nothing
    snapshot = root / "parts-before-merge"
    shutil.copytree(parts, snapshot, ignore=shutil.ignore_patterns("cache"))
    assert main(["-q", "crossval", "--merge", str(parts), "--final", "retrain", "--bootstrap", "100", "--no-pdf"]) == 0
    return manifest, one, parts, snapshot


def _metrics(run):
    metrics = json.loads((run / "cv_metrics.json").read_text())
    assert metrics["final"].pop("bundle") == str(run / "final" / "model.pt")
    return metrics


def test_multilabel_fold_jobs_and_merge_equal_one_process(ml_runs):
    _, one, parts, _ = ml_runs
    for name in ("oof_predictions.csv", "folds.csv"):
        assert (one / name).read_bytes() == (parts / name).read_bytes(), name
    a, b = _metrics(one), _metrics(parts)
    assert a == b  # per-finding AUCs + CIs, per-fold table, fold thresholds, final model's thresholds
    assert b["task"] == "multilabel" and [f["status"] for f in b["folds"]] == ["trained"] * 3
    assert set(b["folds"][0]["thresholds"]) == {"Opacity", "Other"}
    assert json.loads((parts / "crossval.json").read_text())["task"] == "multilabel"
    assert "Findings overview" in (parts / "report" / "report.html").read_text()


def test_multilabel_merge_refuses_missing_folds_other_manifest_and_ensemble(ml_runs, tmp_path, capsys):
    manifest, _, _, snapshot = ml_runs
    run = tmp_path / "run"
    shutil.copytree(snapshot, run)
    (run / "folds" / "2" / "fold.json").unlink()  # fold 2 never finished
    capsys.readouterr()
    assert main(["-q", "crossval", "--merge", str(run), "--no-report"]) == 2
    assert "fold(s) 2 of 3 are not finished" in capsys.readouterr().err
    assert not (run / "oof_predictions.csv").exists()
    shutil.rmtree(run)
    shutil.copytree(snapshot, run)
    other = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    other.loc[0, "finding_Other"] = "0" if other.loc[0, "finding_Other"] == "1" else "1"
    other.to_csv(tmp_path / "other.csv", index=False)
    assert main(["-q", "crossval", "--merge", str(run), "--manifest", str(tmp_path / "other.csv"), "--no-report"]) == 2
    assert "manifest_hash" in capsys.readouterr().err
    assert main(["-q", "crossval", "--merge", str(run), "--final", "ensemble", "--no-report"]) == 2
    assert "--final ensemble is not available" in capsys.readouterr().err
    assert not (run / "oof_predictions.csv").exists()

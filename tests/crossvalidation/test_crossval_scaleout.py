"""``crossval --fold K`` jobs + ``crossval --merge RUN`` give exactly what one process gives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cxr_cad.cli import main
from tests.factories.synth import write_png_cohort

REPO = Path(__file__).resolve().parents[2]
ARGS = [
    "--folds",
    "3",
    "--init",
    "none",
    "--epochs",
    "1",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--bootstrap",
    "100",
    "--device",
    "cpu",
    "--precision",
    "fp32",
]


def _fold_job_in_subprocess(manifest: Path, out: Path, k: int) -> None:
    """One fold as a separate process, as a Slurm array task would run it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "cxr_cad", "-q", "crossval", "--manifest", str(manifest), "--out", str(out)]
    proc = subprocess.run([*cmd, *ARGS, "--fold", str(k)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"fold {k} of 3: trained" in proc.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(a) one process; (b) folds 2 (own process), 1, 0 as separate jobs, then the merge."""
    root = tmp_path_factory.mktemp("scaleout")
    write_png_cohort(root / "cohort", n_patients=12, images_per_patient=2, size=48)
    manifest = root / "cohort" / "manifest.csv"
    one, parts = root / "one", root / "parts"
    assert (
        main(
            [
                "-q",
                "crossval",
                "--manifest",
                str(manifest),
                "--out",
                str(one),
                *ARGS,
                "--final",
                "ensemble",
                "--no-report",
            ]
        )
        == 0
    )
    _fold_job_in_subprocess(manifest, parts, 2)
    for k in (1, 0):
        assert main(["-q", "crossval", "--manifest", str(manifest), "--out", str(parts), *ARGS, "--fold", str(k)]) == 0
    assert (parts / "cache" / "fold-0").is_dir() and (parts / "cache" / "fold-2").is_dir()  # no shared cache files
    assert not (parts / "oof_predictions.csv").exists()  # a fold job pools nothing
    snapshot = root / "parts-before-merge"
    shutil.copytree(parts, snapshot, ignore=shutil.ignore_patterns("cache"))
    assert main(["-q", "crossval", "--merge", str(parts), "--final", "ensemble", "--bootstrap", "100", "--no-pdf"]) == 0
    return manifest, one, parts, snapshot


def _metrics(run: Path) -> dict:
    metrics = json.loads((run / "cv_metrics.json").read_text())
    assert metrics["final"].pop("bundle") == str(run / "final" / "model.pt")
    return metrics


def test_fold_jobs_and_merge_equal_one_process_exactly(runs):
    _, one, parts, _ = runs
    for name in ("oof_predictions.csv", "roc_curves.csv", "folds.csv"):
        assert (one / name).read_text() == (parts / name).read_text(), name
    pd.testing.assert_frame_equal(pd.read_csv(one / "oof_predictions.csv"), pd.read_csv(parts / "oof_predictions.csv"))
    a, b = _metrics(one), _metrics(parts)
    assert a == b  # pooled AUC + CIs, per-fold table, thresholds, best epochs, final-model record
    assert [f["status"] for f in b["per_fold"]] == ["trained"] * 3
    assert b["final"]["kind"] == "ensemble" and b["final"]["members"] == 3
    for k in range(3):  # each fold trained the same network
        assert (one / "folds" / str(k) / "heldout_predictions.csv").read_text() == (
            parts / "folds" / str(k) / "heldout_predictions.csv"
        ).read_text()
    # the merge wrote the report, named after the manifest file as a one-process run names it
    report = json.loads((parts / "report" / "metrics.json").read_text())
    assert "manifest.csv" in json.dumps(report)


def test_merge_refuses_missing_folds_and_names_them(runs, tmp_path, capsys):
    _, _, _, snapshot = runs
    run = tmp_path / "run"
    shutil.copytree(snapshot, run)
    shutil.rmtree(run / "folds" / "1")
    (run / "folds" / "2" / "fold.json").unlink()  # fold 2 never finished
    capsys.readouterr()
    assert main(["-q", "crossval", "--merge", str(run), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "fold(s) 1, 2 of 3 are not finished" in err
    assert not (run / "oof_predictions.csv").exists()


def test_merge_refuses_folds_run_with_other_settings(runs, tmp_path, capsys):
    manifest, _, _, snapshot = runs
    run = tmp_path / "run"
    shutil.copytree(snapshot, run)
    record = json.loads((run / "folds" / "0" / "fold.json").read_text())
    record["fingerprint"] = "0" * 64  # as a fold job started with another --lr would record
    (run / "folds" / "0" / "fold.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["-q", "crossval", "--merge", str(run), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "fold(s) 0 were run with a different config" in err
    # settings named on the merge command line must be the folds' own
    assert main(["-q", "crossval", "--merge", str(run), "--no-report", "--lr", "0.5"]) == 2
    assert "settings differ" in capsys.readouterr().err
    assert main(["-q", "crossval", "--merge", str(run), "--no-report", "--folds", "4"]) == 2
    # another manifest (one label changed): refused before pooling
    other = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    other.loc[0, "label"] = "NORMAL" if other.loc[0, "label"] == "PNEUMONIA" else "PNEUMONIA"
    other_path = manifest.parent / "other.csv"
    other.to_csv(other_path, index=False)
    assert main(["-q", "crossval", "--merge", str(run), "--manifest", str(other_path), "--no-report"]) == 2
    assert "manifest_hash" in capsys.readouterr().err


def test_fold_job_usage_errors(tmp_path, capsys):
    m = tmp_path / "m.csv"
    m.write_text("path,sop_instance_uid,patient_id,label\n")
    assert main(["crossval", "--manifest", str(m), "--out", str(tmp_path / "r"), "--folds", "3", "--fold", "3"]) == 2
    assert "--fold must be one of 0..2" in capsys.readouterr().err
    assert main(["crossval", "--fold", "0", "--merge", str(tmp_path)]) == 2  # one or the other
    assert main(["crossval", "--merge", str(tmp_path / "none")]) == 2
    assert main(["crossval", "--merge", str(tmp_path)]) == 2  # no crossval.json there
    assert "holds no cross-validation" in capsys.readouterr().err
    assert main(["crossval", "--folds", "3"]) == 2  # neither a manifest nor --merge

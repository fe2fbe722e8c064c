"""``cxr-cad crossval`` on a tiny generated cohort: coverage, patient grouping, resume, metrics."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from cxr_cad.cli import main
from cxr_cad.config import load_config
from cxr_cad.crossvalidation.run import final_epochs, fold_check
from cxr_cad.metrics import roc_auc, sensitivity_policy
from cxr_cad.model import load_bundle
from tests.factories.synth import write_png_cohort

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
]


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    manifest = write_png_cohort(root / "cohort", n_patients=12, images_per_patient=2, size=48)
    out = root / "run"
    argv = ["-q", "crossval", "--manifest", str(root / "cohort" / "manifest.csv"), "--out", str(out), *ARGS]
    assert main([*argv, "--final"]) == 0
    return manifest, out, argv


def _read(out):
    oof = pd.read_csv(out / "oof_predictions.csv", dtype={"patient_id": str})
    metrics = json.loads((out / "cv_metrics.json").read_text())
    return oof, metrics


def test_every_image_once_and_no_patient_in_two_folds(cv_run):
    manifest, out, _ = cv_run
    oof, metrics = _read(out)
    assert len(oof) == len(manifest)
    assert sorted(oof["row"]) == list(range(len(manifest)))
    assert sorted(oof["sop_instance_uid"]) == sorted(manifest["sop_instance_uid"])
    assert oof["probability"].between(0, 1).all()
    assert (oof.groupby("patient_id")["fold"].nunique() == 1).all()
    assert set(oof["fold"]) == {0, 1, 2}
    folds = pd.read_csv(out / "folds.csv", dtype=str)
    assert folds["fold"].astype(int).tolist() == oof["fold"].tolist()
    record = json.loads((out / "crossval.json").read_text())
    assert record["fold_check"]["patients_in_several_folds"] == 0
    assert record["fold_check"]["duplicate_images_across_folds"] == 0
    # each fold's model never saw the held-out patients (its own split.csv)
    for k in range(3):
        split = pd.read_csv(out / "folds" / str(k) / "split.csv", dtype=str)
        held_out = set(oof.loc[oof["fold"] == k, "patient_id"])
        assert held_out.isdisjoint(set(split["patient_id"]))
        assert (out / "folds" / str(k) / "model.pt").exists()
        assert (out / "folds" / str(k) / "train_log.csv").exists()
    assert metrics["settings"]["fold_check"]["patients_in_several_folds"] == 0


def test_metrics_agree_with_predictions_file(cv_run):
    _, out, _ = cv_run
    oof, metrics = _read(out)
    y = (oof["label"] == "PNEUMONIA").astype(int)
    assert (oof["y_true"] == y).all()
    assert metrics["pooled"]["auc_delong"]["auc"] == pytest.approx(roc_auc(y, oof["probability"]), abs=1e-12)
    assert metrics["pooled"]["auc_bootstrap"]["auc"] == pytest.approx(roc_auc(y, oof["probability"]), abs=1e-12)
    for k, entry in enumerate(metrics["per_fold"]):
        part = oof[oof["fold"] == k]
        assert entry["auc"]["auc"] == pytest.approx(roc_auc(part["y_true"], part["probability"]))
        bundle = load_bundle(out / "folds" / str(k) / "model.pt")
        assert entry["threshold"] == pytest.approx(bundle.threshold)
        assert np.allclose(part["threshold"], bundle.threshold)
        assert entry["best_epoch"] == 1 and entry["status"] == "trained"
    decided = np.where(oof["probability"] >= oof["threshold"], "PNEUMONIA", "NORMAL")
    assert (oof["decision"] == decided).all()
    assert metrics["best_epochs"] == [1, 1, 1]
    roc = pd.read_csv(out / "roc_curves.csv")
    assert set(roc["curve"]) == {"fold0", "fold1", "fold2", "mean", "pooled"}
    assert len(metrics["roc"]["mean"]["fpr"]) == 101


def test_final_bundle_uses_cv_choices(cv_run):
    _, out, _ = cv_run
    _, metrics = _read(out)
    bundle = load_bundle(out / "final" / "model.pt")
    oof, _ = _read(out)
    # the configured policy (the default sensitivity target) on the pooled out-of-fold predictions
    target = load_config().threshold.target_sensitivity
    expected = sensitivity_policy(oof["y_true"].to_numpy(), oof["probability"].to_numpy(), target)
    assert bundle.threshold == pytest.approx(expected["threshold"])
    assert bundle.threshold_selection["method"] == "sensitivity"
    assert bundle.threshold_selection["params"]["target"] == target
    assert metrics["final"]["threshold_method"] == "pooled out-of-fold sensitivity"
    assert "out-of-fold" in bundle.threshold_selection["chosen_on"]["description"]
    assert metrics["final"]["epochs"] == 1
    assert json.loads((out / "final" / "result.json").read_text())["epochs_run"] == 1


def test_rerun_skips_finished_folds_and_resumes_interrupted(cv_run, capsys):
    _, out, argv = cv_run
    before = {k: os.stat(out / "folds" / str(k) / "model.pt").st_mtime_ns for k in range(3)}
    oof_before = pd.read_csv(out / "oof_predictions.csv")
    # fold 1 "interrupted" after its last epoch's checkpoint, before the bundle was written
    (out / "folds" / "1" / "result.json").unlink()
    (out / "folds" / "1" / "model.pt").unlink()
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "fold 0: finished before" in printed and "fold 2: finished before" in printed
    assert "fold 1: resumed" in printed
    assert os.stat(out / "folds" / "0" / "model.pt").st_mtime_ns == before[0]
    assert os.stat(out / "folds" / "2" / "model.pt").st_mtime_ns == before[2]
    oof_after = pd.read_csv(out / "oof_predictions.csv")
    pd.testing.assert_frame_equal(oof_before.drop(columns=["probability"]), oof_after.drop(columns=["probability"]))
    np.testing.assert_allclose(oof_before["probability"], oof_after["probability"], atol=1e-6)


def test_rerun_with_other_settings_is_refused(cv_run, capsys):
    _, out, argv = cv_run
    changed = [a if a != "3" else "4" for a in argv]  # --folds 4
    assert main(changed) == 2
    assert "n_folds" in capsys.readouterr().err
    assert main([*argv, "--lr", "0.5"]) == 2


def test_folds_record_forced_guards_and_the_selection(cv_run):
    _, out, _ = cv_run
    for k in range(3):
        result = json.loads((out / "folds" / str(k) / "result.json").read_text())
        assert result["selection"]["criterion"] == "auc_then_loss"
        # every fold's inner split has both classes and enough training images; its 2 validation
        # images are too few for the chance guard (kept with a warning), so nothing was forced
        assert result["forced"] == []
        training = load_bundle(out / "folds" / str(k) / "model.pt").meta["extra"]["training"]
        assert training["forced"] == [] and training["selection"] == result["selection"]


def test_usage_errors(tmp_path):
    assert main(["crossval", "--manifest", "x.csv", "--out", str(tmp_path), "--folds", "1"]) == 2
    assert main(["crossval", "--manifest", str(tmp_path / "missing.csv"), "--out", str(tmp_path)]) == 2


def test_final_epochs_and_fold_check():
    assert final_epochs([3, 5, 4], 20) == 4
    assert final_epochs([3, 4], 20) == 4  # median 3.5 rounds up
    assert final_epochs([None, None], 20) == 20
    df = pd.DataFrame(
        {"patient_id": ["a", "a", "b", "c"], "label": ["N", "N", "P", "P"], "sha256": ["x", "y", "x", "z"]}
    )
    check = fold_check(df, np.array([0, 0, 1, 1]), group_col="patient_id", label_col="label")
    assert check["patients_in_several_folds"] == 0 and check["duplicate_images_across_folds"] == 1
    assert check["per_fold"][0] == {"fold": 0, "n_images": 2, "n_patients": 1, "labels": {"N": 2}}
    bad = fold_check(df, np.array([0, 1, 1, 1]), group_col="patient_id", label_col="label")
    assert bad["patients_in_several_folds"] == 1


def test_final_ensemble_is_one_bundle_averaging_the_folds(cv_run, tmp_path):
    """``--final ensemble``: the fold models as one bundle; softmax of its output = mean probability,
    and ``cxr-cad predict`` scores it like any bundle."""
    from cxr_cad.crossvalidation.final import PooledThreshold
    from cxr_cad.crossvalidation.run import ensemble_final
    from cxr_cad.manifest import read_manifest
    from cxr_cad.training.loop import predict_probabilities

    _, out, _ = cv_run
    manifest = out.parent / "cohort" / "manifest.csv"
    df = read_manifest(manifest, require_labels=True)
    folds = [out / "folds" / str(k) / "model.pt" for k in range(3)]
    info = ensemble_final(df, tmp_path, folds, PooledThreshold(0.42, "youden", {}), [0.4, 0.5, 0.6])
    bundle = load_bundle(info["bundle"])
    assert info["members"] == 3 and bundle.meta["arch"]["members"] == 3 and bundle.threshold == 0.42
    assert bundle.meta["extra"]["crossval"]["final"] == "ensemble"
    rows = df.head(6)
    mean = np.mean([predict_probabilities(f, rows, device="cpu", precision="fp32") for f in folds], axis=0)
    ens = predict_probabilities(bundle, rows, device="cpu", precision="fp32")
    np.testing.assert_allclose(ens, mean, atol=1e-5)
    assert np.ptp(mean) > 0  # the folds disagree somewhere: a real average
    assert (
        main(
            [
                "-q",
                "predict",
                "--model",
                info["bundle"],
                str(manifest),
                "--out",
                str(tmp_path / "pred"),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    pred = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(pred) == len(df)


def test_crossval_final_option_parses(tmp_path, capsys):
    assert main(["crossval", "--manifest", "m.csv", "--out", str(tmp_path), "--final", "bagging"]) == 2
    assert "ensemble" in capsys.readouterr().err

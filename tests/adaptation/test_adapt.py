"""``cxr-cad adapt`` on a generated cohort with a tiny bundle (64 px ResNet18 whose head was fitted
on synthetic images; tests/inference/test_predict.py::make_bundle): each ladder step, its
provenance, the exclusion of site rows from evaluation, and that ``cxr-cad predict`` with the
child bundle gives exactly the probabilities the comparison was computed from."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_cad.cli import main
from cxr_cad.metrics import roc_auc, youden_threshold
from cxr_cad.model import load_bundle
from tests.factories.synth import write_png_cohort
from tests.inference.test_predict import make_bundle

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("parent") / "model.pt")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A labelled site: 30 patients x 2 PNGs (96 px), with a manifest."""
    root = tmp_path_factory.mktemp("site")
    write_png_cohort(root, n_patients=30, images_per_patient=2, seed=7)
    return root / "manifest.csv"


def adapt(parent, site, out, method, *extra) -> int:
    return main(
        ["-q", "adapt", "--model", str(parent), "--manifest", str(site), "--method", method, "--out", str(out),
         "--device", "cpu", "--precision", "fp32", "--batch-size", "16", *extra]
    )  # fmt: skip


def predict(bundle, manifest, out) -> pd.DataFrame:
    code = main(["-q", "predict", str(manifest), "--model", str(bundle), "--out", str(out), "--workers", "0",
                 "--device", "cpu", "--precision", "fp32"])  # fmt: skip
    assert code == 0
    return pd.read_csv(out / "predictions.csv")


def probabilities_by_path(table: pd.DataFrame, column: str) -> dict[str, float]:
    return {str(p): float(v) for p, v in zip(table["path"], table[column])}


def test_threshold_moves_to_the_site_youden_point_with_provenance(tmp_path, parent, site):
    out = tmp_path / "thr"
    assert adapt(parent, site, out, "threshold", "--n-site", "24", "--seed", "3") == 0
    child, par = load_bundle(out / "model.pt"), load_bundle(parent)
    rows = pd.read_csv(out / "site_rows.csv", dtype=str)
    meta = child.meta["extra"]["adaptation"]
    assert meta["method"] == "threshold" and meta["n_site"] == len(rows) and meta["parent_bundle_sha256"] == par.sha256
    assert child.parent_bundle_sha256 == par.sha256 and 20 <= len(rows) <= 28
    assert set(rows["label"]) == {"NORMAL", "PNEUMONIA"}  # stratified
    # the site's Youden point of the parent's own scores of the site rows
    manifest = pd.read_csv(site, dtype=str)
    scored = predict(parent, site, tmp_path / "p")
    scored["sop_instance_uid"] = scored["sop_instance_uid"].astype(str)
    site_scores = scored[scored["sop_instance_uid"].isin(set(rows["sop_instance_uid"]))]
    assert len(site_scores) == len(rows)
    y = (site_scores["label"] == "PNEUMONIA").to_numpy().astype(int)
    assert child.threshold == pytest.approx(youden_threshold(y, site_scores["probability"].to_numpy()), abs=2e-6)
    assert child.threshold_method == "youden" and child.threshold_selection["chosen_on"]["n"] == len(rows)
    # evaluation: the manifest's other patients only, every one of them
    ev = pd.read_csv(out / "eval_predictions.csv", dtype={"patient_id": str})
    assert set(ev["patient_id"]).isdisjoint(set(rows["patient_id"]))
    assert len(ev) + len(rows) == len(manifest)
    comp = json.loads((out / "comparison.json").read_text())
    assert comp["n"] == len(ev) and comp["child"]["threshold"] == pytest.approx(child.threshold)
    assert comp["paired_delong_child_minus_parent"]["diff"] == pytest.approx(0.0, abs=1e-12)  # same scores
    assert "## Adaptation" in (out / "model_card.md").read_text()


def test_recalibrate_is_monotone_keeps_auc_and_predict_applies_it(tmp_path, parent, site):
    out = tmp_path / "cal"
    assert adapt(parent, site, out, "recalibrate", "--n-site", "30", "--calibration", "platt") == 0
    child = load_bundle(out / "model.pt")
    cal = child.threshold_selection["params"]["calibration"]
    assert child.threshold_method == "calibrated" and child.threshold == 0.5 and cal["kind"] == "platt"
    ev = pd.read_csv(out / "eval_predictions.csv")
    y = (ev["label"] == "PNEUMONIA").to_numpy().astype(int)
    order = np.argsort(ev["parent_probability"].to_numpy(), kind="mergesort")
    assert np.all(np.diff(ev["child_probability"].to_numpy()[order]) >= -1e-12)
    assert roc_auc(y, ev["child_probability"]) == pytest.approx(roc_auc(y, ev["parent_probability"]), abs=1e-9)
    assert not np.allclose(ev["child_probability"], ev["parent_probability"], atol=1e-3)
    # predict with the child applies the calibration; with the parent (no calibration) it is the raw softmax
    eval_manifest = tmp_path / "eval.csv"
    ev[["path", "label", "patient_id", "sop_instance_uid"]].to_csv(eval_manifest, index=False)
    child_pred = predict(out / "model.pt", eval_manifest, tmp_path / "pc")
    parent_pred = predict(parent, eval_manifest, tmp_path / "pp")
    want_child, want_parent = (
        probabilities_by_path(ev, "child_probability"),
        probabilities_by_path(ev, "parent_probability"),
    )
    for table, want in ((child_pred, want_child), (parent_pred, want_parent)):
        got = probabilities_by_path(table, "probability")
        assert got.keys() == want.keys()
        assert max(abs(got[k] - want[k]) for k in got) < 2e-6
    decisions = child_pred["decision"] == "PNEUMONIA"
    assert np.array_equal(decisions.to_numpy(), (child_pred["probability"] >= 0.5).to_numpy())
    summary = json.loads((tmp_path / "pc" / "summary.json").read_text())
    assert summary["calibration"]["kind"] == "platt"
    assert json.loads((tmp_path / "pp" / "summary.json").read_text())["calibration"] is None


def test_head_refit_recovers_a_deliberately_shifted_site(tmp_path, parent):
    """A site whose label convention is the parent's reversed: the parent ranks it backwards
    (AUC < 0.5); refitting the head on 30 site images turns that around on the other patients."""
    root = tmp_path / "shifted"
    df = write_png_cohort(root, n_patients=40, images_per_patient=2, seed=11)
    df["label"] = df["label"].map({"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"})
    df.to_csv(root / "manifest.csv", index=False)
    out = tmp_path / "head"
    assert adapt(parent, root / "manifest.csv", out, "head", "--n-site", "30", "--seed", "1") == 0
    comp = json.loads((out / "comparison.json").read_text())
    assert comp["parent"]["auc"]["auc"] < 0.5
    assert comp["child"]["auc"]["auc"] > 0.8
    assert comp["child"]["balanced_accuracy"]["value"] > comp["parent"]["balanced_accuracy"]["value"]
    record = json.loads((out / "adapt.json").read_text())
    assert record["fit"]["C"] in record["fit"]["c_grid"] and record["fit"]["cv_folds"] >= 2
    # the child bundle itself gives the probabilities the comparison used; the backbone is the parent's
    child, par = load_bundle(out / "model.pt"), load_bundle(parent)
    for (k, v), (k2, v2) in zip(child.model.state_dict().items(), par.model.state_dict().items()):
        assert k == k2 and (k.startswith("fc.") or torch.equal(v, v2))
    ev = pd.read_csv(out / "eval_predictions.csv")
    eval_manifest = tmp_path / "eval.csv"
    ev[["path", "label", "patient_id", "sop_instance_uid"]].to_csv(eval_manifest, index=False)
    got = probabilities_by_path(predict(out / "model.pt", eval_manifest, tmp_path / "pc"), "probability")
    want = probabilities_by_path(ev, "child_probability")
    assert max(abs(got[k] - want[k]) for k in got) < 1e-4


def test_eval_manifest_drops_site_images_and_patients(tmp_path, parent, site):
    out = tmp_path / "ev"
    assert adapt(parent, site, out, "threshold", "--n-site", "20", "--eval-manifest", str(site)) == 0
    record = json.loads((out / "adapt.json").read_text())
    rows = pd.read_csv(out / "site_rows.csv", dtype=str)
    assert record["n_eval_excluded_as_site"] == len(rows)
    assert record["n_eval"] == len(pd.read_csv(site)) - len(rows)


def test_bad_arguments_are_usage_errors(tmp_path, parent, site, capsys):
    assert adapt(parent, site, tmp_path / "x", "threshold", "--n-site", "60") == 2
    assert "--n-site" in capsys.readouterr().err
    assert adapt(parent, site, tmp_path / "y", "recalibrate", "--cutoff", "1.5") == 2


def test_finetune_runs_one_epoch_from_the_parent(tmp_path, parent, site):
    from cxr_cad import api

    result = api.adapt(
        parent,
        site,
        tmp_path / "ft",
        method="finetune",
        n_site=40,
        seed=0,
        device="cpu",
        precision="fp32",
        finetune={
            "epochs": 1,
            "batch_size": 8,
            "model.image_size": 64,
            "runtime.workers": 0,
            "runtime.device": "cpu",
            "early_stopping.patience": 0,
        },
    )
    child, par = load_bundle(result.bundle_path), load_bundle(parent)
    assert child.parent_bundle_sha256 == par.sha256
    assert child.meta["extra"]["adaptation"]["method"] == "finetune"
    assert child.meta["init"]["parent_bundle_sha256"] == par.sha256
    assert json.loads((tmp_path / "ft" / "finetune" / "result.json").read_text())["epochs_run"] == 1
    assert result.comparison is not None and result.n_eval == 60 - result.n_site


def test_a_calibrated_training_threshold_is_stored_and_applied_by_predict(tmp_path, site):
    """``threshold.method: calibrated``: the bundle holds the calibration fitted on validation,
    its threshold is the cut-off, and predict's probability of a validation image is the
    calibration of the raw validation probability the run recorded."""
    from cxr_cad import api
    from cxr_cad.metrics import Calibration

    cfg = {
        "epochs": 1,
        "batch_size": 8,
        "model": {"init": "none", "image_size": 64},
        "runtime": {"workers": 0, "device": "cpu", "precision": "fp32"},
        "early_stopping": {"patience": 0},
        "threshold": {"method": "calibrated", "calibration": "temperature", "cutoff": 0.4},
    }
    result = api.run_training(site, cfg, tmp_path / "run")
    bundle = load_bundle(result.bundle_path)
    params = bundle.threshold_selection["params"]
    assert bundle.threshold_method == "calibrated" and bundle.threshold == 0.4
    cal = Calibration.from_dict(params["calibration"])
    assert cal.kind == "temperature" and params["cutoff"] == 0.4
    val = pd.read_csv(tmp_path / "run" / "val_predictions.csv")
    pred = predict(result.bundle_path, site, tmp_path / "pred")
    got = dict(zip(pred["sop_instance_uid"].astype(str), pred["probability"]))
    want = cal(val["probability"].to_numpy())
    for uid, w in zip(val["sop_instance_uid"].astype(str), want):
        assert got[uid] == pytest.approx(w, abs=2e-5)

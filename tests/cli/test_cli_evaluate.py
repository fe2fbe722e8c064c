"""``cxr-cad evaluate`` end to end on a tiny PNG cohort with a tiny random-weight bundle."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from cxr_cad.cli import main
from tests.factories.synth import write_png_cohort
from tests.report.test_report_render import _all_report_text

TAG = "QZXEVALPATIENT"


def _bundle(path, seed: int):
    from cxr_cad.model import build_resnet18, save_bundle
    from cxr_cad.transforms import TransformSpec

    torch.manual_seed(seed)
    save_bundle(
        path,
        build_resnet18(2, 1),
        classes=["NORMAL", "PNEUMONIA"],
        positive_class="PNEUMONIA",
        transform_spec=TransformSpec(image_size=64),
        threshold=0.5,
        threshold_method="fixed",
        manifest_hash="0" * 64,
    )
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    df = write_png_cohort(root, n_patients=10, images_per_patient=2, size=64, seed=1)
    df["patient_id"] = [f"{TAG}{i:03d}" for i in df["patient_id"].str[1:].astype(int)]
    df.to_csv(root / "manifest.csv", index=False)
    models = tmp_path_factory.mktemp("models")
    return root, _bundle(models / "model_a.pt", 0), _bundle(models / "model_b.pt", 1)


@pytest.fixture(scope="module")
def evaluated(cohort, tmp_path_factory):
    root, a, b = cohort
    out = tmp_path_factory.mktemp("eval") / "report"
    rc = main(
        [
            "-q",
            "evaluate",
            "--model",
            str(a),
            "--manifest",
            str(root / "manifest.csv"),
            "--out",
            str(out),
            "--workers",
            "0",
            "--bootstrap",
            "200",
            "--gradcam-per-group",
            "1",
            "--compare",
            str(b),
        ]
    )
    assert rc == 0
    return out


def test_evaluate_writes_the_full_report(evaluated):
    names = {p.name for p in evaluated.iterdir()}
    assert {
        "report.html",
        "report.pdf",
        "metrics.json",
        "predictions.csv",
        "roc.svg",
        "comparison_roc.svg",
        "decision_curve.svg",
        "precision_recall.svg",
    } <= names
    d = json.loads((evaluated / "metrics.json").read_text())
    assert d["cohort"]["n_images_evaluated"] == 20 and d["cohort"]["n_rejected"] == 0
    assert d["cohort"]["n_patients"] == 10
    assert d["model"]["name"] == "model_a.pt" and len(d["model"]["sha256"]) == 64
    assert len(d["cohort"]["manifest_hash"]) == 64
    assert d["comparison"]["name_b"] == "model_b.pt" and d["comparison"]["n"] == 20
    cases = d["gradcam"]["cases"]
    assert 1 <= len(cases) <= 4
    for c in cases:
        assert (evaluated / c["file"]).is_file()
        assert c["file"] in {p.name for p in evaluated.glob("gradcam_*.png")}
    assert "layer4" in d["gradcam"]["note"] and "scaled to its own maximum" in d["gradcam"]["note"]
    assert d["threshold_provenance"]["source"] == "bundle"
    assert d["threshold_provenance"]["text"].endswith("stored in the model bundle, fixed before this cohort")
    assert d["patient_level"]["n_patients"] == 10
    pred = pd.read_csv(evaluated / "predictions.csv")
    assert len(pred) == 20 and set(pred["label"]) == {"NORMAL", "PNEUMONIA"}


def test_gradcam_picks_the_right_cases(evaluated):
    d = json.loads((evaluated / "metrics.json").read_text())
    pred = pd.read_csv(evaluated / "predictions.csv")
    t = d["operating_points"][0]["threshold"]
    called = pred["probability"] >= t
    pos = pred["label"] == "PNEUMONIA"
    expect = {
        "tp": pred[called & pos]["probability"].max(),
        "fp": pred[called & ~pos]["probability"].max(),
        "tn": pred[~called & ~pos]["probability"].min(),
        "fn": pred[~called & pos]["probability"].min(),
    }
    for c in d["gradcam"]["cases"]:
        assert c["score"] == pytest.approx(expect[c["group"]], abs=1e-6)
        row = pred[pred["image_index"] == c["image_index"]].iloc[0]
        assert row["label"] == c["label"]


def test_evaluate_report_has_no_patient_identifiers(evaluated):
    texts = _all_report_text(evaluated)
    assert [k for k, v in texts.items() if TAG in v or "-0.png" in v or "-1.png" in v] == []


def test_evaluate_folder_cohort_accounts_for_every_file(cohort, tmp_path):
    root, a, _ = cohort
    out = tmp_path / "report"
    rc = main(
        [
            "-q",
            "evaluate",
            "--model",
            str(a),
            str(root),
            "--out",
            str(out),
            "--workers",
            "0",
            "--bootstrap",
            "200",
            "--gradcam-per-group",
            "0",
            "--no-pdf",
            "--include-identifiers",
        ]
    )
    assert rc == 0
    d = json.loads((out / "metrics.json").read_text())
    n_files = sum(1 for p in root.rglob("*") if p.is_file())
    assert d["cohort"]["n_images_evaluated"] + d["cohort"]["n_rejected"] == n_files
    assert d["cohort"]["n_images_evaluated"] == 20
    rejected = pd.read_csv(out / "rejected.csv")
    assert rejected["path"].str.endswith("manifest.csv").all()
    assert "path" in pd.read_csv(out / "predictions.csv").columns  # identifiers were asked for
    assert not (out / "report.pdf").exists()


@pytest.mark.parametrize("extra", [[], ["--manifest", "M.csv", "DIR"]])
def test_evaluate_needs_exactly_one_cohort(cohort, tmp_path, extra, capsys, monkeypatch):
    _, a, _ = cohort
    monkeypatch.chdir(tmp_path)
    (tmp_path / "M.csv").write_text("path,label\n")  # both exist: the refusal is about giving both
    (tmp_path / "DIR").mkdir()
    rc = main(["-q", "evaluate", "--model", str(a), "--out", str(tmp_path / "r"), *extra])
    assert rc == 2
    assert "either --manifest" in capsys.readouterr().err


def test_evaluate_modalities_and_no_voi_like_ingest(cohort, tmp_path, capsys):
    """--modalities decides which DICOM modalities a folder cohort keeps; --no-voi is accepted."""
    import shutil

    from tests.manifest.test_scan import write_dicom

    root, a, _ = cohort
    folder = tmp_path / "cohort"
    shutil.copytree(root, folder, ignore=shutil.ignore_patterns("*.csv"))
    write_dicom(folder / "PNEUMONIA" / "ct.dcm", modality="CT", patient_id="CTPAT")
    base = ["-q", "evaluate", "--model", str(a), str(folder), "--workers", "0", "--bootstrap", "100"]
    base += ["--gradcam-per-group", "0", "--no-pdf", "--include-identifiers"]

    def run(out, *extra):
        assert main([*base, "--out", str(tmp_path / out), *extra]) == 0
        d = json.loads((tmp_path / out / "metrics.json").read_text())
        return d["cohort"], pd.read_csv(tmp_path / out / "rejected.csv", dtype=str)

    cohort_default, rejected = run("default")
    assert rejected["reason"].tolist() == ["UNSUPPORTED_MODALITY"]
    assert cohort_default["n_images_evaluated"] == 20
    cohort_any, rejected = run("any", "--modalities", "any", "--no-voi")
    assert rejected.empty and cohort_any["n_images_evaluated"] == 21
    cohort_ct, rejected = run("ct", "--modalities", "ct")
    assert cohort_ct["n_images_evaluated"] == 21  # PNG has no Modality; the CT file is accepted
    assert main([*base, "--out", str(tmp_path / "bad"), "--modalities", ","]) == 2
    assert "modalities is empty" in capsys.readouterr().err

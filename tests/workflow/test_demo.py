"""The quickstart: bundled sample radiographs, their DICOM rendering, and `cxr-cad demo --fast`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_cad.cli import main
from cxr_cad.workflow.demo import VARIANTS, sample_dir, sample_table, write_demo_dicoms


def test_sample_is_balanced_whole_patients_small_and_attributed():
    df = sample_table()
    assert len(df) == 100 and df["label"].value_counts().to_dict() == {"NORMAL": 50, "PNEUMONIA": 50}
    assert df.groupby("patient_key")["label"].nunique().max() == 1  # one label per patient
    files = list((sample_dir() / "images").iterdir())
    assert sorted(f"images/{f.name}" for f in files) == sorted(df["file"])
    assert sum(f.stat().st_size for f in files) < 3_000_000
    for f in files[:10]:
        with Image.open(f) as im:
            assert im.mode == "L" and max(im.size) == 256
    text = (sample_dir().parent / "ATTRIBUTION.md").read_text()
    assert "CC BY 4.0" in text and "10.17632/rscbjbr9sj.2" in text and "Changes made" in text


def test_subset_keeps_whole_patients_and_balance():
    df = sample_table(24)
    full = sample_table()
    counts = df["label"].value_counts()
    assert abs(counts["NORMAL"] - counts["PNEUMONIA"]) <= 3
    for pid, n in df["patient_key"].value_counts().items():
        assert n == (full["patient_key"] == pid).sum()


def test_dicom_variants_decode_to_the_sample_pixels(tmp_path):
    from cxr_cad.io import read_image

    table = sample_table().iloc[:5]
    dicom_dir = write_demo_dicoms(tmp_path, table)
    labels = pd.read_csv(tmp_path / "labels.csv", dtype=str)
    assert set(labels.columns) == {"patient_id", "label"}
    seen = set()
    for i, row in enumerate(table.to_dict("records")):
        path = dicom_dir / row["label"] / (row["file"].split("/")[-1].rsplit(".", 1)[0] + ".dcm")
        pixels, meta = read_image(path)
        with Image.open(sample_dir() / row["file"]) as im:
            ref = np.asarray(im.convert("L"), dtype=np.float32)
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        syntax, bits, photometric = VARIANTS[i]
        seen.add((meta["transfer_syntax"], meta["photometric_interpretation"]))
        assert meta["patient_id"] == row["patient_key"] and meta["modality"] == "CR"
        assert int(meta["bits_stored"]) == bits and meta["photometric_interpretation"] == photometric
        assert pixels.shape == ref.shape
        # lossless variants are exact up to the 8->12-bit rounding; the JPEG one is the same JPEG
        assert np.abs(pixels - ref).max() < 0.01, (syntax, np.abs(pixels - ref).max())
    assert ("1.2.840.10008.1.2.1", "MONOCHROME1") in seen
    assert {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.50"} <= {s for s, _ in seen}


def test_rewrite_leaves_identical_files_alone(tmp_path):
    table = sample_table().iloc[:3]
    d = write_demo_dicoms(tmp_path, table)
    before = {p: p.stat().st_mtime_ns for p in d.rglob("*.dcm")}
    write_demo_dicoms(tmp_path, table)
    assert {p: p.stat().st_mtime_ns for p in d.rglob("*.dcm")} == before


def test_demo_fast_end_to_end_then_skips(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = out / "run" / "report" / "test"
    assert (report / "report.html").stat().st_size > 10_000 and (report / "report.pdf").is_file()
    assert f"open the report: {report / 'report.html'}" in printed and "AUC" in printed
    assert "note: the model's threshold" in printed and "it is illustrative" in printed  # said plainly
    metrics = json.loads((report / "metrics.json").read_text())
    n_test = len(pd.read_csv(out / "run" / "split" / "test.csv"))
    assert metrics["cohort"]["n_images_evaluated"] == n_test > 0
    # every image ingested: 24-ish DICOM files in, all accepted, patients disjoint across the split
    train = pd.read_csv(out / "run" / "split" / "train.csv", dtype=str)
    test = pd.read_csv(out / "run" / "split" / "test.csv", dtype=str)
    assert not set(train["patient_id"]) & set(test["patient_id"])
    assert len(train) + len(test) == len(list((out / "dicom").rglob("*.dcm")))
    run = json.loads((out / "run" / "run.json").read_text())
    assert [s["status"] for s in run["steps"]] == ["ran"] * 5
    assert main(["-q", "demo", "--fast", "--out", str(out)]) == 0
    run = json.loads((out / "run" / "run.json").read_text())
    assert [s["status"] for s in run["steps"]] == ["skipped"] * 5
    # an interrupted training step (record left "running") is resumed in place, not restarted
    record_path = out / "run" / "train" / "step.json"
    record = json.loads(record_path.read_text())
    record["status"] = "running"
    record_path.write_text(json.dumps(record))
    assert main(["-q", "demo", "--fast", "--out", str(out)]) == 0
    run = json.loads((out / "run" / "run.json").read_text())
    assert [s["status"] for s in run["steps"]][:3] == ["skipped", "skipped", "resumed"]
    assert (out / "run" / "report" / "test" / "report.html").is_file()


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--image-size", "16"]])
def test_demo_bad_options(tmp_path, argv):
    assert main(["demo", "--out", str(tmp_path / "d"), *argv]) == 2


def test_threshold_note_names_what_the_threshold_was_chosen_on(tmp_path):
    from cxr_cad.workflow.demo import DemoSettings, demo_workflow, threshold_note

    assert threshold_note(tmp_path) is None  # no training step yet
    (tmp_path / "train").mkdir()
    result = {"threshold": 0.4321, "threshold_method": "youden", "best_epoch": 9}
    result["threshold_detail"] = {"n": 21, "n_positive": 10, "n_negative": 11}
    (tmp_path / "train" / "result.json").write_text(json.dumps(result))
    note = threshold_note(tmp_path)
    assert "0.4321 (youden)" in note and "21 validation images (10 positive, 11 negative)" in note
    assert "epoch 9" in note and "illustrative" in note
    wf = demo_workflow(tmp_path, DemoSettings())
    assert wf["train"]["data"]["val_fraction"] == 0.3 and "illustrative" in wf["cohort"]["design"]

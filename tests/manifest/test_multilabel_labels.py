"""Multi-label findings: the NIH, columns and CheXpert layouts, uncertainty policies, the join,
`cxr-cad ingest --label-layout`, and patient-grouped folds stratified over findings (no torch)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_cad.cli import main
from cxr_cad.errors import ManifestError
from cxr_cad.manifest import multilabel_grouped_split, multilabel_patient_folds, read_manifest
from cxr_cad.manifest.multilabel import finding_matrix, join_multilabel, read_multilabel
from tests.factories.synth import synthetic_cxr

NIH = pd.DataFrame(
    {
        "Image Index": ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png"],
        "Finding Labels": ["Effusion|Mass", "Effusion", "No Finding", "Hernia"],
        "Patient ID": [1, 1, 2, 3],
    }
)


@pytest.fixture
def nih_folder(tmp_path):
    rng = np.random.default_rng(0)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for name in NIH["Image Index"]:
        Image.fromarray((synthetic_cxr(rng, 48) * 255).astype(np.uint8)).save(img_dir / name)
    NIH.to_csv(tmp_path / "Data_Entry.csv", index=False)
    return tmp_path


def test_nih_layout_reads_findings_and_no_finding():
    labels = read_multilabel(NIH, "nih")
    assert labels.findings == ["Effusion", "Hernia", "Mass"]
    assert labels.counts["Effusion"] == {"positive": 2, "negative": 2, "uncertain": 0, "blank": 0}
    kept = read_multilabel(NIH, "nih", findings=["Mass", "Effusion"])
    assert kept.findings == ["Mass", "Effusion"]  # the order given; Hernia dropped


def test_nih_no_finding_with_findings_is_refused():
    bad = NIH.copy()
    bad.loc[0, "Finding Labels"] = "No Finding|Mass"
    with pytest.raises(ManifestError, match="line 2 gives 'No Finding' together"):
        read_multilabel(bad, "nih")


def test_chexpert_uncertainty_policies_and_blank_is_unknown():
    raw = pd.DataFrame({"Path": ["a.png", "b.png", "c.png"], "Edema": [1.0, -1.0, None], "Mass": [0.0, 1.0, -1.0]})
    manifest = pd.DataFrame({"path": ["/x/a.png", "/x/b.png", "/x/c.png"], "sop_instance_uid": ["1", "2", "3"]})
    expected = {
        "ignore": [[1, 0], [-1, 1], [-1, -1]],
        "zeros": [[1, 0], [0, 1], [-1, 0]],
        "ones": [[1, 0], [1, 1], [-1, 1]],
    }
    for policy, want in expected.items():
        labels = read_multilabel(raw, "chexpert", uncertain=policy)
        assert labels.counts["Edema"] == {"positive": 1, "negative": 0, "uncertain": 1, "blank": 1}
        joined, report = join_multilabel(manifest, labels, base_dir="/x")
        assert report.matched_label_rows == 3
        np.testing.assert_array_equal(finding_matrix(joined, ["Edema", "Mass"]), want)
        assert labels.record()["uncertain"] == policy


def test_raw_uncertain_values_in_a_manifest_follow_the_training_policy():
    df = pd.DataFrame({"finding_A": ["1", "-1", "", "0"]})
    assert finding_matrix(df, ["A"], uncertain="ones")[:, 0].tolist() == [1, 1, -1, 0]
    assert finding_matrix(df, ["A"], uncertain="ignore")[:, 0].tolist() == [1, -1, -1, 0]
    with pytest.raises(ManifestError, match="finding_B"):
        finding_matrix(df, ["B"])


def test_columns_layout_detects_finding_columns_and_rejects_other_values():
    raw = pd.DataFrame({"sop_instance_uid": ["1", "2"], "A": [1, 0], "B": [0, 1], "note": ["x", "y"]})
    labels = read_multilabel(raw, "columns")
    assert labels.findings == ["A", "B"] and labels.key == "sop_instance_uid"
    raw["A"] = [1, -1]  # -1 is only meaningful in the CheXpert layout
    with pytest.raises(ManifestError, match="finding 'A'"):
        read_multilabel(raw, "columns", findings=["A", "B"])


def test_cli_ingest_nih_layout_writes_findings_patient_ids_and_task(nih_folder, capsys):
    out = nih_folder / "ingest"
    code = main(
        [
            "ingest",
            str(nih_folder / "images"),
            "--out",
            str(out),
            "--labels",
            str(nih_folder / "Data_Entry.csv"),
            "--label-layout",
            "nih",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    info = json.loads((out / "ingest.json").read_text())
    assert info["task"] == "multilabel"
    assert info["labels"]["multilabel"]["findings"] == ["Effusion", "Hernia", "Mass"]
    assert info["counts"]["positives_by_finding"] == {"Effusion": 2, "Hernia": 1, "Mass": 1}
    m = read_manifest(out / "manifest.csv").sort_values("path").reset_index(drop=True)
    assert m["label"].tolist() == ["Effusion|Mass", "Effusion", "No Finding", "Hernia"]
    assert m["patient_id"].tolist() == ["1", "1", "2", "3"]  # from the Patient ID column
    assert m["finding_Mass"].tolist() == ["1", "0", "0", "0"]
    assert "Effusion" in capsys.readouterr().out


def _cohort(n_patients=120, seed=0):
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_patients), rng.integers(1, 4, n_patients))
    y = (rng.random((len(pid), 5)) < [0.3, 0.1, 0.05, 0.4, 0.08]).astype(np.int8)
    y[rng.random(y.shape) < 0.05] = -1
    return pd.DataFrame({"patient_id": pid.astype(str)}), y


def test_folds_are_grouped_stratified_and_deterministic():
    df, y = _cohort()
    folds = multilabel_patient_folds(df, y, 5, seed=3)
    assert (pd.Series(folds).groupby(df["patient_id"]).nunique() == 1).all()  # no patient in two folds
    np.testing.assert_array_equal(folds, multilabel_patient_folds(df, y, 5, seed=3))
    pos = np.array([[(y[folds == f, k] == 1).sum() for f in range(5)] for k in range(y.shape[1])])
    # every finding spread over the folds much more evenly than random patient folds do
    rng = np.random.default_rng(0)
    groups = pd.factorize(df["patient_id"])[0]
    rand_spread = []
    for _ in range(50):
        rf = rng.integers(0, 5, groups.max() + 1)[groups]
        rand_spread.append(np.mean([np.ptp([(y[rf == f, k] == 1).sum() for f in range(5)]) for k in range(5)]))
    assert np.ptp(pos, axis=1).mean() < np.mean(rand_spread) / 2
    assert (pos.min(axis=1) >= 1).all()


def test_grouped_split_keeps_patients_together():
    df, y = _cohort(60, seed=1)
    tr, va = multilabel_grouped_split(df, y, 0.2, seed=0)
    assert set(df["patient_id"].iloc[tr]).isdisjoint(df["patient_id"].iloc[va])
    assert len(tr) + len(va) == len(df)
    assert 0.1 < len(va) / len(df) < 0.3

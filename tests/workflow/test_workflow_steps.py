"""Ingest and split steps of the workflow on small synthetic cohorts (no training)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cxr_cad.errors import ManifestError
from cxr_cad.workflow.pipeline import run_workflow
from cxr_cad.workflow.schema import validate_workflow


def _wf(**data):
    steps = data.pop("steps", ["ingest", "split"])
    return validate_workflow(
        {
            "steps": steps,
            "data": {"patient_id_pattern": r"^(P\d+)-", **data},
            "ingest": {"workers": 1},
            "split": {"test_fraction": 0.25},
        }
    )


def test_folder_ingest_then_patient_split(png_cohort, tmp_path):
    root, truth = png_cohort
    result = run_workflow(_wf(train=str(root)), tmp_path / "run")
    assert [o.status for o in result.outcomes] == ["ran", "ran"]
    man = pd.read_csv(tmp_path / "run" / "ingest" / "train" / "manifest.csv", dtype=str)
    assert len(man) == len(truth) and set(man["patient_id"]) == set(truth["patient_id"])
    assert (man["label"] == man["path"].str.split("/").str[-2]).all()  # label = class folder
    rejected = pd.read_csv(tmp_path / "run" / "ingest" / "train" / "rejected.csv", dtype=str)
    assert rejected["reason"].tolist() == ["NOT_DICOM"]  # the cohort's manifest.csv
    train = pd.read_csv(tmp_path / "run" / "split" / "train.csv", dtype=str)
    test = pd.read_csv(tmp_path / "run" / "split" / "test.csv", dtype=str)
    assert len(train) + len(test) == len(truth) and not set(train["patient_id"]) & set(test["patient_id"])
    assert set(test["label"]) == {"NORMAL", "PNEUMONIA"}
    # ingest.json has the one layout `cxr-cad ingest` writes (read by the model card and the report)
    info = json.loads((tmp_path / "run" / "ingest" / "train" / "ingest.json").read_text())
    assert info["counts"]["accepted"] == len(truth) and info["counts"]["rejected"] == 1
    assert info["counts"]["files"] == len(truth) + 1 and info["counts"]["unlabelled"] == 0
    assert info["policy"] == {
        "modalities": ["CR", "DX", "DR"],
        "reject_lateral": True,
        "apply_voi": True,
        "verify_pixels": False,
    }
    assert info["sources"] == [str(root)] and info["labels"]["source"] == "folders"
    assert info["manifest_hash"] and info["classes"] == ["NORMAL", "PNEUMONIA"]
    rec = json.loads((tmp_path / "run" / "ingest" / "step.json").read_text())
    assert rec["status"] == "done" and rec["inputs"]["train"].startswith("listing:")
    # a new file in the input folder changes the ingest fingerprint
    (root / "NORMAL" / "P9999-0.png").write_bytes((root / truth["path"][0]).read_bytes()[:-1] + b"\0")
    statuses = [o.status for o in run_workflow(_wf(train=str(root)), tmp_path / "run").outcomes]
    assert statuses[0] == "ran"


def test_manifest_input_keeps_its_labels(png_cohort, tmp_path):
    root, truth = png_cohort
    from cxr_cad.manifest import write_manifest

    man = truth.copy()
    man["path"] = [str(root / p) for p in man["path"]]
    man["label"] = "NORMAL"  # labels that differ from the folder names
    write_manifest(man, tmp_path / "m.csv")
    run_workflow(_wf(train=str(tmp_path / "m.csv"), steps=["ingest"]), tmp_path / "run")
    out = pd.read_csv(tmp_path / "run" / "ingest" / "train" / "manifest.csv", dtype=str)
    assert (out["label"] == "NORMAL").all() and len(out) == len(truth)


def test_labels_csv_by_patient_and_unlabelled_images_listed(png_cohort, tmp_path):
    root, truth = png_cohort
    pats = truth.drop_duplicates("patient_id")
    labels = pats.iloc[:-1][["patient_id", "label"]]  # the last patient has no label
    labels.to_csv(tmp_path / "labels.csv", index=False)
    result = run_workflow(
        _wf(train=str(root), train_labels=str(tmp_path / "labels.csv"), steps=["ingest"]), tmp_path / "run"
    )
    counts = result.outcomes[0].outputs["cohorts"]["train"]
    n_last = (truth["patient_id"] == pats["patient_id"].iloc[-1]).sum()
    assert counts["unlabelled"] == n_last and counts["images"] == len(truth) - n_last
    unl = pd.read_csv(tmp_path / "run" / "ingest" / "train" / "unlabelled.csv", dtype=str)
    assert len(unl) == n_last


def test_no_labels_at_all_is_an_error_naming_the_fix(png_cohort, tmp_path):
    root, _ = png_cohort
    (tmp_path / "labels.csv").write_text("patient_id,label\nNOBODY,NORMAL\n")
    with pytest.raises(ManifestError, match="data.train_labels"):
        run_workflow(
            _wf(train=str(root), train_labels=str(tmp_path / "labels.csv"), steps=["ingest"]), tmp_path / "run"
        )

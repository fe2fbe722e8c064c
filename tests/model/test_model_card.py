"""``model_card.md`` beside every bundle: content from the run folder, no patient identifiers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_cad.model import build_resnet18, save_bundle
from cxr_cad.modelcard import model_card_path, write_card_for_bundle
from cxr_cad.transforms import TransformSpec

PATIENT_TAG = "QZXCARDPATIENT"


def _run_folder(tmp_path, n=40, seed=0):
    """A run folder as train leaves it before save_bundle: split.csv and val_predictions.csv."""
    rng = np.random.default_rng(seed)
    labels = np.array(["NORMAL", "PNEUMONIA"])[rng.integers(0, 2, n)]
    split = pd.DataFrame(
        {
            "sop_instance_uid": [f"1.2.3.{i}" for i in range(n)],
            "patient_id": [f"{PATIENT_TAG}{i // 2:03d}" for i in range(n)],
            "label": labels,
            "split": np.where(np.arange(n) < 30, "train", "val"),
        }
    )
    split.to_csv(tmp_path / "split.csv", index=False)
    val = split[split.split == "val"].copy()
    val["y_true"] = (val["label"] == "PNEUMONIA").astype(int)
    val["probability"] = np.clip(val["y_true"] * 0.3 + rng.random(len(val)) * 0.7, 0, 1)
    val.to_csv(tmp_path / "val_predictions.csv", index=False)
    return split, val


def _save(path, **kw):
    torch.manual_seed(0)
    return _with_card(
        save_bundle(
            path,
            build_resnet18(2, 1),
            classes=["NORMAL", "PNEUMONIA"],
            positive_class="PNEUMONIA",
            transform_spec=TransformSpec(image_size=64),
            threshold=0.4321,
            threshold_method="youden",
            threshold_chosen_on={"n": 10, "description": "validation split"},
            manifest_hash="ab" * 32,
            init_record={"init": "none"},
            **kw,
        )
    )


def _with_card(path):
    write_card_for_bundle(path)  # what a training run does after save_bundle
    return path


def test_card_beside_bundle_has_every_section(tmp_path):
    from cxr_cad.metrics import delong_auc_ci

    split, val = _run_folder(tmp_path)
    path = _save(tmp_path / "model.pt")
    card = model_card_path(path)
    assert card == tmp_path / "model_card.md"
    text = card.read_text()
    for heading in (
        "## Intended use",
        "## Out-of-scope use",
        "## Training data",
        "## Architecture and initialisation",
        "## Preprocessing",
        "## Validation metrics",
        "## Threshold provenance",
        "## Known limitations",
        "## Software versions",
    ):
        assert heading in text, heading
    assert "ab" * 32 in text  # manifest hash
    train = split[split.split == "train"]
    n_norm = int((train.label == "NORMAL").sum())
    n_pneu = int((train.label == "PNEUMONIA").sum())
    assert f"| train | 30 | {n_norm} | {n_pneu} | {train.patient_id.nunique()} |" in text
    ci = delong_auc_ci(val["y_true"].to_numpy(), val["probability"].to_numpy())
    assert f"| AUC (DeLong) | {ci.auc:.4f} | {ci.low:.4f}-{ci.high:.4f} |" in text
    assert "0.432100" in text and "youden" in text  # threshold provenance
    assert '"intensity"' in text  # the stored transform spec
    assert "No external validation" in text
    assert PATIENT_TAG not in text  # counts only, never identifiers


def test_card_of_other_bundle_names_and_without_run_files(tmp_path):
    path = _save(tmp_path / "fold_model.pt")
    text = model_card_path(path).read_text()
    assert model_card_path(path).name == "fold_model.model_card.md"
    assert "No validation predictions beside the bundle" in text
    assert "not recorded" in text or "no split.csv" in text


def test_card_with_ingest_sources(tmp_path):
    from cxr_cad.modelcard import add_manifest_to_card

    _run_folder(tmp_path)
    path = _save(tmp_path / "model.pt")
    (tmp_path / "ingest").mkdir()
    (tmp_path / "ingest" / "ingest.json").write_text(
        json.dumps(
            {"sources": ["/data/site-a/cxr"], "policy": {"modalities": ["CR", "DX"]}, "labels": {"source": "folders"}}
        )
    )
    add_manifest_to_card(path, tmp_path / "ingest" / "manifest.csv")
    text = model_card_path(path).read_text()
    assert "Sources recorded at ingest: cxr" in text and '"modalities": ["CR", "DX"]' in text


def test_unwritable_card_is_an_output_error(tmp_path, monkeypatch):
    from cxr_cad import modelcard as card
    from cxr_cad.errors import OutputError

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(card.os, "replace", boom)
    with pytest.raises(OutputError, match="model card"):
        card.write_model_card(tmp_path / "model.pt", {"classes": ["A", "B"], "threshold": 0.5})

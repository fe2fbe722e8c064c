"""workflows/nih_cxr14_multilabel.yaml end to end on a tiny generated NIH-layout cohort
(ingest with the NIH layout, grouped CV stratified over findings, final model, findings report)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_cad.cli import main
from tests.factories.synth import synthetic_cxr

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def _nih_cohort(root: Path, n_patients: int = 16) -> Path:
    rng = np.random.default_rng(4)
    (root / "images").mkdir(parents=True)
    rows = []
    for p in range(n_patients):
        for k in range(2):
            opacity = p % 2 == 0
            name = f"{p + 1:08d}_{k:03d}.png"
            Image.fromarray((synthetic_cxr(rng, 48, opacity=opacity) * 255).astype(np.uint8)).save(
                root / "images" / name
            )
            found = (["Opacity"] if opacity else []) + (["Other"] if rng.random() < 0.4 else [])
            rows.append({"Image Index": name, "Finding Labels": "|".join(found) or "No Finding", "Patient ID": p + 1})
    pd.DataFrame(rows).to_csv(root / "Data_Entry.csv", index=False)
    return root


@pytest.mark.slow
def test_nih_multilabel_workflow(tmp_path, capsys):
    data = _nih_cohort(tmp_path / "nih")
    sets = [
        f"data.train={data / 'images'}",
        f"data.train_labels={data / 'Data_Entry.csv'}",
        "data.classes=Opacity,Other",
        "model.init=none",
        "model.image_size=32",
        "train.epochs=1",
        "train.force=true",
        "train.batch_size=8",
        "train.runtime.workers=0",
        "train.runtime.device=cpu",
        "train.data.min_positives=1",
        "crossval.folds=2",
        "report.bootstrap=100",
        "report.pdf=false",
        "ingest.workers=1",
    ]
    argv = ["-q", "run", str(WORKFLOWS / "nih_cxr14_multilabel.yaml"), "--out", str(tmp_path / "run")]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    run = tmp_path / "run"
    ingest = json.loads((run / "ingest" / "train" / "ingest.json").read_text())
    assert ingest["task"] == "multilabel" and ingest["labels"]["multilabel"]["layout"] == "nih"
    cv = json.loads((run / "report" / "crossval" / "metrics.json").read_text())
    assert cv["task"] == "multilabel" and [r["finding"] for r in cv["per_finding"]] == ["Opacity", "Other"]
    assert "Findings overview" in (run / "report" / "crossval" / "report.html").read_text()
    oof = pd.read_csv(run / "crossval" / "oof_predictions.csv")
    assert {"probability_Opacity", "decision_Other"} <= set(oof.columns) and len(oof) == 32

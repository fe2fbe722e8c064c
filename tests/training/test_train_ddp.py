"""`cxr-cad train` under torchrun: 2 CPU processes (gloo), DistributedDataParallel, 1 epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch.distributed as dist

from tests.factories.synth import write_png_cohort

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_two_process_ddp_training(tmp_path):
    write_png_cohort(tmp_path / "cohort", n_patients=20, images_per_patient=2, size=64, seed=1)
    out = tmp_path / "run"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CXR_CAD_NO_PROGRESS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "cxr_cad",
        "train",
        "--manifest",
        str(tmp_path / "cohort" / "manifest.csv"),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--image-size",
        "64",
        "--batch-size",
        "8",
        "--init",
        "none",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--lr",
        "0.01",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("bundle:") == 1  # only rank 0 reports
    assert (out / "model.pt").is_file() and (out / "result.json").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["runtime"]["world_size"] == 2
    log = pd.read_csv(out / "train_log.csv")
    assert log["epoch"].tolist() == [1] and log["images_per_s"].iloc[0] > 0
    # validation AUC over every validation image, gathered from both ranks, each exactly once
    preds = pd.read_csv(out / "val_predictions.csv")
    split = pd.read_csv(out / "split.csv")
    assert len(preds) == run["n_val"] == (split["split"] == "val").sum()
    assert set(preds["sop_instance_uid"]) == set(split.loc[split["split"] == "val", "sop_instance_uid"])
    assert 0.0 <= log["val_auc"].iloc[0] <= 1.0
    assert not list(out.glob(".*.tmp"))

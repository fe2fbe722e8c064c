"""Exports keep a multi-label model's outputs: one logit per finding in the bundle's order, and
predict with the exported model writes the same ``probability_<F>`` / ``decision_<F>`` columns
as the torch bundle (issue 24 item 5)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_cad.cli import main
from cxr_cad.config import load_config
from cxr_cad.training.trainer import train_model
from tests.factories.config import TINY_TRAIN
from tests.factories.synth import write_multilabel_cohort

pytest.importorskip("onnxruntime")

FINDINGS = ["Opacity", "Other"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlx")
    df = write_multilabel_cohort(root / "images", n_patients=16, seed=7, label_seed=2, unknown=0.0)
    cfg = load_config(
        None,
        {
            **TINY_TRAIN,
            "data.task": "multilabel",
            "data.classes": FINDINGS,
            "data.min_positives": 2,
            "data.val_fraction": 0.3,
            "data.cache_dir": str(root / "cache"),
        },
    )
    torch.manual_seed(0)
    bundle = train_model(df, root / "run", cfg).bundle_path
    manifest = root / "cohort.csv"
    df.to_csv(manifest, index=False)
    return root, bundle, manifest


def test_onnx_export_keeps_finding_order_and_predict_columns(trained, tmp_path):
    import onnx

    root, bundle, manifest = trained
    out = tmp_path / "onnx"
    assert main(["-q", "export", "--model", str(bundle), "--format", "onnx", "--out", str(out)]) == 0
    graph = onnx.load(str(out / "model.onnx")).graph
    assert len(graph.output) == 1 and graph.output[0].type.tensor_type.shape.dim[1].dim_value == len(FINDINGS)
    runs = {}
    for name, model, backend in (("torch", bundle, ["torch", "--precision", "fp32"]), ("onnx", out, ["onnxruntime"])):
        pred_dir = tmp_path / name
        argv = ["-q", "predict", str(manifest), "--model", str(model), "--out", str(pred_dir), "--workers", "0"]
        assert main([*argv, "--backend", *backend]) == 0
        runs[name] = pd.read_csv(pred_dir / "predictions.csv")
    a, b = runs["torch"], runs["onnx"]
    cols = [c for f in FINDINGS for c in (f"probability_{f}", f"decision_{f}")]
    assert [c for c in b.columns if c.startswith(("probability_", "decision_"))] == cols
    assert list(a.columns) == list(b.columns)
    for f in FINDINGS:
        np.testing.assert_allclose(a[f"probability_{f}"], b[f"probability_{f}"], atol=1e-4)

"""The engine trains, scores and cross-validates every registered network, not only ResNet18:
the network comes from ``model.arch`` and nothing in the engine names its layers."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from cxr_cad.config import load_config
from cxr_cad.crossvalidation.run import run_crossval
from cxr_cad.errors import ConfigError
from cxr_cad.inference.predict import PredictOptions, predict, prepare_for_inference
from cxr_cad.manifest import read_manifest
from cxr_cad.model import load_bundle
from cxr_cad.runtime import resolve_runtime
from cxr_cad.training.trainer import train_model
from tests.factories.config import TINY_TRAIN
from tests.factories.synth import write_png_cohort

TINY = {**TINY_TRAIN, "runtime.precision": "fp32"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch-cohort")
    write_png_cohort(root, n_patients=8, images_per_patient=2, size=48, seed=5)
    return root, read_manifest(root / "manifest.csv", require_labels=True)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("arch", ["densenet121"])
def test_train_and_predict_another_network(cohort, tmp_path, arch):
    root, df = cohort
    cfg = load_config(None, {**TINY, "model.arch": arch, "data.cache_dir": str(tmp_path / "cache")})
    result = train_model(df, tmp_path / "run", cfg)
    bundle = load_bundle(result.bundle_path)
    assert "densenet" in type(bundle.model).__name__.lower()
    out = predict([root / "manifest.csv"], tmp_path / "scores", result.bundle_path, PredictOptions(workers=0))
    assert out.n_predicted == len(df) and out.n_rejected == 0
    probs = [float(r["probability"]) for r in _rows(tmp_path / "scores" / "predictions.csv")]
    assert len(probs) == len(df) and all(0.0 <= p <= 1.0 for p in probs)


def test_inference_model_of_a_densenet_keeps_its_outputs():
    """BatchNorm folding and the fp32 first convolution find DenseNet's layers without names."""
    from cxr_cad.model import init_model

    model, _ = init_model("none", 2, 1, seed=0, arch="densenet121")
    model.eval()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = model(x)
    info = resolve_runtime("cpu", "fp32")
    fast = prepare_for_inference(model, info)
    with torch.inference_mode():
        got = fast(x)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules()) < sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()
    )


def test_crossval_with_another_network(cohort, tmp_path):
    _, df = cohort
    cfg = load_config(None, {**TINY, "model.arch": "densenet121", "data.cache_dir": str(tmp_path / "cache")})
    # 2 folds of 8 patients: each fold's inner validation split holds 1 patient, below the minimum
    # of the training guards, so the run is forced (and records it)
    result = run_crossval(df, tmp_path / "cv", cfg.replace(force=True), n_folds=2, n_bootstrap=10)
    assert len(result.oof) == len(df) and result.oof["probability"].between(0, 1).all()
    forced = json.loads((tmp_path / "cv" / "folds" / "0" / "result.json").read_text())["forced"]
    assert any(f.startswith("cohort: the validation side") for f in forced), forced


def test_predict_options_are_validated_at_once():
    with pytest.raises(ConfigError, match="batch_size"):
        PredictOptions(batch_size=0)
    with pytest.raises(ConfigError, match="unknown key"):
        PredictOptions(batchsize=8)
    opts = PredictOptions(batch_size=8, workers=0)
    assert opts.replace(overwrite=True).overwrite and not opts.overwrite
    with pytest.raises(ConfigError, match="threshold"):
        opts.replace(threshold=1.5)
    with pytest.raises(ConfigError, match="fp16 is not offered"):
        predict([], "unused", "unused.pt", PredictOptions(precision="fp16"))

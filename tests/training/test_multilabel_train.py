"""Multi-label training: the masked BCE loss, per-finding positive weights and thresholds, and a
tiny end-to-end run (train, bundle with per-finding thresholds) on generated images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_cad.config import load_config
from cxr_cad.errors import ConfigError
from cxr_cad.model import load_bundle
from cxr_cad.training import multilabel as ml
from cxr_cad.training.trainer import train_model
from tests.factories.config import TINY_TRAIN
from tests.factories.synth import write_multilabel_cohort


def test_masked_bce_equals_bce_on_known_labels_and_ignores_masked():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    target = torch.tensor([[1, 0, -1], [0, -1, 1], [1, 1, 0], [-1, -1, -1], [0, 0, 1], [1, -1, 0]])
    pw = torch.tensor([2.0, 1.0, 3.0])
    loss = ml.MaskedBCEWithLogits(pw)(logits, target)
    known = target >= 0
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=pw, reduction="none")(logits, target.clamp_min(0).float())[known].mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[~known] == 0) and torch.all(logits.grad[known] != 0)


def test_masked_bce_of_an_all_unknown_batch_is_zero():
    loss = ml.MaskedBCEWithLogits()(torch.randn(2, 2), torch.full((2, 2), -1))
    assert loss.item() == 0.0


def test_pos_weights_per_finding_over_known_labels():
    y = np.array([[1, 0], [0, -1], [0, 0], [0, -1]])
    w = ml.pos_weights(y)
    assert w.tolist() == [3.0, 1.0]  # 3 negatives per positive; finding 2 without positives -> 1


def test_unsupported_settings_are_config_errors():
    cfg = load_config(None, {"data.task": "multilabel", "data.classes": ["A", "B"], "model.tta": "hflip"})
    with pytest.raises(ConfigError, match="tta"):
        ml.check_config(cfg)


def _multilabel_cohort(root):
    return write_multilabel_cohort(root)


def test_train_multilabel_end_to_end(tmp_path):
    df = _multilabel_cohort(tmp_path / "cohort")
    cfg = load_config(
        None,
        {
            **TINY_TRAIN,
            "threshold.method": "youden",
            "data.task": "multilabel",
            "data.classes": ["Opacity", "Other"],
            "data.min_positives": 2,
            "data.val_fraction": 0.3,
            "data.cache_dir": str(tmp_path / "cache"),
        },
    )
    result = train_model(df, tmp_path / "run", cfg)
    assert result.threshold_method == "per_finding" and np.isfinite(result.val_auc)
    table = result.val_predictions
    assert {"probability_Opacity", "probability_Other", "finding_Other"} <= set(table.columns)
    bundle = load_bundle(result.bundle_path)
    record = bundle.meta["extra"]["multilabel"]
    assert record["findings"] == ["Opacity", "Other"] and record["activation"] == "sigmoid"
    for f in ("Opacity", "Other"):
        t = record["thresholds"][f]
        assert 0 <= t["value"] <= 1 and t["method"] in ("youden", "fixed") and t["chosen_on"]["n"] == len(table)
    # the thresholds are chosen on each finding's known validation labels
    known = table["finding_Other"].to_numpy() >= 0
    assert record["thresholds"]["Other"]["n_positive"] + record["thresholds"]["Other"]["n_negative"] == known.sum()
    assert bundle.model(torch.zeros(1, 1, 32, 32)).shape == (1, 2)
    assert (tmp_path / "run" / "model_card.md").exists()
    assert isinstance(pd.read_csv(tmp_path / "run" / "val_predictions.csv"), pd.DataFrame)

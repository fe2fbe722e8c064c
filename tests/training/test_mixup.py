"""Mixup in the training step (cxr_cad/training/mixup.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_cad.training.mixup import Mixup


def test_mixup_blends_images_and_is_seeded_by_seed_epoch_and_rank():
    images = torch.arange(6 * 4, dtype=torch.float32).view(6, 1, 2, 2)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    torch.manual_seed(5)
    np.random.seed(5)
    before = (torch.get_rng_state().clone(), np.random.get_state()[1].copy())
    a, b = Mixup(0.4, seed=3, epoch=2)(images, labels), Mixup(0.4, seed=3, epoch=2)(images, labels)
    assert a.lam == b.lam and torch.equal(a.labels_b, b.labels_b) and torch.equal(a.images, b.images)
    assert Mixup(0.4, seed=3, epoch=3)(images, labels).lam != a.lam  # another epoch, another draw
    assert Mixup(0.4, seed=3, epoch=2, rank=1)(images, labels).lam != a.lam
    # the slow obvious blend: find the permutation from the labels' partner rows
    perm = [int(torch.nonzero((images.view(6, -1) == row).all(1))[0]) for row in images.view(6, -1)]
    assert perm == list(range(6))
    partner = [
        int(torch.argmin(((a.images[i] - a.lam * images[i]) / (1 - a.lam) - images).abs().flatten(1).sum(1)))
        for i in range(6)
    ]
    assert torch.equal(a.labels_b, labels[partner])
    for i, j in enumerate(partner):
        assert torch.allclose(a.images[i], a.lam * images[i] + (1 - a.lam) * images[j])
    assert 0.0 < a.lam < 1.0
    assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
    with pytest.raises(ValueError, match="alpha"):
        Mixup(0.0, seed=0, epoch=0)


def test_mixup_lambda_follows_beta_alpha_alpha():
    m = Mixup(0.4, seed=0, epoch=0)
    lams = np.array([m(torch.zeros(4, 1), torch.zeros(4)).lam for _ in range(4000)])
    # Beta(0.4, 0.4): mean 1/2, variance 1 / (4 * (2 * 0.4 + 1)) = 0.1389
    assert abs(lams.mean() - 0.5) < 0.02 and abs(lams.var() - 1 / (4 * 1.8)) < 0.01


def test_training_with_mixup_is_reproducible_and_differs_from_without(tmp_path):
    from cxr_cad.config import load_config
    from cxr_cad.manifest import read_manifest
    from cxr_cad.training.trainer import train_model
    from tests.factories.config import TINY_TRAIN
    from tests.factories.synth import write_png_cohort

    write_png_cohort(tmp_path / "c", n_patients=12, images_per_patient=2, size=48, seed=1)
    df = read_manifest(tmp_path / "c" / "manifest.csv", require_labels=True)
    fast = {**TINY_TRAIN, "runtime.precision": "fp32", "data.cache_dir": str(tmp_path / "cache")}

    def weights(name: str, alpha: float) -> dict:
        cfg = load_config(None, {**fast, "augment": {"mixup_alpha": alpha}})
        result = train_model(df, tmp_path / name, cfg)
        return torch.load(result.bundle_path, map_location="cpu", weights_only=True)["state_dict"]

    a, b, plain = weights("a", 0.4), weights("b", 0.4), weights("plain", 0.0)
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded: the same run twice
    assert any(not torch.equal(a[k], plain[k]) for k in a if a[k].is_floating_point())

"""Mixup (Zhang et al., ICLR 2018) for the training step: each batch is blended with a shuffled
copy of itself, ``x = lam * x + (1 - lam) * x[perm]``, and the loss is the same blend of the two
labels' losses, ``lam * L(y) + (1 - lam) * L(y[perm])``, with ``lam ~ Beta(alpha, alpha)`` drawn
once per batch.

It discourages confident decisions from features that only hold on the training films (the
acquisition shortcuts of docs/generalisation.md) by training on in-between images with in-between
targets. Hand-written because MONAI has no mixup for classification batches (its ``MixUp`` in
``monai.transforms`` mixes labels as one-hot tensors, which the class-weighted cross-entropy and
the masked multi-label BCE of this project do not take); the draws use their own NumPy
``Generator`` seeded from the run's seed, the epoch and the rank, so a resumed run repeats them
exactly and the global RNGs are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Mixup", "MixedBatch"]


@dataclass
class MixedBatch:
    """A blended batch: ``images``, the two label sets and the weight of the first."""

    images: torch.Tensor
    labels: torch.Tensor
    labels_b: torch.Tensor
    lam: float


@dataclass
class Mixup:
    """Blends the batches of one epoch (``alpha`` > 0; seeded by ``seed``, ``epoch`` and ``rank``)."""

    alpha: float
    seed: int
    epoch: int
    rank: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"mixup alpha must be > 0, got {self.alpha}")
        self._rng = np.random.default_rng([int(self.seed), int(self.epoch), int(self.rank), 0x6D6978])

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> MixedBatch:
        n = int(images.shape[0])
        lam = float(self._rng.beta(self.alpha, self.alpha))
        perm = torch.from_numpy(self._rng.permutation(n)).to(images.device)
        mixed = lam * images + (1.0 - lam) * images[perm]
        return MixedBatch(mixed, labels, labels[perm], lam)

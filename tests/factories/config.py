"""Training settings shared by tests that need a real, tiny training run (seconds on one CPU core)."""

from __future__ import annotations

#: One epoch of a from-scratch ResNet at 32 px on the CPU, decoding in the test process, no early
#: stopping. Tests add what they exercise (``data.task``, ``augment``, ``data.cache_dir``, ...).
TINY_TRAIN: dict[str, object] = {
    "epochs": 1,
    "batch_size": 8,
    "model.init": "none",
    "model.image_size": 32,
    "runtime.workers": 0,
    "runtime.device": "cpu",
    "early_stopping.patience": 0,
}

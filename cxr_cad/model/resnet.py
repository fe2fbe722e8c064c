"""The former home of the network builders; they live in :mod:`cxr_cad.model.networks` now.

Kept so ``from cxr_cad.model.resnet import build_resnet18`` (and the other names) still works.
"""

from cxr_cad.model.networks import (
    ARCH,
    ARCH_IMPL,
    TRAINABLE_MODES,
    ProbabilityAverage,
    adapt_conv1,
    build_model,
    build_resnet18,
    set_trainable,
    unwrap_model,
)

__all__ = [
    "ARCH",
    "ARCH_IMPL",
    "TRAINABLE_MODES",
    "ProbabilityAverage",
    "adapt_conv1",
    "build_model",
    "build_resnet18",
    "set_trainable",
    "unwrap_model",
]

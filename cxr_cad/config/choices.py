"""Named choices shared by the typed configs, the CLI's ``choices=`` and the runtime (one spelling each)."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["ARCH_NAMES", "DEFAULT_ARCH", "PRECISIONS", "Precision"]

#: Numeric precision of training and inference: ``auto`` is bf16 on CPUs with native bf16 and on
#: CUDA (fp16 on GPUs without bf16), fp32 elsewhere (``cxr_cad.runtime``).
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

#: The networks ``model.arch`` accepts, the default (the study's) first. Only the names: how each
#: is built, initialised and explained is its entry in :data:`cxr_cad.model.registry.ARCHITECTURES`,
#: which must register exactly these names, in this order (checked when the registry is imported).
ARCH_NAMES: tuple[str, ...] = ("resnet18", "resnet50", "densenet121")
DEFAULT_ARCH = ARCH_NAMES[0]

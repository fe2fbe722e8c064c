"""Named choices shared by the typed configs, the CLI's ``choices=`` and the runtime (one spelling each)."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["PRECISIONS", "Precision"]

#: Numeric precision of training and inference: ``auto`` is bf16 on CPUs with native bf16 and on
#: CUDA (fp16 on GPUs without bf16), fp32 elsewhere (``cxr_cad.runtime``).
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

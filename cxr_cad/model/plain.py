"""Plain types for bundles: what ``torch.load(weights_only=True)`` can read back."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from cxr_cad.errors import BundleError

__all__ = ["threshold_selection", "to_plain"]


def to_plain(obj: Any, where: str = "bundle") -> Any:
    """Convert to weights_only-safe plain types (dict[str]/list/str/int/float/bool/None/Tensor).

    numpy scalars/arrays, tuples and Paths are converted; anything else raises BundleError
    naming the offending key.
    """
    if obj is None:
        return obj
    for plain in (bool, int, float, str):  # also turns subclasses (TorchVersion, IntEnum) into the base type
        if isinstance(obj, plain):
            return plain(obj.value) if plain is str and hasattr(obj, "value") else plain(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise BundleError(f"{where}: key {k!r} is not a string; bundles hold plain types only")
            out[k] = to_plain(v, f"{where}.{k}")
        return out
    raise BundleError(
        f"{where}: value of type {type(obj).__name__} cannot be stored in a bundle "
        "(plain dict/list/str/int/float/bool/None/tensor only)"
    )


def threshold_selection(method: str | dict, params: dict | None, chosen_on: Any) -> dict:
    """The bundle's ``threshold_selection``: ``{"method", "params", "chosen_on"}``."""
    if isinstance(method, dict):
        sel = dict(method)
        if not isinstance(sel.get("method"), str):
            raise BundleError("threshold_method dict needs a 'method' string")
    else:
        sel = {"method": str(method)}
    if params:
        sel["params"] = params
    if chosen_on is not None:
        sel["chosen_on"] = chosen_on
    sel.setdefault("params", {})
    sel.setdefault("chosen_on", None)
    return sel

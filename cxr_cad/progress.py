"""Progress bars for long work (tqdm on stderr), switched off by ``cxr-cad -q``.

Library code wraps long loops in :func:`progress`; the CLI decides whether bars
are shown (:func:`set_enabled`). Bars never go to stdout and never carry
patient identifiers.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_enabled = os.environ.get("CXR_CAD_NO_PROGRESS", "") == ""


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = bool(enabled)


def enabled() -> bool:
    return _enabled


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", leave: bool = True, **kwargs) -> "tqdm[T]":
    """A tqdm bar on stderr; disabled (but still iterable/updatable) when bars are off."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr,
                disable=not _enabled, dynamic_ncols=True, **kwargs)

"""Progress bars for long work (tqdm on stderr), switched off by ``cxr-cad -q``.

Library code wraps long loops in :func:`progress`; the CLI decides whether bars
are shown (:func:`set_enabled`). Bars never go to stdout and never carry
patient identifiers.

When stderr is not a terminal (a log file, a pipe, a batch job), a redrawn bar would
become one line per update; instead a plain status line is printed at most every
:data:`LOG_INTERVAL_S` seconds, plus the final one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_enabled = os.environ.get("CXR_CAD_NO_PROGRESS", "") == ""
#: Seconds between status lines when stderr is not a terminal.
LOG_INTERVAL_S = 10.0


class _LineStream:
    """File-like wrapper that turns tqdm's carriage-return redraws into whole lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = bool(enabled)


def enabled() -> bool:
    return _enabled


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    leave: bool = True,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar on stderr; disabled (but still iterable/updatable) when bars are off.

    Not a terminal: one status line every :data:`LOG_INTERVAL_S` seconds instead of redraws."""
    if _is_terminal(sys.stderr):
        return tqdm(
            iterable,
            total=total,
            desc=desc,
            unit=unit,
            leave=leave,
            file=sys.stderr,
            disable=not _enabled,
            dynamic_ncols=True,
            **kwargs,
        )
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.setdefault("maxinterval", max(LOG_INTERVAL_S, kwargs["mininterval"]))
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        file=_LineStream(sys.stderr),
        disable=not _enabled,
        ncols=100,
        ascii=True,
        **kwargs,
    )

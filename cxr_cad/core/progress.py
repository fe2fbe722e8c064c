"""Progress bars for long work (tqdm on stderr), switched off by ``cxr-cad -q``.

Library code wraps long loops in :func:`progress`; the CLI decides whether bars
are shown (:func:`set_enabled`). Bars never go to stdout and never carry
patient identifiers.

On a terminal a bar is a tqdm bar (redrawn in place; nested bars stack). When stderr is not
a terminal (a log file, a pipe, a batch job) cursor movements and redraws would land in the
log as control codes (``ESC[A``) and one line per update; there every bar, nested or not
(``leave=False`` inner bars included), is a :class:`LineBar` instead: plain ASCII lines, no
control code, none when the bar starts, one line when :data:`LOG_INTERVAL_S` seconds have
passed since the bar's start or its previous line, and the final line when a ``leave=True``
bar closes, unless its last line already said it (a ``leave=False`` bar ends silently, as it
vanishes on a terminal).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_enabled = os.environ.get("CXR_CAD_NO_PROGRESS", "") == ""
#: Seconds between status lines of one bar when stderr is not a terminal.
LOG_INTERVAL_S = 10.0
#: The clock of :class:`LineBar` (a test replaces it with a fake one).
_now: Callable[[], float] = time.monotonic


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


class LineBar(tqdm):
    """A progress bar for a stream that is not a terminal: whole ASCII lines, rate-limited.

    It is a :class:`tqdm.tqdm` for the code that uses it (iteration, ``update``, ``close``,
    ``set_postfix``, ``set_description``, ``n``, ``total``, context manager), but draws
    nothing itself: no redraw, no cursor movement, no monitor thread, not among tqdm's
    positioned instances. Each bar keeps its own clock (``interval`` seconds, default
    :data:`LOG_INTERVAL_S`), so nested bars never interleave redraws: each prints its own
    line at most once per interval.
    """

    monitor_interval = 0  # never a tqdm monitor thread for these

    def __new__(cls, *_: Any, **__: Any) -> LineBar:
        return object.__new__(cls)  # not registered among tqdm's instances (no positions)

    def __init__(  # noqa: PLR0913 - tqdm's keywords
        self,
        iterable: Iterable[Any] | None = None,
        desc: str | None = None,
        total: float | None = None,
        leave: bool | None = True,
        file: IO[str] | None = None,
        *,
        unit: str = "it",
        initial: float = 0,
        disable: bool = False,
        postfix: Any = None,
        interval: float | None = None,
        **_ignored: Any,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable = iterable
        self.desc = desc or ""
        self.total = total
        self.leave = leave
        self.fp = file if file is not None else sys.stderr
        self.unit = unit
        self.initial = initial
        self.n = initial
        self.disable = disable
        self.interval = LOG_INTERVAL_S if interval is None else float(interval)
        self.pos = 0
        self.postfix = None
        self.start_t = self.last_print_t = _now()
        self.last_print_n = initial
        self._printed_n: float | None = None
        self._closed = False
        if isinstance(postfix, dict):
            self.set_postfix(postfix, refresh=False)
        elif postfix:
            self.set_postfix_str(str(postfix), refresh=False)

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this bar has no iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total) if self.total is not None else len(self.iterable)

    def __repr__(self) -> str:
        return self.line()

    __str__ = __repr__

    def line(self) -> str:
        """The status line now (ASCII, no control code)."""
        text = self.format_meter(
            n=self.n,
            total=self.total,  # type: ignore[arg-type]  # None: no known total (tqdm accepts it)
            elapsed=_now() - self.start_t,
            prefix=self.desc,
            ascii=True,
            unit=self.unit,
            postfix=self.postfix,
            initial=self.initial,
        )
        return "".join(c for c in text if c.isprintable())

    def _emit(self) -> None:
        self.fp.write(self.line() + "\n")
        try:
            self.fp.flush()
        except (AttributeError, ValueError, OSError):
            pass
        self.last_print_t = _now()
        self.last_print_n = self._printed_n = self.n

    def update(self, n: float | None = 1) -> bool | None:
        if self.disable or self._closed:
            return None
        self.n += 1 if n is None else n
        if _now() - self.last_print_t >= self.interval:
            self._emit()
            return True
        return None

    def refresh(self, nolock: bool = False, lock_args: Any = None) -> None:  # noqa: ARG002
        """No redraw: a line is written only when the interval has passed (see :meth:`update`)."""

    def display(self, msg: str | None = None, pos: int | None = None) -> None:  # noqa: ARG002
        """No redraw (see :meth:`update`)."""

    def clear(self, nolock: bool = False) -> None:  # noqa: ARG002
        """Nothing to clear: lines already written stay."""

    def moveto(self, n: int) -> None:  # noqa: ARG002
        """No cursor movement."""

    def reset(self, total: float | None = None) -> None:
        self.n = self.last_print_n = 0
        if total is not None:
            self.total = total
        self.start_t = self.last_print_t = _now()

    def set_description(self, desc: str | None = None, refresh: bool | None = True) -> None:  # noqa: ARG002
        self.desc = desc or ""

    def set_description_str(self, desc: str | None = None, refresh: bool | None = True) -> None:  # noqa: ARG002
        self.desc = desc or ""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable and self.leave and self._printed_n != self.n:  # not the line just written
            self._emit()

    def __del__(self) -> None:
        pass  # an abandoned bar prints nothing when collected


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    leave: bool = True,
    **kwargs: Any,
) -> tqdm:
    """A bar on stderr; disabled (but still iterable/updatable) when bars are off.

    A terminal gets a tqdm bar; anything else a :class:`LineBar` (plain lines, at most one per
    :data:`LOG_INTERVAL_S` seconds per bar, no control code)."""
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
    return LineBar(
        iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, disable=not _enabled, **kwargs
    )

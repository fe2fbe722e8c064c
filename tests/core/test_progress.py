"""cxr_cad.core.progress off a terminal: plain lines, no control code, one line per interval per bar."""

from __future__ import annotations

import io
import re
import sys

import pytest
from tqdm import tqdm

from cxr_cad.core import progress as progress_mod
from cxr_cad.core.progress import LOG_INTERVAL_S, LineBar, progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class TimedStream(io.StringIO):
    """A non-terminal stream that records the fake time of every line written."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.lines: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            self.lines.append((self.clock.t, line))
        return super().write(text)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(progress_mod, "_now", c)
    monkeypatch.setattr(progress_mod, "_enabled", True)
    return c


def _nested_training(clock: FakeClock, epochs: int = 3, batches: int = 25) -> None:
    """What training does: an epochs bar, and per epoch a leave=False batch bar with a postfix."""
    for _ in progress(range(epochs), desc="epochs", unit="epoch"):
        bar = progress(range(batches), total=batches, desc="train", unit="batch", leave=False)
        for _b in bar:
            clock.t += 1.0
            bar.set_postfix(loss=f"{0.5:.4f}")
        bar.close()


def test_nested_bars_off_a_terminal_write_plain_lines_one_per_interval(clock, monkeypatch):
    stream = TimedStream(clock)
    monkeypatch.setattr(sys, "stderr", stream)
    _nested_training(clock)
    text = stream.getvalue()
    assert "\x1b" not in text and "\r" not in text  # no cursor movement, no redraw
    assert all(ch.isprintable() or ch == "\n" for ch in text)
    lines = stream.lines
    assert all(re.match(r"^(epochs|train): ", line) for _, line in lines), lines
    # each 25-s batch bar: a line at 10 s and at 20 s, nothing at its start, nothing when it closes
    train = [(t, line) for t, line in lines if line.startswith("train")]
    assert len(train) == 3 * 2
    assert [line.split("|")[-1].split()[0] for _, line in train] == ["10/25", "20/25"] * 3
    assert all("loss=0.5000" in line for _, line in train)
    # the epochs bar: once per epoch (each 25 s > the interval) and its final line
    epochs = [(t, line) for t, line in lines if line.startswith("epochs")]
    assert len(epochs) == 3 and "3/3" in epochs[-1][1]
    for bar_lines in (train[:2], train[2:4], train[4:], epochs):
        times = [t for t, _ in bar_lines]
        assert all(b - a >= LOG_INTERVAL_S for a, b in zip(times, times[1:]))


def test_a_fast_bar_prints_only_its_final_line(clock, monkeypatch):
    stream = TimedStream(clock)
    monkeypatch.setattr(sys, "stderr", stream)
    with progress(total=5000, desc="ingest", unit="file") as bar:
        assert stream.lines == []  # nothing when a bar starts
        for _ in range(5000):
            bar.update(1)
    assert len(stream.lines) == 1 and "5000/5000" in stream.lines[0][1]
    for _ in progress(range(10), desc="quiet", leave=False):
        clock.t += 0.5
    assert len(stream.lines) == 1  # a short leave=False bar leaves nothing


def test_a_slow_bar_prints_once_per_interval(clock, monkeypatch):
    stream = TimedStream(clock)
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress(total=1000, desc="predict", unit="img")
    for _ in range(1000):
        clock.t += 0.25  # 250 s in all: 25 intervals
        bar.update(1)
    bar.close()
    assert len(stream.lines) == 25 and "1000/1000" in stream.lines[-1][1]  # the last one is not repeated
    assert [line.split("|")[-1].split()[0] for _, line in stream.lines[:3]] == ["40/1000", "80/1000", "120/1000"]


def test_bars_are_tqdm_compatible_and_switch_off(clock, monkeypatch):
    stream = TimedStream(clock)
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress(range(4), desc="x", initial=1, total=5)
    assert isinstance(bar, tqdm) and isinstance(bar, LineBar) and bar.n == 1 and len(bar) == 5
    assert list(bar) == [0, 1, 2, 3] and bar.n == 5
    bar.set_description("y")
    assert "5/5" in stream.lines[-1][1]
    monkeypatch.setattr(progress_mod, "_enabled", False)  # cxr-cad -q
    n_before = len(stream.lines)
    clock.t += 100
    assert list(progress(range(3), desc="off")) == [0, 1, 2]
    with progress(total=3, desc="off") as b:
        clock.t += 100
        b.update(3)
    assert len(stream.lines) == n_before
    assert tqdm.monitor is None or not isinstance(tqdm.monitor, LineBar)


def test_a_terminal_keeps_tqdm(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(progress_mod, "_enabled", True)
    bar = progress(range(3), desc="tty")
    try:
        assert isinstance(bar, tqdm) and not isinstance(bar, LineBar)
    finally:
        bar.close()

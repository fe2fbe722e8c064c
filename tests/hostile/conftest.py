"""Fixtures of the hostile-input suite: a small bundle, a time guard, a full disk (root only)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.hostile import inputs as H

#: Memory no command may exceed on a hostile input (the issue's bar).
RSS_LIMIT_MB = 2048


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    return H.write_bundle(tmp_path_factory.mktemp("bundle") / "model.pt")


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (TimeoutError) instead of hanging when the block runs longer than ``seconds``."""

    def on_alarm(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"still running after {seconds} s: a read that blocks?")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs filled to the last byte; yields (mount point, filler file). Root only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    root = tmp_path / "disk"
    root.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode(errors='replace').strip()}")
    filler = root / "filler"
    try:
        with open(filler, "wb", buffering=0) as fh:
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 4096)
        yield root, filler
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)

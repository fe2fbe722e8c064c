"""Shared pytest fixtures. Keep this small: fixture factories live in tests/*.py helpers."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("CXR_CAD_NO_PROGRESS", "1")
# predict --backend auto caches its choice per machine and bundle: never in the user's ~/.cache from tests
os.environ.setdefault("CXR_CAD_BACKEND_CACHE", tempfile.mkdtemp(prefix="cxr-cad-test-backends-"))


@pytest.fixture
def png_cohort(tmp_path):
    """A small labelled PNG cohort (24 patients x 2 images, 96 px) with manifest.csv."""
    from tests.factories.synth import write_png_cohort

    root = tmp_path / "cohort"
    df = write_png_cohort(root)
    return root, df


@pytest.fixture(scope="module")
def one_thread():
    """Small CPU model tests: one intra-op thread is faster on a shared machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

"""cxr_cad.io.j2k: the one Pillow internal (the reduced size) is needed, isolated, and does what it says."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from tests.factories.dicom import chest_phantom, write_dicom

SHAPE = (101, 67)  # rows, columns: 101 px at level 2 is 26 for OpenJPEG, 25 by Pillow's own formula
LEVEL = 2


def _frame(tmp_path: Path) -> bytes:
    path = write_dicom(tmp_path / "j.dcm", chest_phantom(SHAPE, bits_stored=8), bits_stored=8, transfer_syntax="j2k")
    ds = pydicom.dcmread(path)
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def test_j2k_pillow_reduce_needs_the_size_fix(tmp_path):
    """With only the public ``image.reduce``, Pillow cannot decode this odd size at level 2 (or
    gets a size other than OpenJPEG's). When this test fails, a Pillow release fixed it: drop the
    ``_size`` line of ``cxr_cad.io.j2k._set_reduce``."""
    from PIL import Image

    frame = _frame(tmp_path)
    expected = (-(-SHAPE[1] // 2**LEVEL), -(-SHAPE[0] // 2**LEVEL))  # (width, height)
    with Image.open(io.BytesIO(frame), formats=("JPEG2000",)) as image:
        image.reduce = LEVEL  # type: ignore[method-assign,assignment]  # the plugin's public property
        try:
            image.load()
            public_size: tuple[int, int] | None = image.size
        except OSError:
            public_size = None
    assert public_size != expected


def test_j2k_set_reduce_gives_openjpeg_size_and_pixels(tmp_path):
    from PIL import Image

    from cxr_cad.io.j2k import _set_reduce

    frame = _frame(tmp_path)
    with Image.open(io.BytesIO(frame), formats=("JPEG2000",)) as image:
        _set_reduce(image, LEVEL)
        image.load()
        size = image.size
        reduced = np.asarray(image)
    assert size == (-(-SHAPE[1] // 2**LEVEL), -(-SHAPE[0] // 2**LEVEL))
    full = np.asarray(Image.open(io.BytesIO(frame), formats=("JPEG2000",))).astype(np.float32)
    box = np.asarray(Image.fromarray(full).resize(size, Image.Resampling.BOX))
    assert np.corrcoef(box.ravel(), reduced.astype(np.float32).ravel())[0, 1] > 0.9


@pytest.mark.parametrize("name", ["j2k.py"])
def test_only_set_reduce_touches_pillow_internals(name):
    """No other line of cxr_cad.io reaches into a private Pillow attribute."""
    root = Path(__file__).resolve().parents[2] / "cxr_cad" / "io"
    hits = [
        (p.name, n)
        for p in sorted(root.glob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "image._" in line or "img._" in line or "im._" in line
    ]
    assert [h[0] for h in hits] == [name]

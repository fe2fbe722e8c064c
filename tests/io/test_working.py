"""The working resolution (cxr_cad.io.working): one rule, one size, every container (issue 19)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from cxr_cad.io import read_image
from cxr_cad.io.working import WORK_MARGIN, area_reduce, jpeg_draft, working_level, working_shape
from tests.factories.dicom import chest_phantom, write_dicom


def _slow_block_means(values: np.ndarray, level: int) -> np.ndarray:
    f = 1 << level
    rows, columns = working_shape(*values.shape[:2], level)
    out = np.zeros((rows, columns) + values.shape[2:])
    for i in range(rows):
        for j in range(columns):
            out[i, j] = values[i * f : (i + 1) * f, j * f : (j + 1) * f].astype(np.float64).mean(axis=(0, 1))
    return out


@pytest.mark.parametrize("shape", [(37, 53), (32, 64), (33, 3), (40, 41, 3), (5, 5), (70, 90)])
def test_area_reduce_is_the_block_mean(shape):
    values = np.random.default_rng(0).integers(0, 65536, shape).astype(np.uint16)
    for level in range(6):
        out = area_reduce(values, level)
        assert out.dtype == np.float32 and out.shape == working_shape(*shape[:2], level) + shape[2:]
        np.testing.assert_allclose(out, _slow_block_means(values, level), rtol=1e-6)


def test_working_level_rule():
    assert WORK_MARGIN == 2  # the working image keeps a shorter side of 2-4x the model input
    assert working_level(2048, 1766, 224) == 1  # 883 px: in [448, 896)
    assert working_level(2048, 1846, 224) == 2  # 461 px
    assert working_level(895, 1000, 224) == 0 and working_level(896, 1000, 224) == 1
    assert working_level(3000, 2500, None) == 0 and working_level(3000, 2500, 3000) == 0
    for shorter in range(100, 5000, 37):
        level = working_level(shorter, shorter + 11, 64)
        side = working_shape(shorter, shorter, level)[0]
        assert (2 * 64 <= side < 4 * 64) or (level == 0 and shorter < 4 * 64)


def _film(shape=(530, 470), bits=8) -> np.ndarray:
    """A radiograph-like phantom without pixel-sharp steps (blurred, sigma 2 px)."""
    arr = gaussian_filter(chest_phantom(shape, bits_stored=bits).astype(np.float64), 2.0)
    return np.rint(arr).astype(np.uint8 if bits == 8 else np.uint16)


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_jpeg_draft_gives_the_working_shape(level):
    buffer = io.BytesIO()
    Image.fromarray(_film()).save(buffer, format="JPEG", quality=95)
    with Image.open(buffer) as image:
        reached = jpeg_draft(image, level)
        image.load()
        assert reached == min(level, 3)  # libjpeg scales down to 1/8
        assert image.size[::-1] == working_shape(530, 470, reached)


def test_dicom_jpeg_baseline_is_read_like_the_same_jpeg_file(tmp_path):
    """The DCT-scaled decode of an 8-bit DICOM JPEG baseline frame equals that of the same JPEG
    as a file: same codec route, same working image (up to the readers' affine scaling)."""
    film = _film()
    path = write_dicom(tmp_path / "b.dcm", film, bits_stored=8, transfer_syntax="jpeg_baseline", jpeg_quality=95)
    frame = next(pydicom.encaps.generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))
    (tmp_path / "b.jpg").write_bytes(frame)
    for target in (32, 64, 117):
        level = working_level(530, 470, target)
        dicom, _ = read_image(path, reduce_to=target)
        jpeg, _ = read_image(tmp_path / "b.jpg", reduce_to=target)
        assert dicom.shape == jpeg.shape == working_shape(530, 470, level)
        unit = (jpeg - jpeg.min()) / (jpeg.max() - jpeg.min())  # the DICOM has no window: min-max
        np.testing.assert_allclose(dicom, unit, atol=1e-6)


@pytest.mark.parametrize("syntax", ["j2k", "j2k_lossy"])
def test_j2k_decodes_one_level_short_and_averages_the_last(tmp_path, syntax, monkeypatch):
    import cxr_cad.io.j2k as j2k

    film = _film((1030, 940), bits=12)
    path = write_dicom(tmp_path / "j.dcm", film, bits_stored=12, transfer_syntax=syntax, j2k_cr=5)
    levels = []
    decode_level = j2k.decode_level
    monkeypatch.setattr(j2k, "decode_level", lambda ds, n, p: levels.append(n) or decode_level(ds, n, p))
    full, _ = read_image(path)
    reduced, _ = read_image(path, reduce_to=64)  # working level 2: J2K level 1, then 2x2 block means
    assert levels == [1] and reduced.shape == working_shape(1030, 940, 2)
    box = area_reduce(full, 2)
    box = (box - box.min()) / (box.max() - box.min())
    assert float(np.abs(reduced - box).mean()) < 0.01 and np.corrcoef(reduced.ravel(), box.ravel())[0, 1] > 0.99

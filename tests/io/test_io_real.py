"""cxr_cad.io on small real chest DICOMs: shipped in tests/data (see tests/data/README.md) or made here.

The MONOCHROME1 10-bit file without File Meta is made by the tests themselves from a CC BY 4.0
radiograph that ships with the package (Kermany et al., cxr_cad/data/ATTRIBUTION.md): implicit VR,
no preamble, no File Meta, a window 550/1024 and MONOCHROME1 polarity, like the classic
"CR-MONO1-10-chest" sample it replaces (whose licence could not be confirmed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxr_cad.io import AcceptPolicy, read_header, read_image
from tests.factories.dicom import write_dicom

DATA = Path(__file__).parents[1] / "data"
SAMPLE_JPEG = Path(__file__).parents[2] / "cxr_cad" / "data" / "kermany_sample" / "images" / "IM-0384-0001.jpg"
SIIM = DATA / "siim_cr_chest_jpeg_baseline.dcm"
SIIM_MONO1 = DATA / "siim_cr_chest_jpeg_baseline_relabelled_monochrome1.dcm"


def make_mono1_10bit_no_meta(path: Path) -> Path:
    """440x440 CR chest, 10-bit MONOCHROME1, window 550/1024, implicit VR, no File Meta.

    Display value d in [0, 1] (the JPEG / 255) is stored as 38 + (1 - d) * 985, so the window
    (lower edge 38, upper edge 1061) covers the stored range 38..1023 and the MONOCHROME1
    inversion gives the display image back.
    """
    display = (
        np.asarray(Image.open(SAMPLE_JPEG).convert("L").resize((440, 440), Image.BICUBIC), dtype=np.float64) / 255.0
    )
    stored = np.round(38 + (1.0 - display) * 985).astype(np.uint16)
    return write_dicom(
        path,
        stored,
        photometric="MONOCHROME1",
        bits_stored=10,
        window=(550, 1024),
        transfer_syntax="implicit",
        file_meta=False,
        modality="CR",
        view_position="PA",
        patient_id="ANON-0384",
        patient_name="ANONYMOUS",
        patient_sex="M",
        patient_age="003Y",
    )


@pytest.fixture(scope="module")
def NO_META(tmp_path_factory) -> Path:
    return make_mono1_10bit_no_meta(tmp_path_factory.mktemp("real") / "cr_mono1_10bit_chest_no_file_meta.dcm")


def lungs_darker_than_mediastinum(pixels: np.ndarray) -> tuple[float, float]:
    """(mean of the central vertical strip, mean of the two lateral lung regions), rows 25-75 %."""
    h, w = pixels.shape
    rows = slice(h // 4, 3 * h // 4)
    centre = float(pixels[rows, int(0.45 * w) : int(0.55 * w)].mean())
    lungs = float(
        np.concatenate(
            [pixels[rows, int(0.15 * w) : int(0.30 * w)].ravel(), pixels[rows, int(0.70 * w) : int(0.85 * w)].ravel()]
        ).mean()
    )
    return centre, lungs


@pytest.mark.parametrize("which", ["cr_mono1_no_meta", "siim_jpeg"])
@pytest.mark.parametrize("apply_voi", [True, False])
def test_polarity_bone_bright_lungs_dark(which, apply_voi, NO_META):
    path = NO_META if which == "cr_mono1_no_meta" else SIIM
    pixels, meta = read_image(path, policy=AcceptPolicy(apply_voi=apply_voi))
    centre, lungs = lungs_darker_than_mediastinum(pixels)
    assert centre > lungs + 0.1, (centre, lungs)
    assert meta["modality"] == "CR" and meta["view_position"] == "PA"


def test_file_without_file_meta_is_read(NO_META):
    raw = NO_META.read_bytes()
    assert raw[128:132] != b"DICM"
    meta = read_header(NO_META)
    assert (meta["rows"], meta["columns"], meta["bits_stored"]) == (440, 440, 10)
    assert meta["photometric_interpretation"] == "MONOCHROME1"
    assert meta["transfer_syntax"] == pydicom.uid.ImplicitVRLittleEndian
    pixels, _ = read_image(NO_META)
    assert pixels.shape == (440, 440) and pixels.dtype == np.float32


def test_mono1_window_applied_to_no_meta_file(NO_META):
    """(0028,1050)/(0028,1051) 550/1024 is applied before the MONOCHROME1 inversion."""
    ds = pydicom.dcmread(NO_META, force=True)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    stored = ds.pixel_array.astype(np.float64)
    lo, hi = 550 - 0.5 - 1023 / 2, 550 - 0.5 + 1023 / 2
    expected = 1.0 - np.clip((stored - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(read_image(NO_META)[0], expected, atol=1e-5)


def test_relabelled_mono1_twin_gives_inverted_pixels():
    """Same stored pixels labelled MONOCHROME1: the display is exactly the inverse."""
    mono2, meta2 = read_image(SIIM)
    mono1, meta1 = read_image(SIIM_MONO1)
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert meta1["photometric_interpretation"] == "MONOCHROME1"
    assert meta2["patient_sex"] == "M" and meta2["transfer_syntax"] == pydicom.uid.JPEGBaseline8Bit


def test_header_meta_equals_image_meta(NO_META):
    for path in (NO_META, SIIM, SIIM_MONO1):
        assert read_header(path) == read_image(path)[1]

"""cxr_cad.io on synthetic DICOM files (tests/factories/dicom.py): pipeline, syntaxes, rejections."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi, apply_voi_lut, apply_windowing
from pydicom.uid import (
    ComprehensiveSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EncapsulatedPDFStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    RTPlanStorage,
)

from cxr_cad.errors import ConfigError, Reason, RejectedFile
from cxr_cad.io import META_KEYS, AcceptPolicy, read_header, read_image
from cxr_cad.io.dicom_pixels import modality_values, window_unit
from tests.factories.dicom import (
    LOSSLESS,
    chest_phantom,
    invert_stored,
    truncate_file,
    write_dicom,
    write_sr,
)

ANY = AcceptPolicy(modalities=())


def rejected(path, reason, *, header=True, policy=AcceptPolicy()):
    """Assert read_image (and read_header unless header=False) reject ``path`` with ``reason``."""
    fns = (read_header, read_image) if header else (read_image,)
    for fn in fns:
        with pytest.raises(RejectedFile) as info:
            fn(path, policy=policy)
        assert info.value.reason == reason, (fn.__name__, info.value)
        assert info.value.detail and str(path) in str(info.value)
    return info.value


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """12-bit phantom (128 px) written explicit VR LE MONOCHROME2 and its pixels."""
    stored = chest_phantom(128, bits_stored=12)
    path = write_dicom(tmp_path_factory.mktemp("ref") / "ref.dcm", stored, bits_stored=12)
    return stored, read_image(path)[0]


@pytest.mark.parametrize("syntax", LOSSLESS)
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_same_image_in_every_lossless_syntax_gives_identical_pixels(tmp_path, reference, syntax, photometric):
    stored, expected = reference
    if photometric == "MONOCHROME1":
        stored = invert_stored(stored, bits_stored=12)
    path = write_dicom(tmp_path / "img", stored, bits_stored=12, transfer_syntax=syntax, photometric=photometric)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID != "" and path.suffix == ""
    pixels, meta = read_image(path)
    assert pixels.dtype == np.float32 and pixels.shape == (128, 128)
    np.testing.assert_allclose(pixels, expected, rtol=0, atol=1e-6)
    assert meta["photometric_interpretation"] == photometric


@pytest.mark.parametrize("syntax,tol", [("jpegls_near", 0.003), ("j2k_lossy", 0.02)])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_lossy_syntaxes_are_close(tmp_path, reference, syntax, tol, photometric):
    stored, expected = reference
    if photometric == "MONOCHROME1":
        stored = invert_stored(stored, bits_stored=12)
    path = write_dicom(
        tmp_path / "img.dcm",
        stored,
        bits_stored=12,
        transfer_syntax=syntax,
        photometric=photometric,
        j2k_cr=4,
        jls_error=3,
    )
    pixels, _ = read_image(path)
    assert float(np.abs(pixels - expected).mean()) < tol
    assert float(np.abs(pixels - expected).mean()) > 0  # it really is lossy


def test_jpeg_baseline_8bit_close_to_native(tmp_path):
    stored = chest_phantom(128, bits_stored=8)
    native, _ = read_image(write_dicom(tmp_path / "a.dcm", stored, bits_stored=8))
    jpeg, meta = read_image(write_dicom(tmp_path / "b.dcm", stored, bits_stored=8, transfer_syntax="jpeg_baseline"))
    assert meta["transfer_syntax"] == "1.2.840.10008.1.2.4.50"
    assert float(np.abs(native - jpeg).mean()) < 0.02


@pytest.mark.parametrize("bits,signed", [(8, False), (10, False), (12, False), (16, False), (12, True), (16, True)])
def test_bit_depths_and_signed_scale_to_full_range(tmp_path, bits, signed):
    stored = chest_phantom(64, bits_stored=bits, signed=signed)
    pixels, meta = read_image(write_dicom(tmp_path / "x.dcm", stored, bits_stored=bits, signed=signed))
    lo, hi = float(stored.min()), float(stored.max())
    np.testing.assert_allclose(pixels, (stored.astype(np.float64) - lo) / (hi - lo), atol=1e-6)
    assert meta["bits_stored"] == bits


def test_pixels_are_display_oriented_and_mono1_twin_matches(tmp_path):
    stored = chest_phantom(64, bits_stored=12)
    mono2, _ = read_image(write_dicom(tmp_path / "m2.dcm", stored))
    mono1, _ = read_image(
        write_dicom(tmp_path / "m1.dcm", invert_stored(stored, bits_stored=12), photometric="MONOCHROME1")
    )
    relabelled, _ = read_image(write_dicom(tmp_path / "r.dcm", stored, photometric="MONOCHROME1"))
    assert mono2[32, 32] > mono2[32, 18]  # mediastinum brighter than the left lung
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    np.testing.assert_allclose(relabelled, 1.0 - mono2, atol=1e-6)


def test_rescale_does_not_change_display_and_matches_pydicom(tmp_path):
    stored = chest_phantom(64, bits_stored=12)
    plain, _ = read_image(write_dicom(tmp_path / "a.dcm", stored))
    path = write_dicom(tmp_path / "b.dcm", stored, rescale=(0.5, -1024.0))
    rescaled, _ = read_image(path)
    np.testing.assert_allclose(rescaled, plain, atol=1e-6)
    ds = pydicom.dcmread(path)
    np.testing.assert_allclose(
        modality_values(ds.pixel_array, ds), apply_modality_lut(ds.pixel_array, ds), rtol=1e-6, atol=1e-3
    )


def test_negative_slope_rescale_is_min_max_scaled(tmp_path):
    stored = chest_phantom(64, bits_stored=12)
    plain, _ = read_image(write_dicom(tmp_path / "a.dcm", stored))
    flipped, _ = read_image(write_dicom(tmp_path / "b.dcm", stored, rescale=(-1.0, 4095.0)))
    np.testing.assert_allclose(flipped, 1.0 - plain, atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("signed,rescale", [(False, None), (True, None), (False, (2.0, -1000.0))])
def test_window_matches_pydicom_apply_windowing(function, signed, rescale):
    """Fast float32 windowing == pydicom's float64 apply_windowing mapped onto [0, 1]."""
    rng = np.random.default_rng(1)
    ds = pydicom.Dataset()
    ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", 12, int(signed)
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    y_min, y_max = (-2048, 2047) if signed else (0, 4095)
    if rescale:
        y_min, y_max = y_min * rescale[0] + rescale[1], y_max * rescale[0] + rescale[1]
    values = rng.uniform(y_min - 50, y_max + 50, 5000).astype(np.float32)  # float32 inputs for both
    for center, width in [(y_min + 0.4 * (y_max - y_min), 900.0), (y_min + 0.5 * (y_max - y_min), 2.0), (0.0, 1.0)]:
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
        if function != "LINEAR" and width == 1.0:
            continue
        slow = (apply_windowing(values.astype(np.float64), ds) - y_min) / (y_max - y_min)
        fast = window_unit(values.copy(), center, width, function)
        np.testing.assert_allclose(fast, slow, atol=2e-5)


def test_window_is_applied_first_value_of_multi_valued(tmp_path):
    stored = chest_phantom(64, bits_stored=12)
    path = write_dicom(tmp_path / "w.dcm", stored, window=([2000.0, 100.0], [1000.0, 50.0]))
    pixels, _ = read_image(path)
    values = stored.astype(np.float64)
    assert (pixels[values <= 1500 - 0.5] == 0).all() and (pixels[values > 2500] == 1).all()
    ds = pydicom.dcmread(path)
    expected = apply_voi_lut(ds.pixel_array, ds, index=0) / 4095.0
    np.testing.assert_allclose(pixels, expected, atol=1e-5)
    no_voi, _ = read_image(path, policy=AcceptPolicy(apply_voi=False))
    np.testing.assert_allclose(no_voi, (values - values.min()) / np.ptp(values), atol=1e-6)


def test_windowed_mono1_twin_agrees_within_one_stored_unit(tmp_path):
    stored = chest_phantom(64, bits_stored=12)
    mono2, _ = read_image(write_dicom(tmp_path / "a.dcm", stored, window=(1800.0, 2000.0)))
    mono1, _ = read_image(
        write_dicom(
            tmp_path / "b.dcm",
            invert_stored(stored, bits_stored=12),
            photometric="MONOCHROME1",
            window=(4095 - 1800.0, 2000.0),
        )
    )
    assert float(np.abs(mono1 - mono2).max()) <= 1.0 / 1999 + 1e-6


def test_voi_lut_sequence_matches_pydicom(tmp_path):
    stored = chest_phantom(64, bits_stored=12)
    lut = np.round(4095 * (np.arange(4096) / 4095.0) ** 0.5).astype(np.uint16)  # a gamma VOI LUT
    path = write_dicom(tmp_path / "v.dcm", stored, voi_lut=(0, lut, 12), window=(10.0, 5.0))
    pixels, _ = read_image(path)
    ds = pydicom.dcmread(path)
    np.testing.assert_allclose(pixels, apply_voi(ds.pixel_array, ds) / 4095.0, atol=1e-6)


def test_modality_lut_sequence_matches_pydicom(tmp_path):
    stored = chest_phantom(64, bits_stored=10)
    lut = (4000 - 3 * np.arange(1024)).astype(np.uint16)  # a decreasing LUT: flips the polarity
    path = write_dicom(tmp_path / "m.dcm", stored, bits_stored=10, modality_lut=(0, lut, 16))
    pixels, _ = read_image(path)
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    np.testing.assert_allclose(pixels, (values - values.min()) / np.ptp(values), atol=1e-6)
    assert pixels[32, 32] < pixels[32, 18]
    # PS3.3 C.11.1.1.1 allows 8 or 16 bits per Modality LUT entry; pydicom cannot apply others
    bad = write_dicom(tmp_path / "bad.dcm", stored, bits_stored=10, modality_lut=(0, lut, 12))
    assert "Modality LUT" in rejected(bad, Reason.DECODE_FAILED, header=False).detail


def test_rgb_dicom_is_converted_to_gray(tmp_path):
    gray = chest_phantom(32, bits_stored=8)
    rgb = np.stack([gray] * 3, axis=-1)
    pixels, meta = read_image(
        write_dicom(
            tmp_path / "c.dcm",
            rgb,
            photometric="RGB",
            bits_stored=8,
            modality="OT",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        ),
        policy=ANY,
    )
    expected, _ = read_image(write_dicom(tmp_path / "g.dcm", gray, bits_stored=8))
    np.testing.assert_allclose(pixels, expected, atol=1e-5)
    assert meta["photometric_interpretation"] == "RGB"


@pytest.mark.parametrize(
    "file_meta,preamble,syntax",
    [(True, False, "explicit"), (False, False, "implicit"), (False, False, "explicit"), (False, False, "big_endian")],
)
def test_files_without_preamble_or_file_meta_are_read(tmp_path, reference, file_meta, preamble, syntax):
    stored, expected = reference
    path = write_dicom(tmp_path / "noext", stored, file_meta=file_meta, preamble=preamble, transfer_syntax=syntax)
    raw = path.read_bytes()
    assert raw[128:132] != b"DICM"
    meta = read_header(path)
    pixels, _ = read_image(path)
    np.testing.assert_allclose(pixels, expected, atol=1e-6)
    assert meta["transfer_syntax"] == pydicom.uid.UID(
        {"implicit": "1.2.840.10008.1.2", "explicit": "1.2.840.10008.1.2.1", "big_endian": "1.2.840.10008.1.2.2"}[
            syntax
        ]
    )


def test_meta_keys_and_values(tmp_path):
    path = write_dicom(
        tmp_path / "m.dcm",
        patient_id="PID-7",
        patient_name="SECRET^NAME",
        patient_sex="m",
        patient_age="045Y",
        view_position="ap",
        body_part="chest",
        modality="dx",
        sop_class_uid=DigitalXRayImageStorageForPresentation,
    )
    for meta in (read_header(path), read_image(path)[1]):
        assert tuple(meta) == META_KEYS
        assert meta["patient_id"] == "PID-7" and meta["patient_sex"] == "M" and meta["patient_age"] == "045Y"
        assert meta["view_position"] == "AP" and meta["body_part"] == "CHEST" and meta["modality"] == "DX"
        assert meta["format"] == "dicom" and meta["rows"] == 64 and meta["columns"] == 64
        assert meta["sop_class_uid"] == DigitalXRayImageStorageForPresentation
        assert meta["sop_instance_uid"].startswith("1.2.") and meta["path"] == str(path)
        assert not any("SECRET" in str(v) for v in meta.values())
    odd = write_dicom(tmp_path / "o.dcm", patient_sex="X", patient_age="")
    assert read_header(odd)["patient_sex"] == "" and read_header(odd)["patient_age"] == ""


# ---------------------------------------------------------------- rejections


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "big_endian", "deflated"])
def test_no_pixel_data(tmp_path, syntax):
    rejected(write_dicom(tmp_path / "n.dcm", no_pixel_data=True, transfer_syntax=syntax), Reason.NO_PIXEL_DATA)


@pytest.mark.parametrize(
    "sop_class",
    [
        ComprehensiveSRStorage,
        GrayscaleSoftcopyPresentationStateStorage,
        KeyObjectSelectionDocumentStorage,
        RTPlanStorage,
        EncapsulatedPDFStorage,
    ],
)
def test_non_image_sop_classes(tmp_path, sop_class):
    rejected(
        write_dicom(tmp_path / "s.dcm", sop_class_uid=sop_class, no_pixel_data=True), Reason.NOT_AN_IMAGE_SOP_CLASS
    )
    # even with pixel data attached, a presentation state / SR is not an image
    rejected(write_dicom(tmp_path / "p.dcm", sop_class_uid=sop_class), Reason.NOT_AN_IMAGE_SOP_CLASS)


def test_structured_report(tmp_path):
    err = rejected(write_sr(tmp_path / "sr"), Reason.NOT_AN_IMAGE_SOP_CLASS)
    assert "SR" in err.detail


@pytest.mark.parametrize("syntax", ["explicit", "rle"])
def test_multi_frame(tmp_path, syntax):
    rejected(write_dicom(tmp_path / "mf.dcm", frames=3, transfer_syntax=syntax), Reason.MULTI_FRAME)


def test_modality_policy(tmp_path):
    ct = write_dicom(tmp_path / "ct.dcm", modality="CT", sop_class_uid=CTImageStorage, rescale=(1.0, -1024.0))
    err = rejected(ct, Reason.UNSUPPORTED_MODALITY)
    assert "CT" in err.detail
    assert read_image(ct, policy=ANY)[0].shape == (64, 64)
    rejected(write_dicom(tmp_path / "none.dcm", modality=None), Reason.UNSUPPORTED_MODALITY)
    assert read_header(tmp_path / "none.dcm", policy=ANY)["modality"] == ""
    assert read_header(ct, policy=AcceptPolicy(modalities=("ct",)))["modality"] == "CT"


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL", "LAT", "ll"])
def test_lateral_views(tmp_path, view):
    path = write_dicom(tmp_path / "lat.dcm", view_position=view)
    rejected(path, Reason.LATERAL_VIEW)
    assert read_header(path, policy=AcceptPolicy(reject_lateral=False))["view_position"] == view.upper()


def test_empty_and_junk_files(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    rejected(tmp_path / "empty.dcm", Reason.EMPTY_FILE)
    rng = np.random.default_rng(0)
    for i in range(20):
        junk = tmp_path / f"junk{i}"
        junk.write_bytes(rng.integers(0, 256, 2000 + i, dtype=np.uint8).tobytes())
        rejected(junk, Reason.NOT_DICOM)
        # junk that starts like a DICOM tag (0008,0005) is still junk
        junk.write_bytes(b"\x08\x00\x05\x00" + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
        rejected(junk, Reason.NOT_DICOM)
    (tmp_path / "tiny").write_bytes(b"\x08\x00")
    rejected(tmp_path / "tiny", Reason.NOT_DICOM)
    (tmp_path / "text.dcm").write_text("PatientName=DOE^JOHN\n" * 20)
    rejected(tmp_path / "text.dcm", Reason.NOT_DICOM)
    (tmp_path / "img.tif").write_bytes(b"II*\x00" + bytes(200))
    rejected(tmp_path / "img.tif", Reason.UNSUPPORTED_FORMAT)
    rejected(tmp_path, Reason.UNREADABLE)  # a directory
    rejected(tmp_path / "missing.dcm", Reason.UNREADABLE)


def test_preamble_without_data_set_is_unreadable(tmp_path):
    (tmp_path / "bad.dcm").write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + bytes(50))
    rejected(tmp_path / "bad.dcm", Reason.UNREADABLE)
    (tmp_path / "short.dcm").write_bytes(bytes(128) + b"DICM" + bytes(3))
    rejected(tmp_path / "short.dcm", Reason.UNREADABLE)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")  # pydicom, expected here
@pytest.mark.parametrize("syntax", ["explicit", "j2k", "rle", "jpegls", "jpeg_lossless"])
@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_files(tmp_path, syntax, keep):
    path = truncate_file(write_dicom(tmp_path / "t.dcm", chest_phantom(128), transfer_syntax=syntax), keep)
    with pytest.raises(RejectedFile) as info:
        read_image(path)
    assert info.value.reason in (Reason.UNREADABLE, Reason.DECODE_FAILED, Reason.NO_PIXEL_DATA)


def test_header_does_not_decode_pixels(tmp_path):
    """A corrupt codestream passes read_header (no decode) and fails read_image with DECODE_FAILED."""
    path = write_dicom(tmp_path / "c.dcm", chest_phantom(64), transfer_syntax="j2k")
    ds = pydicom.dcmread(path)
    frame = bytearray(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1).__next__())
    frame[10:] = bytes(len(frame) - 10)
    ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
    ds.save_as(path)
    assert read_header(path)["rows"] == 64
    rejected(path, Reason.DECODE_FAILED, header=False)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")  # pydicom, expected here
@pytest.mark.parametrize("syntax", ["explicit", "implicit", "big_endian", "j2k"])
def test_header_does_not_read_pixel_data(tmp_path, syntax):
    """Pixel Data cut short: read_header still accepts (it never reads the value)."""
    path = write_dicom(tmp_path / "h.dcm", chest_phantom(256), transfer_syntax=syntax)
    assert path.stat().st_size > 20_000
    truncate_file(path, 0.6)  # the header is < 1 kB: 40 % of the pixel bytes are gone
    assert read_header(path)["rows"] == 256
    with pytest.raises(RejectedFile) as info:
        read_image(path)
    assert info.value.reason in (Reason.DECODE_FAILED, Reason.UNREADABLE)


def test_constant_images(tmp_path):
    rejected(write_dicom(tmp_path / "c.dcm", np.full((32, 32), 700, np.uint16)), Reason.CONSTANT_IMAGE, header=False)
    path = write_dicom(tmp_path / "w.dcm", chest_phantom(32), window=(60000.0, 10.0))  # window above all data
    err = rejected(path, Reason.CONSTANT_IMAGE, header=False)
    assert "apply_voi=False" in err.detail
    assert read_image(path, policy=AcceptPolicy(apply_voi=False))[0].max() == 1.0


@pytest.mark.parametrize("photometric", ["PALETTE COLOR", "YBR_PARTIAL_420", "HSV"])
def test_unsupported_photometric(tmp_path, photometric):
    rejected(
        write_dicom(tmp_path / "p.dcm", chest_phantom(32, bits_stored=8), bits_stored=8, photometric=photometric),
        Reason.UNSUPPORTED_PHOTOMETRIC,
    )


def test_reason_detail_names_file_and_fix(tmp_path):
    err = rejected(write_dicom(tmp_path / "mf.dcm", frames=2), Reason.MULTI_FRAME)
    assert "(0028,0008)" in err.detail and "export" in err.detail


# ---------------------------------------------------------------- JPEG 2000 reduced-resolution decoding


def _resize(img: np.ndarray, shorter: int, like: tuple[int, int] = (530, 470)) -> np.ndarray:
    """Resize so the shorter side of an image shaped ``like`` becomes ``shorter`` (same output for all)."""
    from PIL import Image

    h, w = like
    scale = shorter / min(h, w)
    return np.asarray(Image.fromarray(img).resize((round(w * scale), round(h * scale)), Image.BILINEAR))


@pytest.mark.parametrize("bits", [8, 12, 16])
@pytest.mark.parametrize("shape", [(96, 80), (101, 67)])
def test_j2k_level0_equals_pydicom_and_reduced_levels_are_consistent(tmp_path, bits, shape):
    """Level 0 == pydicom; levels N have OpenJPEG's ceil size; signed data decode like shifted unsigned."""
    from PIL import Image

    from cxr_cad.io.j2k import decode_level

    decoded = {}
    for signed in (False, True):
        stored = chest_phantom(shape, bits_stored=bits, signed=signed)
        path = write_dicom(tmp_path / f"j{signed}.dcm", stored, bits_stored=bits, signed=signed, transfer_syntax="j2k")
        ds = pydicom.dcmread(path)
        np.testing.assert_array_equal(ds.pixel_array, stored)
        np.testing.assert_array_equal(decode_level(ds, 0, path), ds.pixel_array)
        for level in (1, 2, 3):
            reduced = decode_level(ds, level, path)
            assert reduced.shape == (-(-shape[0] // 2**level), -(-shape[1] // 2**level))
            assert reduced.dtype == ds.pixel_array.dtype
            decoded[signed, level] = reduced.astype(np.int64)
        box = np.asarray(Image.fromarray(stored.astype(np.float32)).resize(decoded[signed, 1].shape[::-1], Image.BOX))
        assert np.corrcoef(box.ravel(), decoded[signed, 1].ravel())[0, 1] > 0.95
    for level in (1, 2, 3):  # J2K shifts unsigned data by 2**(bits-1) internally: same wavelet coefficients
        np.testing.assert_array_equal(decoded[True, level] + 2 ** (bits - 1), decoded[False, level])


def test_reduction_level_rule():
    from cxr_cad.io.j2k import reduction_level

    # the reduced image keeps >= 2x the target (REDUCE_MARGIN): 2000 / 4 = 500 >= 448, 2000 / 8 < 448
    assert reduction_level(2000, 224, 5) == 2
    assert reduction_level(2000, 224, 1) == 1  # limited by the codestream's decomposition levels
    assert reduction_level(895, 224, 5) == 0
    assert reduction_level(896, 224, 5) == 1
    assert reduction_level(2000, 2000, 5) == 0


@pytest.mark.parametrize("syntax", ["j2k", "j2k_lossy"])
def test_reduced_decode_close_to_full_decode_plus_resize(tmp_path, syntax):
    from scipy.ndimage import gaussian_filter

    # a radiograph has no pixel-sharp steps: blur the phantom (sigma 2 px) so both low-pass filters agree
    stored = np.rint(gaussian_filter(chest_phantom((530, 470), bits_stored=12).astype(np.float64), 2.0)).astype(
        np.uint16
    )
    path = write_dicom(
        tmp_path / "r.dcm", stored, transfer_syntax=syntax, photometric="MONOCHROME2", window=(2000.0, 3500.0), j2k_cr=5
    )
    full, meta = read_image(path)
    for target in (64, 100, 117):
        reduced, meta_r = read_image(path, reduce_to=target)
        assert 2 * target <= min(reduced.shape) < 4 * target  # REDUCE_MARGIN = 2
        assert reduced.dtype == np.float32 and 0 <= reduced.min() and reduced.max() <= 1
        assert meta_r == meta  # rows/columns stay the stored size
        diff = np.abs(_resize(reduced, target) - _resize(full, target))
        assert float(diff.mean()) < 0.01 and float(np.percentile(diff, 99)) < 0.1
        assert np.corrcoef(_resize(reduced, target).ravel(), _resize(full, target).ravel())[0, 1] > 0.99
    assert read_image(path, reduce_to=300)[0].shape == full.shape  # 470 / 2 < 300: no reduction


def test_other_syntaxes_reach_the_working_resolution_by_block_means(tmp_path, reference):
    from cxr_cad.io.working import area_reduce

    stored, _ = reference  # 128 px: reduce_to=32 -> level 1 (64 px >= 2 x 32)
    path = write_dicom(tmp_path / "e.dcm", stored, bits_stored=12, transfer_syntax="rle")
    pixels, meta = read_image(path, reduce_to=32)
    means = area_reduce(stored, 1)  # block means of the stored values, then min-max (no window)
    np.testing.assert_allclose(pixels, (means - means.min()) / (means.max() - means.min()), atol=1e-6)
    assert (meta["rows"], meta["columns"]) == (128, 128)  # the stored size
    assert read_image(path, reduce_to=33)[0].shape == (128, 128)  # 128 < 4 x 33: stays as stored
    with pytest.raises(ConfigError):
        read_image(tmp_path / "e.dcm", reduce_to=0)

"""cxr_cad.io on PNG and JPEG files: bit depths, colour -> gray, detection by content, rejections."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxr_cad.errors import Reason, RejectedFile
from cxr_cad.io import META_KEYS, AcceptPolicy, read_header, read_image
from tests.factories.synth import synthetic_cxr


def gray8(size=(48, 40), seed=0) -> np.ndarray:
    return (synthetic_cxr(np.random.default_rng(seed), max(size))[: size[0], : size[1]] * 255).astype(np.uint8)


def reason_of(fn, path, **kwargs) -> Reason:
    with pytest.raises(RejectedFile) as info:
        fn(path, **kwargs)
    assert str(path) in str(info.value)
    return info.value.reason


def test_png_8bit_gray_exact(tmp_path):
    arr = gray8()
    Image.fromarray(arr).save(tmp_path / "a.png")
    pixels, meta = read_image(tmp_path / "a.png")
    assert pixels.dtype == np.float32 and pixels.shape == arr.shape
    np.testing.assert_allclose(pixels, arr / 255.0, atol=1e-6)
    assert tuple(meta) == META_KEYS
    assert (meta["format"], meta["rows"], meta["columns"], meta["bits_stored"]) == ("png", 48, 40, 8)
    assert meta["sop_instance_uid"] == "" and meta["photometric_interpretation"] == "MONOCHROME2"
    assert read_header(tmp_path / "a.png") == meta


def test_png_16bit_gray_exact(tmp_path):
    arr = (gray8().astype(np.uint16) * 257 + 3).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "b.png")
    pixels, meta = read_image(tmp_path / "b.png")
    np.testing.assert_allclose(pixels, arr / 65535.0, atol=1e-6)
    assert meta["bits_stored"] == 16


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_colour_modes_become_gray(tmp_path, mode):
    arr = gray8()
    base = Image.fromarray(arr)
    image = base.convert(mode)
    if mode == "RGBA":
        image.putalpha(Image.fromarray((np.arange(arr.size) % 256).reshape(arr.shape).astype(np.uint8)))
    image.save(tmp_path / "c.png")
    pixels, meta = read_image(tmp_path / "c.png")
    np.testing.assert_allclose(pixels, arr / 255.0, atol=1.5 / 255)  # equal channels: luma == gray; alpha dropped


def test_rgb_luma_weights(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[4:, :, 1], rgb[:, 4:, 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    pixels, meta = read_image(tmp_path / "rgb.png")
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(pixels, expected, atol=1e-5)
    assert meta["photometric_interpretation"] == "RGB"


def test_bilevel_png(tmp_path):
    arr = gray8() > 128
    Image.fromarray(arr).save(tmp_path / "bw.png")
    np.testing.assert_array_equal(read_image(tmp_path / "bw.png")[0], arr.astype(np.float32))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_close_to_source(tmp_path, mode):
    arr = gray8((96, 80))
    Image.fromarray(arr).convert(mode).save(tmp_path / "x.jpg", quality=95)
    pixels, meta = read_image(tmp_path / "x.jpg")
    assert meta["format"] == "jpeg" and pixels.shape == arr.shape
    assert float(np.abs(pixels - arr / 255.0).mean()) < 0.01


def test_detection_by_content_not_name(tmp_path):
    arr = gray8()
    Image.fromarray(arr).save(tmp_path / "x.png")
    (tmp_path / "x.png").rename(tmp_path / "scan.dcm")
    Image.fromarray(arr).save(tmp_path / "noext", format="JPEG")
    assert read_header(tmp_path / "scan.dcm")["format"] == "png"
    assert read_image(tmp_path / "noext")[1]["format"] == "jpeg"


def test_policy_does_not_apply_to_png(tmp_path):
    Image.fromarray(gray8()).save(tmp_path / "a.png")
    assert read_header(tmp_path / "a.png", policy=AcceptPolicy(modalities=("CT",)))["modality"] == ""


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_raster_is_decode_failed_but_header_ok(tmp_path, fmt, suffix):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (200, 200), dtype=np.uint8)).save(tmp_path / f"t.{suffix}", format=fmt)
    data = (tmp_path / f"t.{suffix}").read_bytes()
    (tmp_path / f"t.{suffix}").write_bytes(data[: len(data) // 2])
    assert read_header(tmp_path / f"t.{suffix}")["rows"] == 200
    assert reason_of(read_image, tmp_path / f"t.{suffix}") == Reason.DECODE_FAILED


def test_broken_png_header_is_unreadable(tmp_path):
    (tmp_path / "h.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    assert reason_of(read_header, tmp_path / "h.png") == Reason.UNREADABLE


def test_constant_png(tmp_path):
    Image.fromarray(np.full((16, 16), 77, np.uint8)).save(tmp_path / "k.png")
    assert reason_of(read_image, tmp_path / "k.png") == Reason.CONSTANT_IMAGE


def test_animated_png_is_multi_frame(tmp_path):
    frames = [Image.fromarray(gray8(seed=s)) for s in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    assert reason_of(read_header, tmp_path / "anim.png") == Reason.MULTI_FRAME


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP", "WEBP"])
def test_other_image_formats_unsupported(tmp_path, fmt):
    if fmt == "WEBP":
        pytest.importorskip("PIL.WebPImagePlugin")
        from PIL import features

        if not features.check("webp"):
            pytest.skip("Pillow built without WebP")
    Image.fromarray(gray8()).save(tmp_path / "img", format=fmt)
    assert reason_of(read_image, tmp_path / "img") == Reason.UNSUPPORTED_FORMAT


def test_jpeg_and_png_are_read_at_the_working_resolution(tmp_path):
    """JPEG by DCT scaling (Pillow draft), PNG by block means: both at ceil(size / 2**level),
    close to the full decode's block means (issue 19: the same working resolution for every container)."""
    from scipy.ndimage import gaussian_filter

    from cxr_cad.io.working import area_reduce, working_level, working_shape
    from tests.factories.dicom import chest_phantom

    arr = np.rint(gaussian_filter(chest_phantom((530, 470), bits_stored=8).astype(np.float64), 2.0)).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(arr).save(tmp_path / "big.png")
    full, meta = read_image(tmp_path / "big.jpg")
    for target in (50, 100, 117, 300):
        level = working_level(530, 470, target)
        assert level == {50: 2, 100: 1, 117: 1, 300: 0}[target]
        reduced, meta_r = read_image(tmp_path / "big.jpg", reduce_to=target)
        png, _ = read_image(tmp_path / "big.png", reduce_to=target)
        assert meta_r == meta  # rows/columns stay the stored size
        assert reduced.shape == png.shape == working_shape(530, 470, level)
        np.testing.assert_allclose(png, area_reduce(arr, level) / 255, atol=1e-6)
        box = area_reduce(full, level)  # the full JPEG decode, block-averaged
        assert float(np.abs(reduced - box).mean()) < 0.005 and float(np.abs(reduced - box).max()) < 0.05
        if level == 0:
            assert np.array_equal(reduced, full)


def test_synthetic_png_cohort_reads(png_cohort):
    root, df = png_cohort
    for rel in df["path"][:4]:
        pixels, meta = read_image(root / rel)
        assert pixels.shape == (96, 96) and 0 <= pixels.min() < pixels.max() <= 1

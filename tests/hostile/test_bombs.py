"""Class 2: decompression bombs are rejected from their declared size, before any decode."""

from __future__ import annotations

import csv
import struct
import zlib

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit

from cxr_cad.config.accept import DEFAULT_MAX_IMAGE_BYTES
from cxr_cad.errors import ConfigError, Reason, RejectedFile
from cxr_cad.io import AcceptPolicy, read_header, read_image
from cxr_cad.io.codestream import codestream_size
from tests.hostile import inputs as H
from tests.hostile.conftest import RSS_LIMIT_MB
from tests.hostile.runner import run_cli


def _reason(fn, path, **kw):
    with pytest.raises(RejectedFile) as info:
        fn(path, **kw)
    return info.value.reason


@pytest.mark.parametrize(
    "rows,columns,bits,frames",
    [
        (65535, 65535, 16, None),
        (65535, 65535, 8, None),
        (12000, 12000, 16, None),
        (20000, 8000, 8, None),
    ],
)
def test_rle_bomb_rejected_before_decoding(tmp_path, rows, columns, bits, frames):
    path = H.rle_bomb_dicom(tmp_path / "bomb.dcm", rows, columns, bits, frames)
    assert path.stat().st_size < 20_000
    assert _reason(read_header, path) == Reason.IMAGE_TOO_LARGE
    assert _reason(read_image, path) == Reason.IMAGE_TOO_LARGE


def test_limit_is_configurable(tmp_path, monkeypatch):
    path = H.rle_bomb_dicom(tmp_path / "big.dcm", 4096, 4096, 16)  # 32 MiB declared
    assert _reason(read_header, path, policy=AcceptPolicy(max_image_bytes=16 << 20)) == Reason.IMAGE_TOO_LARGE
    read_header(path)  # under the default limit
    monkeypatch.setenv("CXR_CAD_MAX_IMAGE_BYTES", str(1 << 20))
    assert AcceptPolicy().max_image_bytes == 1 << 20
    assert _reason(read_header, path, policy=AcceptPolicy()) == Reason.IMAGE_TOO_LARGE
    with pytest.raises(ConfigError):
        AcceptPolicy(max_image_bytes=0)


def test_default_limit_is_a_few_detectors():
    largest_detector = 4300 * 4300 * 2
    assert 2 * largest_detector < DEFAULT_MAX_IMAGE_BYTES < 8 * largest_detector


@pytest.mark.parametrize("size", [(30000, 30000), (12000, 12000)])
def test_png_bomb_gets_a_reason_code(tmp_path, size):
    path = H.png_bomb(tmp_path / "bomb.png", *size)
    assert _reason(read_header, path) == Reason.IMAGE_TOO_LARGE
    assert _reason(read_image, path) == Reason.IMAGE_TOO_LARGE


def test_jpeg_codestream_larger_than_its_header_is_not_decoded(tmp_path):
    # the DICOM header says 64 x 64; the JPEG frame header (SOF0) says 60000 x 60000
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 60000, 60000, 1) + b"\x01\x11\x00"
    frame = b"\xff\xd8" + sof + b"\xff\xd9"
    assert codestream_size(frame) == (60000, 60000, 1, 8)
    ds = H.crafted_dicom(JPEGBaseline8Bit, encapsulate([frame + b"\x00" * (len(frame) % 2)]))
    ds["PixelData"].VR = "OB"
    path = tmp_path / "jpeg_bomb.dcm"
    ds.save_as(path, enforce_file_format=True)
    read_header(path)  # the header alone is fine
    assert _reason(read_image, path) == Reason.IMAGE_TOO_LARGE


def test_j2k_siz_is_read():
    siz = (
        b"\xff\x4f\xff\x51"
        + struct.pack(">HHIIIIIIIIH", 41, 0, 70000, 50000, 0, 0, 512, 512, 0, 0, 1)
        + bytes([15, 1, 1])
    )
    assert codestream_size(siz) == (50000, 70000, 1, 16)


def test_deflate_bomb_is_rejected_in_bounded_memory(tmp_path):
    ds = H.crafted_dicom(DeflatedExplicitVRLittleEndian, b"\x00" * (64 * 64))
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    read_header(path)
    # now replace the deflated body with one that inflates to ~300 MiB
    raw = path.read_bytes()
    from pydicom.filereader import read_file_meta_info

    start = 132 + 12 + int(read_file_meta_info(path).FileMetaInformationGroupLength)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = comp.compress(b"\x00" * (300 << 20)) + comp.flush()
    path.write_bytes(raw[:start] + body)
    assert path.stat().st_size < 1 << 20
    assert _reason(read_header, path) == Reason.IMAGE_TOO_LARGE


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_predict_and_ingest_on_bombs_stay_small(tmp_path, bundle):
    src = tmp_path / "src"
    src.mkdir()
    H.rle_bomb_dicom(src / "rle.dcm")
    H.png_bomb(src / "bomb.png")
    H.write_pngs(src, n=1)
    o = run_cli(["predict", src, "--model", bundle, "--out", tmp_path / "pred", "--workers", "1"], timeout=600)
    assert o.rc == 0, o.stderr
    assert o.rss_mb < RSS_LIMIT_MB
    rejected = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in _rows(tmp_path / "pred" / "rejected.csv")}
    assert rejected == {"rle.dcm": "IMAGE_TOO_LARGE", "bomb.png": "IMAGE_TOO_LARGE"}
    assert len(_rows(tmp_path / "pred" / "predictions.csv")) == 1
    o = run_cli(["ingest", src, "--out", tmp_path / "ing", "--verify-pixels", "--workers", "1"], timeout=600)
    assert o.rc == 0, o.stderr
    assert o.rss_mb < RSS_LIMIT_MB
    reasons = sorted(r["reason"] for r in _rows(tmp_path / "ing" / "rejected.csv"))
    assert reasons == ["IMAGE_TOO_LARGE", "IMAGE_TOO_LARGE"]


def test_largest_allowed_image_decodes_within_the_memory_bar(tmp_path):
    """An image just under the default limit (8192 x 8192, 16 bit) is read, and not the host."""
    import resource
    import subprocess
    import sys

    from pydicom.uid import ExplicitVRLittleEndian

    ds = H.crafted_dicom(ExplicitVRLittleEndian, b"", 8192, 8192)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = np.tile(np.arange(8192, dtype=np.uint16) % 4096, (8192, 1)).tobytes()
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    code = (
        "import sys, resource; from cxr_cad.io import read_image; p, _ = read_image(sys.argv[1]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    p = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=600, text=True)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout.strip()) < RSS_LIMIT_MB
    assert before >= 0

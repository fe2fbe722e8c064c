"""Property test: DICOM header fields that drive allocation and decoding never crash the reader
and never allocate beyond the size limit.

Fuzzed: (0028,0010) Rows, (0028,0011) Columns, (0028,0100) Bits Allocated, (0028,0008) Number
of Frames, (0028,0002) Samples per Pixel, (0028,0103) Pixel Representation, the transfer syntax,
and the pixel data (native of any length, or encapsulated fragments truncated anywhere). Every
case must either read or raise :class:`~cxr_cad.errors.RejectedFile` (the documented rejection),
and the peak traced allocation stays within a small multiple of the policy's limit.
Fixed budget: ``max_examples`` and ``deadline`` below.
"""

from __future__ import annotations

import os
import resource
import struct
import tempfile
import tracemalloc
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pydicom.config import disable_value_validation  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, RLELossless  # noqa: E402

from cxr_cad.errors import RejectedFile  # noqa: E402
from cxr_cad.io import AcceptPolicy, read_header, read_image  # noqa: E402

LIMIT = 4 << 20  # the policy's declared-size limit in this test
PEAK_LIMIT = 16 * LIMIT  # traced allocation allowed per case (float copies, codec buffers)
POLICY = AcceptPolicy(max_image_bytes=LIMIT)
_TMP = Path(tempfile.mkdtemp(prefix="cxr_fuzz_"))


def _rle_frame(rows: int, columns: int, segments: int, cut: int) -> bytes:
    header = struct.pack("<16I", segments, *[64 + 16 * i for i in range(segments)], *([0] * (15 - segments)))
    body = bytes([0x81, 0x7F]) * (8 * segments)
    return (header + body)[:cut]


def _jpeg_like(rows: int, columns: int, cut: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, rows, columns, 1) + b"\x01\x11\x00"
    return (b"\xff\xd8" + sof + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x12" * 64 + b"\xff\xd9")[:cut]


def _j2k_like(rows: int, columns: int, cut: int) -> bytes:
    siz = (
        b"\xff\x4f\xff\x51"
        + struct.pack(">HHIIIIIIIIH", 41, 0, columns, rows, 0, 0, 64, 64, 0, 0, 1)
        + bytes([7, 1, 1])
    )
    return (siz + b"\xff\x90" + b"\x00" * 64 + b"\xff\xd9")[:cut]


small = st.integers(1, 64)
headers = st.fixed_dictionaries(
    {
        # each field mostly plausible (so decoding is reached), sometimes anything
        "rows": st.one_of(small, small, st.integers(0, 65535)),
        "columns": st.one_of(small, small, st.integers(0, 65535)),
        "bits": st.one_of(st.just(8), st.just(16), st.sampled_from([0, 1, 7, 12, 24, 32, 64, 255])),
        "frames": st.one_of(
            st.none(),
            st.just("1"),
            st.integers(-2, 2**31 - 1).map(str),
            st.sampled_from(["  ", "x ", "1.", ".5", "-x"]),
        ),
        "samples": st.one_of(st.just(1), st.just(1), st.integers(0, 4)),
        "signed": st.one_of(st.just(0), st.just(1), st.integers(2, 3)),
        "photometric": st.one_of(
            st.just("MONOCHROME2"), st.just("MONOCHROME1"), st.sampled_from(["RGB", "YBR_FULL", ""])
        ),
        "syntax": st.sampled_from(["native", "rle", "jpeg", "jpegls", "j2k"]),
        "length": st.one_of(st.just(-1), st.integers(0, 4096)),  # -1: exactly what the header declares
        "cut": st.integers(0, 200),
        "segments": st.integers(0, 15),
    }
)


def _write(h: dict) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ts = {
        "native": ExplicitVRLittleEndian,
        "rle": RLELossless,
        "jpeg": JPEGBaseline8Bit,
        "jpegls": JPEGLosslessSV1,
        "j2k": JPEG2000Lossless,
    }[h["syntax"]]
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality, ds.ViewPosition = "CR", "PA"
    ds.Rows, ds.Columns = h["rows"], h["columns"]
    ds.BitsAllocated = h["bits"]
    ds.BitsStored = min(h["bits"], 16) or 1
    ds.HighBit = ds.BitsStored - 1
    ds.SamplesPerPixel = h["samples"]
    ds.PixelRepresentation = h["signed"]
    if h["photometric"]:
        ds.PhotometricInterpretation = h["photometric"]
    garbage = h["frames"] is not None and not h["frames"].lstrip("-").isdigit()
    if h["frames"] is not None:
        ds.NumberOfFrames = "99" if garbage else h["frames"]
    if h["syntax"] == "native":
        n = h["length"]
        if n < 0:
            n = min(h["rows"] * h["columns"] * max(1, h["samples"]) * max(1, h["bits"] // 8), 1 << 16)
        ds.PixelData = (bytes(range(256)) * (n // 256 + 1))[:n] + b"\x00" * (n % 2)
    else:
        make = {
            "rle": lambda: _rle_frame(h["rows"], h["columns"], max(1, h["segments"]), 64 + h["cut"]),
            "jpeg": lambda: _jpeg_like(h["rows"], h["columns"], h["cut"]),
            "jpegls": lambda: _jpeg_like(h["rows"], h["columns"], h["cut"]),
            "j2k": lambda: _j2k_like(h["rows"], h["columns"], h["cut"]),
        }[h["syntax"]]
        frame = make()
        ds.PixelData = encapsulate([frame + b"\x00" * (len(frame) % 2) or b"\x00\x00"])
        ds["PixelData"].VR = "OB"
    path = _TMP / "case.dcm"
    ds.save_as(path, enforce_file_format=True)
    if garbage:  # a value no writer validation lets through: patch the 2 bytes in the file
        raw = bytearray(path.read_bytes())
        at = raw.find(b"\x28\x00\x08\x00IS\x02\x00") + 8
        raw[at : at + 2] = h["frames"].encode().ljust(2)[:2]
        path.write_bytes(bytes(raw))
    return path


@settings(
    max_examples=int(os.environ.get("CXR_CAD_FUZZ_EXAMPLES", "150")),
    deadline=5000,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
@given(headers)
def test_header_fields_never_crash_or_overallocate(h):
    with disable_value_validation():  # write invalid values (IS "x") as a broken exporter would
        path = _write(h)
    tracemalloc.start()
    try:
        for reader in (read_header, read_image):
            try:
                reader(path, policy=POLICY)
            except RejectedFile:
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"{h}: traced peak {peak / 2**20:.0f} MiB"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module", autouse=True)
def peak_before_fuzz() -> float:
    """The process's resident peak before this module's first test. Under pytest-xdist a worker
    may already have trained a network (2+ GB) before the fuzz run; the peak is a high-water mark,
    so it can only judge the fuzz run when nothing before it came near the limit."""
    return _peak_mb()


def test_whole_fuzz_run_stayed_within_memory(peak_before_fuzz):
    """After the property test (same process): the resident peak never got near a bomb's size."""
    if peak_before_fuzz >= 1024:
        pytest.skip(
            f"this process already peaked at {peak_before_fuzz:.0f} MB before the fuzz run; "
            "the per-case traced bound (PEAK_LIMIT) still applied to every case"
        )
    assert _peak_mb() < 2048

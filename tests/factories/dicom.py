"""Synthetic DICOM files for tests, written with pydicom (function-based factory).

Main entry: :func:`write_dicom`. Helpers: :func:`chest_phantom` (stored values of a
chest-like image), :func:`invert_stored` (the MONOCHROME1 twin of stored values),
:func:`write_sr` (a Structured Report), :func:`truncate_file`.

Transfer syntaxes: implicit / explicit VR little endian, explicit VR big endian,
deflated, RLE lossless (pydicom), JPEG-LS lossless / near-lossless (pyjpegls),
JPEG 2000 lossless / lossy (pylibjpeg-openjpeg), JPEG baseline (Pillow + encapsulate;
8-bit only), JPEG lossless Process 14 (:func:`encode_jpeg_lossless`, a small encoder
here, as no installed package encodes it; unsigned data). Everything is deterministic.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    JPEG2000,
    UID,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

#: Transfer syntaxes write_dicom can produce, by short name.
SYNTAXES = {
    "implicit": ImplicitVRLittleEndian,
    "explicit": ExplicitVRLittleEndian,
    "big_endian": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "jpegls_near": JPEGLSNearLossless,
    "j2k": JPEG2000Lossless,
    "j2k_lossy": JPEG2000,
    "jpeg_baseline": JPEGBaseline8Bit,
    "jpeg_lossless": JPEGLosslessSV1,  # Process 14, selection value 1 (this module's encoder)
    "jpeg_lossless_p7": JPEGLossless,  # Process 14, here with predictor 7
}
LOSSLESS = (
    "implicit",
    "explicit",
    "big_endian",
    "deflated",
    "rle",
    "jpegls",
    "j2k",
    "jpeg_lossless",
    "jpeg_lossless_p7",
)
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid uses


def chest_phantom(
    size: int | tuple[int, int] = 64, *, bits_stored: int = 12, signed: bool = False, seed: int = 0
) -> np.ndarray:
    """Stored values of a chest-like image (bright body/spine, dark lungs), MONOCHROME2 polarity.

    Spans most of the ``bits_stored`` range (unsigned ``0..2**bits-1`` or signed
    ``-2**(bits-1)..2**(bits-1)-1``); dtype uint8/uint16/int8/int16 to fit.
    """
    rows, cols = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    yy, xx = yy / rows, xx / cols
    img = 0.8 - 0.3 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    for cx in (0.28, 0.72):
        img[((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.33) ** 2 < 1.0] = 0.25
    img += 0.05 * np.sin(xx * 40) * np.cos(yy * 30) + rng.normal(0, 0.02, img.shape)
    img = np.clip(img, 0.02, 0.98)
    top = 2**bits_stored - 1
    values = np.rint(img * top).astype(np.int64)
    if signed:
        values -= 2 ** (bits_stored - 1)
    dtype = (np.int8 if signed else np.uint8) if bits_stored <= 8 else (np.int16 if signed else np.uint16)
    return values.astype(dtype)


def invert_stored(pixels: np.ndarray, *, bits_stored: int, signed: bool = False) -> np.ndarray:
    """Stored values of the MONOCHROME1 twin: ``min + max - v`` over the ``bits_stored`` range."""
    lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    return (lo + hi - pixels.astype(np.int64)).astype(pixels.dtype)


def _lut_item(first_mapped: int, data: Sequence[int], bits: int) -> Dataset:
    item = Dataset()
    data = np.asarray(data, dtype=np.uint16)
    item.LUTDescriptor = [len(data) if len(data) < 65536 else 0, first_mapped, bits]
    item["LUTDescriptor"].VR = "US"
    item.LUTData = data.tolist()
    item["LUTData"].VR = "US"
    return item


def write_dicom(
    path: str | Path,
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    bits_allocated: int | None = None,
    signed: bool = False,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | tuple[Sequence[float], Sequence[float]] | None = None,
    voi_function: str | None = None,
    voi_lut: tuple[int, Sequence[int], int] | None = None,
    modality_lut: tuple[int, Sequence[int], int] | None = None,
    transfer_syntax: str = "explicit",
    modality: str | None = "CR",
    view_position: str | None = "PA",
    sop_class_uid: str = ComputedRadiographyImageStorage,
    no_pixel_data: bool = False,
    frames: int = 1,
    file_meta: bool = True,
    preamble: bool = True,
    patient_id: str = "PAT0001",
    patient_name: str = "DOE^JANE",
    patient_sex: str = "F",
    patient_age: str = "045Y",
    body_part: str = "CHEST",
    manufacturer: str = "cxr_cad test factory",
    sop_instance_uid: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    j2k_cr: float = 10.0,
    jls_error: int = 2,
    jpeg_quality: int = 95,
    extra: dict | None = None,
) -> Path:
    """Write one synthetic DICOM file and return its path.

    Args:
        pixels: stored values, 2-D (rows, cols), 3-D (frames, rows, cols) or
            (rows, cols, 3) with ``photometric="RGB"``; default :func:`chest_phantom`.
        photometric: (0028,0004) Photometric Interpretation.
        bits_stored / bits_allocated / signed: (0028,0101) / (0028,0100) /
            (0028,0103) Pixel Representation; bits_allocated defaults to 8 or 16.
        rescale: ((0028,1053) Rescale Slope, (0028,1052) Rescale Intercept).
        window: ((0028,1050) Window Center, (0028,1051) Window Width), scalars or lists.
        voi_function: (0028,1056) VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID).
        voi_lut / modality_lut: (first mapped value, LUT data, bits per entry) written as
            (0028,3010) VOI LUT Sequence / (0028,3000) Modality LUT Sequence.
        transfer_syntax: a key of :data:`SYNTAXES` or a UID.
        modality / view_position: (0008,0060) / (0018,5101); None omits the element.
        sop_class_uid: (0008,0016), CR Image Storage by default.
        no_pixel_data: omit (7FE0,0010) Pixel Data.
        frames: > 1 writes (0028,0008) Number of Frames and repeats a 2-D ``pixels``.
        file_meta / preamble: False writes a bare data set (no File Meta / no 128-byte
            preamble + "DICM"); ``file_meta=False`` implies no preamble.
        extra: more attributes, keyword -> value.
    """
    path = Path(path)
    ts = UID(SYNTAXES.get(transfer_syntax, transfer_syntax))
    if pixels is None:
        pixels = chest_phantom(64, bits_stored=bits_stored, signed=signed)
    pixels = np.asarray(pixels)
    if frames > 1 and pixels.ndim == 2:
        pixels = np.stack([pixels] * frames)
    samples = 3 if photometric.upper() in ("RGB", "YBR_FULL", "YBR_FULL_422") else 1
    bits_allocated = bits_allocated or (8 if bits_stored <= 8 else 16)
    rows, cols = pixels.shape[1:3] if frames > 1 else pixels.shape[:2]

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    if modality is not None:
        ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientSex = patient_sex
    ds.PatientAge = patient_age
    ds.BodyPartExamined = body_part
    if view_position is not None:
        ds.ViewPosition = view_position
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        ds.VOILUTSequence = DicomSequence([_lut_item(*voi_lut)])
    if modality_lut is not None:
        item = _lut_item(*modality_lut)
        item.ModalityLUTType = "US"
        ds.ModalityLUTSequence = DicomSequence([item])
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(_UID_ROOT + "1")
    ds.file_meta = meta
    if not no_pixel_data:
        _set_pixels(ds, pixels, ts, signed=signed, j2k_cr=j2k_cr, jls_error=jls_error, jpeg_quality=jpeg_quality)
    else:
        ds.file_meta.TransferSyntaxUID = ts
    _save(ds, path, ts, file_meta=file_meta, preamble=preamble)
    return path


def encode_jpeg_lossless(frame: np.ndarray, precision: int, predictor: int = 1) -> bytes:
    """Encode one unsigned 2-D frame as a JPEG lossless (ITU-T T.81 Process 14) codestream.

    One component, point transform 0, one Huffman table giving every difference
    category (SSSS 0..16) a 5-bit code. Predictors 1-7 as T.81 Table H.1; the
    first row uses Ra, the first column Rb, the first sample ``2**(precision-1)``.
    """
    x = frame.astype(np.int64)
    rows, cols = x.shape
    ra = np.zeros_like(x)
    rb = np.zeros_like(x)
    rc = np.zeros_like(x)
    ra[:, 1:], rb[1:, :], rc[1:, 1:] = x[:, :-1], x[:-1, :], x[:-1, :-1]
    pred = {
        1: ra,
        2: rb,
        3: rc,
        4: ra + rb - rc,
        5: ra + ((rb - rc) >> 1),
        6: rb + ((ra - rc) >> 1),
        7: (ra + rb) >> 1,
    }[predictor].copy()
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[0, 0] = 2 ** (precision - 1)
    diff = (x - pred) % 65536
    diff = np.where(diff > 32768, diff - 65536, diff)  # -32767..32768
    bits = []
    for d in diff.ravel().tolist():
        ssss = 16 if d == 32768 else abs(d).bit_length()
        bits.append(format(ssss, "05b"))
        if 0 < ssss < 16:
            bits.append(format(d if d > 0 else d - 1 + (1 << ssss), f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    body = int(stream, 2).to_bytes(len(stream) // 8, "big") if stream else b""
    body = body.replace(b"\xff", b"\xff\x00")
    sof = (
        b"\xff\xc3"
        + (11).to_bytes(2, "big")
        + bytes([precision])
        + rows.to_bytes(2, "big")
        + cols.to_bytes(2, "big")
        + b"\x01\x01\x11\x00"
    )
    counts = bytes([0, 0, 0, 0, 17] + [0] * 11)
    dht = b"\xff\xc4" + (3 + 16 + 17).to_bytes(2, "big") + b"\x00" + counts + bytes(range(17))
    sos = b"\xff\xda" + (8).to_bytes(2, "big") + b"\x01\x01\x00" + bytes([predictor, 0, 0])
    return b"\xff\xd8" + sof + dht + sos + body + b"\xff\xd9"


def _set_pixels(
    ds: Dataset, pixels: np.ndarray, ts: UID, *, signed: bool, j2k_cr: float, jls_error: int, jpeg_quality: int
) -> None:
    dtype = np.dtype(("i" if signed else "u") + str(ds.BitsAllocated // 8))
    arr = np.ascontiguousarray(pixels.astype(dtype))
    if ts in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.PixelData = arr.astype(dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    elif ts == ExplicitVRBigEndian:
        ds.PixelData = arr.astype(dtype.newbyteorder(">")).tobytes()
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    elif ts == JPEGBaseline8Bit:
        from PIL import Image

        if ds.BitsAllocated != 8 or ds.SamplesPerPixel != 1:
            raise ValueError("the factory writes JPEG baseline for 8-bit grayscale only")
        buffer = io.BytesIO()
        frames = arr if arr.ndim == 3 else arr[None]
        encoded = []
        for frame in frames:
            buffer.seek(0)
            buffer.truncate()
            Image.fromarray(frame.astype(np.uint8), mode="L").save(buffer, format="JPEG", quality=jpeg_quality)
            encoded.append(buffer.getvalue())
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
        ds.LossyImageCompression = "01"
    elif ts in (JPEGLosslessSV1, JPEGLossless):
        if signed or ds.SamplesPerPixel != 1:
            raise ValueError("the factory writes JPEG lossless for unsigned grayscale only")
        frames = arr if arr.ndim == 3 else arr[None]
        predictor = 1 if ts == JPEGLosslessSV1 else 7
        ds.PixelData = encapsulate([encode_jpeg_lossless(f, ds.BitsStored, predictor) for f in frames])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
    else:
        kwargs: dict = {}
        if ts == JPEGLSNearLossless:
            kwargs["jls_error"] = jls_error
        if ts == JPEG2000:
            kwargs["j2k_cr"] = [j2k_cr]
        ds.compress(ts, arr, generate_instance_uid=False, **kwargs)


def _save(ds: Dataset, path: Path, ts: UID, *, file_meta: bool, preamble: bool) -> None:
    if ts != UID(ds.file_meta.TransferSyntaxUID) and ts in SYNTAXES.values() and not ts.is_compressed:
        ds.file_meta.TransferSyntaxUID = ts
    implicit = ts == ImplicitVRLittleEndian
    little = ts != ExplicitVRBigEndian
    if file_meta:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        if not preamble:
            data = data[132:]
    else:
        if ts.is_compressed or ts == DeflatedExplicitVRLittleEndian:
            raise ValueError("a file without File Meta must use an uncompressed transfer syntax")
        del ds.file_meta
        buffer = io.BytesIO()
        ds.save_as(buffer, implicit_vr=implicit, little_endian=little)
        data = buffer.getvalue()
    path.write_bytes(data)


def write_sr(path: str | Path, **kwargs) -> Path:
    """A Comprehensive SR document (no Pixel Data): ``NOT_AN_IMAGE_SOP_CLASS``."""
    kwargs.setdefault("modality", "SR")
    return write_dicom(path, sop_class_uid=ComprehensiveSRStorage, no_pixel_data=True, **kwargs)


def truncate_file(path: str | Path, keep: int | float) -> Path:
    """Cut ``path`` to ``keep`` bytes (int) or to that fraction of its size (float in (0, 1))."""
    path = Path(path)
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else int(keep)
    path.write_bytes(data[:n])
    return path

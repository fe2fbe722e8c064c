"""One DICOM file -> header metadata, or (float32 display image, metadata).

Acceptance checks (in this order, each a :class:`~cxr_cad.errors.Reason`):

1. (0008,0016) SOP Class UID is a known non-image class (SR, PR, KO, RT plan,
   encapsulated PDF, waveform, ...) -> ``NOT_AN_IMAGE_SOP_CLASS``;
2. no (7FE0,0010) Pixel Data (nor Float / Double Float Pixel Data) -> ``NO_PIXEL_DATA``;
3. (0028,0008) Number of Frames > 1 -> ``MULTI_FRAME``;
4. (0008,0060) Modality not in ``policy.modalities`` -> ``UNSUPPORTED_MODALITY``;
5. (0018,5101) View Position LL/RL/LAT/LATERAL with ``policy.reject_lateral`` -> ``LATERAL_VIEW``;
6. (0028,0004) Photometric Interpretation other than MONOCHROME1/2, RGB or YBR_FULL(_422)/
   YBR_ICT/YBR_RCT (colour is converted to gray) -> ``UNSUPPORTED_PHOTOMETRIC``;
7. declared decoded size (0028,0010) Rows x (0028,0011) Columns x (0028,0008) Number of
   Frames x (0028,0002) Samples per Pixel x (0028,0100) Bits Allocated / 8 above
   ``policy.max_image_bytes`` -> ``IMAGE_TOO_LARGE``, before any pixel data is decoded.
   A Deflated Explicit VR Little Endian data set is inflated in bounded chunks first and
   rejected the same way when it inflates beyond the limit (a zip bomb).

The pixel pipeline lives in :mod:`cxr_cad.io.dicom_pixels`.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from cxr_cad.config.accept import LATERAL_VIEW_POSITIONS, AcceptPolicy
from cxr_cad.errors import Reason, RejectedFile
from cxr_cad.io.deflate import check_inflated_size

log = logging.getLogger(__name__)

#: Photometric interpretations read as a grayscale radiograph.
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
#: Colour photometric interpretations converted to gray (ITU-R BT.601 luma);
#: pydicom converts the YBR ones to RGB while decoding.
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")

_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float Pixel Data, Double Float Pixel Data
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _text(value: Any) -> str:
    """A DICOM value as a plain stripped string ("" for missing/None; multi-values joined by '\\')."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


#: Attributes the pixel pipeline uses; converted (and so validated) by :func:`check_header`.
_PIPELINE_KEYWORDS = (
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
)


def _get(ds: Dataset, keyword: str, path: Path, *, default: Any = None, required: bool = True) -> Any:
    """``ds.<keyword>``, or ``default`` when absent or empty.

    pydicom converts element values lazily, so a corrupt element raises only when
    read: for a ``required`` attribute that is ``UNREADABLE``; otherwise it is logged
    and ``default`` is returned.
    """
    try:
        value = ds.get(keyword, None)
    except Exception as exc:  # noqa: BLE001 - any conversion failure of a corrupt element
        if required:
            raise RejectedFile(
                Reason.UNREADABLE,
                f"DICOM attribute {keyword} has an unreadable value "
                f"({type(exc).__name__}: {exc}); the file is corrupt: re-export it",
                path,
            ) from exc
        # the exception text may quote the value (a patient identifier): log its type only
        log.warning("%s: ignoring unreadable DICOM attribute %s (%s)", path, keyword, type(exc).__name__)
        return default
    if value is None or value == "":
        return default
    return value


def _int(ds: Dataset, keyword: str, path: Path) -> int | None:
    value = _get(ds, keyword, path)
    if value is None:
        return None
    try:
        return int(value)
    except (ValueError, TypeError) as exc:
        raise RejectedFile(
            Reason.UNREADABLE,
            f"DICOM attribute {keyword} is not an integer ({value!r}); fix or re-export the file",
            path,
        ) from exc


def read_dataset(
    path: str | os.PathLike, *, header_only: bool, max_image_bytes: int | None = None
) -> tuple[Dataset, bool]:
    """Parse a DICOM file (with or without preamble/File Meta) -> (dataset, has_pixel_data).

    With ``header_only`` the parse stops before (7FE0,0010) Pixel Data; its presence
    is still detected, from the tag at the position where pydicom stopped (for a
    deflated transfer syntax, which must be inflated anyway, by deferring large values).
    A deflated data set is first inflated in bounded chunks (``max_image_bytes``, default
    :func:`~cxr_cad.config.accept.default_max_image_bytes`).

    Raises:
        RejectedFile: ``UNREADABLE`` when pydicom cannot parse the data set;
            ``IMAGE_TOO_LARGE`` for a deflated data set that inflates beyond the limit.
    """
    from cxr_cad.config.accept import default_max_image_bytes

    path = Path(path)
    limit = default_max_image_bytes() if max_image_bytes is None else int(max_image_bytes)
    try:
        with open(path, "rb") as fp:
            if DeflatedExplicitVRLittleEndian.encode() in fp.read(4096):  # the File Meta names it
                check_inflated_size(path, limit)
            fp.seek(0)
            ds = dcmread(fp, force=True, stop_before_pixels=header_only)
            if len(ds) == 0:
                raise RejectedFile(
                    Reason.UNREADABLE,
                    "no DICOM data set after the File Meta header; the file is truncated or corrupt: re-export it",
                    path,
                )
            ts = _ensure_transfer_syntax(ds)
            if not header_only:
                return ds, any(k in ds for k in _PIXEL_KEYWORDS)
            if ts != DeflatedExplicitVRLittleEndian:
                return ds, _pixel_tag_at(fp, big_endian=not ds.original_encoding[1])
        ds = dcmread(path, force=True, defer_size=1024)
        return ds, any(k in ds for k in _PIXEL_KEYWORDS)
    except RejectedFile:
        raise
    except OSError as exc:
        raise RejectedFile(Reason.UNREADABLE, f"cannot read the file: {exc}", path) from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure on a malformed file means "unreadable"
        raise RejectedFile(
            Reason.UNREADABLE,
            f"pydicom cannot parse the DICOM data set "
            f"({type(exc).__name__}: {exc}); the file is truncated or corrupt: re-export it",
            path,
        ) from exc


def _ensure_transfer_syntax(ds: Dataset) -> UID:
    """(0002,0010) Transfer Syntax UID, set from the encoding pydicom detected when the file has none."""
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    ts = ds.file_meta.get("TransferSyntaxUID")
    if not ts:
        implicit, little = ds.original_encoding
        ts = (
            (ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
            if little is not False
            else ExplicitVRBigEndian
        )
        ds.file_meta.TransferSyntaxUID = ts
    return UID(str(ts))


def _pixel_tag_at(fp: BinaryIO, *, big_endian: bool) -> bool:
    """True when the 4 bytes at ``fp``'s position are a (7FE0,0010)/(7FE0,0008)/(7FE0,0009) tag."""
    raw = fp.read(4)
    if len(raw) < 4:
        return False
    group, elem = struct.unpack(">HH" if big_endian else "<HH", raw)
    return ((group << 16) | elem) in _PIXEL_TAGS


def is_image_sop_class(uid: str) -> bool | None:
    """True for a known image storage SOP class, False for a known non-image one, None if unknown.

    Uses pydicom's UID dictionary: a registered SOP class is an image class when its
    name contains "Image Storage" (CR, DX, CT, MR, Secondary Capture, RT Image, ...).
    """
    if not uid:
        return None
    u = UID(uid)
    if not u.is_valid or u.name == str(u) or u.is_private:
        return None
    return "Image Storage" in u.name


def check_header(ds: Dataset, has_pixels: bool, path: Path, policy: AcceptPolicy) -> None:
    """Raise :class:`RejectedFile` when ``ds`` is not an image this ``policy`` accepts (module doc)."""
    _check_single_image(ds, has_pixels, path)
    _check_policy(ds, path, policy)
    _check_pixel_layout(ds, path)
    check_declared_size(ds, path, policy.max_image_bytes)
    for keyword in _PIPELINE_KEYWORDS:
        _get(ds, keyword, path)


def _check_single_image(ds: Dataset, has_pixels: bool, path: Path) -> None:
    """Checks 1-3 of the module doc: an image SOP class, with pixel data, one frame."""
    fm = ds.file_meta if hasattr(ds, "file_meta") else Dataset()
    sop_class = _text(_get(ds, "SOPClassUID", path)) or _text(_get(fm, "MediaStorageSOPClassUID", path))
    if is_image_sop_class(sop_class) is False:
        raise RejectedFile(
            Reason.NOT_AN_IMAGE_SOP_CLASS,
            f"(0008,0016) SOP Class UID is {sop_class} ({UID(sop_class).name}), not an image; remove it from the input",
            path,
        )
    if not has_pixels:
        raise RejectedFile(
            Reason.NO_PIXEL_DATA,
            "no (7FE0,0010) Pixel Data element; the file holds no "
            "image (a header-only or non-image object): remove it from the input",
            path,
        )
    frames = _int(ds, "NumberOfFrames", path)
    if frames is not None and frames > 1:
        raise RejectedFile(
            Reason.MULTI_FRAME,
            f"(0028,0008) Number of Frames is {frames}; only "
            "single-frame radiographs are read: export the frame you need as its own file",
            path,
        )


def _check_policy(ds: Dataset, path: Path, policy: AcceptPolicy) -> None:
    """Checks 4-5 of the module doc: the modality and the view position ``policy`` accepts."""
    modality = _text(_get(ds, "Modality", path, default=""))
    if not policy.accepts_modality(modality):
        shown = modality or "missing"
        raise RejectedFile(
            Reason.UNSUPPORTED_MODALITY,
            f"(0008,0060) Modality is {shown}, accepted are "
            f"{', '.join(policy.modalities)}; widen the accepted modalities if this is a "
            "radiograph",
            path,
        )
    view = _text(_get(ds, "ViewPosition", path, default="")).upper()
    if policy.reject_lateral and view in LATERAL_VIEW_POSITIONS:
        raise RejectedFile(
            Reason.LATERAL_VIEW,
            f"(0018,5101) View Position is {view}: a lateral view, and the model reads frontal (PA/AP) views only",
            path,
        )


def _check_pixel_layout(ds: Dataset, path: Path) -> None:
    """Check 6 of the module doc, and Rows/Columns present and positive."""
    photometric = _text(_get(ds, "PhotometricInterpretation", path, default="")).upper()
    samples = _int(ds, "SamplesPerPixel", path) or 1
    ok = (photometric in MONOCHROME + ("",) and samples == 1) or (photometric in COLOUR and samples == 3)
    if not ok:
        raise RejectedFile(
            Reason.UNSUPPORTED_PHOTOMETRIC,
            f"(0028,0004) Photometric Interpretation is "
            f"{photometric or 'missing'} with (0028,0002) Samples per Pixel {samples}; a "
            "radiograph must be MONOCHROME1/2 (RGB/YBR colour is converted to gray): "
            "re-export it as grayscale",
            path,
        )
    rows, columns = _int(ds, "Rows", path), _int(ds, "Columns", path)
    if not rows or not columns or rows < 0 or columns < 0:
        raise RejectedFile(
            Reason.UNREADABLE,
            "(0028,0010) Rows or (0028,0011) Columns is missing or 0; the image header is broken: re-export the file",
            path,
        )


def declared_bytes(ds: Dataset, path: Path) -> int:
    """Decoded size the header declares: Rows x Columns x frames x samples x bytes per sample.

    Missing (0028,0100) Bits Allocated counts as 16 bits; missing frames/samples as 1.
    A negative or zero frames/samples value counts as 1 (it is rejected elsewhere)."""
    rows, columns = _int(ds, "Rows", path) or 0, _int(ds, "Columns", path) or 0
    frames = max(1, _int(ds, "NumberOfFrames", path) or 1)
    samples = max(1, _int(ds, "SamplesPerPixel", path) or 1)
    bits = _int(ds, "BitsAllocated", path) or 16
    return abs(rows) * abs(columns) * frames * samples * max(1, -(-abs(bits) // 8))


def check_declared_size(ds: Dataset, path: Path, limit: int) -> None:
    """Raise ``IMAGE_TOO_LARGE`` when :func:`declared_bytes` exceeds ``limit``; decodes nothing."""
    size = declared_bytes(ds, path)
    if size > limit:
        raise RejectedFile(
            Reason.IMAGE_TOO_LARGE,
            f"the header declares {size / 2**20:,.0f} MiB of decoded "
            f"pixels ((0028,0010) Rows {ds.get('Rows')} x (0028,0011) Columns {ds.get('Columns')}"
            f" x frames x samples x bytes), above the {limit / 2**20:,.0f} MiB limit; a "
            "decompression bomb or a corrupt header (set CXR_CAD_MAX_IMAGE_BYTES to raise "
            "the limit for real images this large)",
            path,
        )


def header_meta(ds: Dataset, path: Path) -> dict:
    """The ``meta`` dict of the io contract from a parsed data set (never reads Patient's Name)."""
    fm = ds.file_meta if hasattr(ds, "file_meta") else Dataset()

    def text(keyword: str, source: Dataset = ds) -> str:
        return _text(_get(source, keyword, path, default="", required=False))

    sex = text("PatientSex").upper()
    return {
        "path": str(path),
        "format": "dicom",
        "sop_instance_uid": text("SOPInstanceUID") or text("MediaStorageSOPInstanceUID", fm),
        "patient_id": text("PatientID"),
        "study_instance_uid": text("StudyInstanceUID"),
        "series_instance_uid": text("SeriesInstanceUID"),
        "sop_class_uid": text("SOPClassUID") or text("MediaStorageSOPClassUID", fm),
        "modality": text("Modality").upper(),
        "view_position": text("ViewPosition").upper(),
        "body_part": text("BodyPartExamined").upper(),
        "photometric_interpretation": text("PhotometricInterpretation").upper(),
        "bits_stored": _int(ds, "BitsStored", path),
        "rows": _int(ds, "Rows", path),
        "columns": _int(ds, "Columns", path),
        "transfer_syntax": text("TransferSyntaxUID", fm),
        "manufacturer": text("Manufacturer"),
        "patient_sex": sex if sex in ("M", "F", "O") else "",
        "patient_age": text("PatientAge").upper(),
        "accession_number": text("AccessionNumber"),  # an identifier: a label key, never reported
    }


def read_dicom_header(path: str | os.PathLike, *, policy: AcceptPolicy = AcceptPolicy()) -> dict:
    """Header-only read of one DICOM file: checks acceptance, returns ``meta``; no pixel decoding.

    Raises:
        RejectedFile: ``UNREADABLE`` and every reason of :func:`check_header`.
    """
    path = Path(path)
    ds, has_pixels = read_dataset(path, header_only=True, max_image_bytes=policy.max_image_bytes)
    check_header(ds, has_pixels, path, policy)
    return header_meta(ds, path)


def read_dicom_image(
    path: str | os.PathLike, *, policy: AcceptPolicy = AcceptPolicy(), reduce_to: int | None = None
) -> tuple[np.ndarray, dict]:
    """Read one DICOM file -> (2-D float32 pixels in [0, 1], bright = bone; ``meta``).

    ``reduce_to`` lets JPEG 2000 data decode at a reduced resolution whose shorter
    side stays >= ``reduce_to``; ``meta["rows"]``/``["columns"]`` keep the stored size.

    Raises:
        RejectedFile: everything :func:`read_dicom_header` raises, plus ``DECODE_FAILED``
            and ``CONSTANT_IMAGE``.
    """
    from cxr_cad.io.dicom_pixels import display_pixels

    path = Path(path)
    ds, has_pixels = read_dataset(path, header_only=False, max_image_bytes=policy.max_image_bytes)
    check_header(ds, has_pixels, path, policy)
    meta = header_meta(ds, path)
    pixels = display_pixels(
        ds, path, apply_voi=policy.apply_voi, reduce_to=reduce_to, max_image_bytes=policy.max_image_bytes
    )
    return pixels, meta

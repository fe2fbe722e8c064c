"""PNG and JPEG files -> the same (float32 [0, 1] gray, meta) contract as DICOM.

PNG/JPEG files are display images already (windowed, bright = bone), so no VOI or
inversion applies: values are divided by the full scale of their bit depth
(255 for 8-bit, 65535 for 16-bit, 1 for bilevel). Colour (RGB, RGBA, palette,
CMYK, YCbCr) becomes gray by ITU-R BT.601 luma; alpha is dropped.

With ``reduce_to`` (the model input side) the image is brought to the working resolution
of :mod:`cxr_cad.io.working` before the scaling, as every DICOM is: a JPEG by libjpeg's DCT
scaling (Pillow ``draft``, 1/2 to 1/8) and block means for the rest, a PNG by block means.
(Issue 10 had turned ``draft`` off because it decoded down to about the model input itself
and moved scores by up to 0.1; at the working resolution the final area resize does the last
>= 2x, and JPEG and DICOM of one film score within 0.01: ``benchmarks/container_invariance.py``.)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr_cad.errors import Reason, RejectedFile
from cxr_cad.io.working import area_reduce, jpeg_draft, working_level

log = logging.getLogger(__name__)

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
#: PIL mode -> (bits per sample, colour?)
_MODES = {
    "1": (1, False),
    "L": (8, False),
    "LA": (8, False),
    "La": (8, False),
    "P": (8, True),
    "PA": (8, True),
    "I;16": (16, False),
    "I;16B": (16, False),
    "I;16L": (16, False),
    "I": (16, False),
    "RGB": (8, True),
    "RGBA": (8, True),
    "RGBa": (8, True),
    "RGBX": (8, True),
    "CMYK": (8, True),
    "YCbCr": (8, True),
}


def _open(path: Path, fmt: str) -> Image.Image:
    try:
        return Image.open(path, formats=(_FORMATS[fmt],))
    except Image.DecompressionBombError as exc:  # Pillow's own limit (2 x MAX_IMAGE_PIXELS), at open
        raise RejectedFile(
            Reason.IMAGE_TOO_LARGE,
            f"{fmt.upper()} header declares a decompression bomb ({exc}); it is not decoded",
            path,
        ) from exc
    except (UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise RejectedFile(
            Reason.UNREADABLE, f"{fmt.upper()} header cannot be parsed ({exc}); the file is corrupt: re-export it", path
        ) from exc
    except OSError as exc:
        raise RejectedFile(Reason.UNREADABLE, f"cannot read the file: {exc}", path) from exc


def _check_size(image: Image.Image, path: Path, fmt: str, limit: int) -> None:
    """``IMAGE_TOO_LARGE`` when width x height x bands x bytes per sample exceeds ``limit``."""
    bits, colour = _MODES[image.mode]
    columns, rows = image.size
    size = columns * rows * (3 if colour else 1) * (2 if bits == 16 else 1)
    if size > limit:
        raise RejectedFile(
            Reason.IMAGE_TOO_LARGE,
            f"{fmt.upper()} header declares {columns} x {rows} pixels "
            f"({size / 2**20:,.0f} MiB decoded), above the {limit / 2**20:,.0f} MiB limit; a "
            "decompression bomb or a corrupt header (set CXR_CAD_MAX_IMAGE_BYTES to raise the "
            "limit for real images this large)",
            path,
        )


def _meta(image: Image.Image, path: Path, fmt: str, max_image_bytes: int | None = None) -> dict:
    from cxr_cad.config.accept import default_max_image_bytes

    if image.mode not in _MODES:
        raise RejectedFile(
            Reason.UNSUPPORTED_PHOTOMETRIC,
            f"{fmt.upper()} pixel mode {image.mode!r} is not supported; save it as 8/16-bit grayscale or RGB",
            path,
        )
    n_frames = int(getattr(image, "n_frames", 1))  # only multi-frame formats have it
    if n_frames > 1:
        raise RejectedFile(
            Reason.MULTI_FRAME,
            f"animated {fmt.upper()} with {n_frames} frames; save the single image you need",
            path,
        )
    _check_size(image, path, fmt, default_max_image_bytes() if max_image_bytes is None else max_image_bytes)
    bits, _ = _MODES[image.mode]
    columns, rows = image.size
    return {
        "path": str(path),
        "format": fmt,
        "sop_instance_uid": "",
        "patient_id": "",
        "study_instance_uid": "",
        "series_instance_uid": "",
        "sop_class_uid": "",
        "modality": "",
        "view_position": "",
        "body_part": "",
        "photometric_interpretation": "MONOCHROME2" if not _MODES[image.mode][1] else "RGB",
        "bits_stored": bits,
        "rows": rows,
        "columns": columns,
        "transfer_syntax": "",
        "manufacturer": "",
        "patient_sex": "",
        "patient_age": "",
        "accession_number": "",
    }


def read_raster_header(path: str | os.PathLike, fmt: str, *, max_image_bytes: int | None = None) -> dict:
    """Header-only read of a PNG (``fmt="png"``) or JPEG (``"jpeg"``) file -> ``meta``.

    ``sop_instance_uid`` is left ``""``: scan fills in ``sha256:<hex>`` of the file bytes.

    Raises:
        RejectedFile: ``UNREADABLE``, ``UNSUPPORTED_PHOTOMETRIC`` (unsupported PIL mode),
            ``MULTI_FRAME`` (animated PNG), ``IMAGE_TOO_LARGE`` (declared size above
            ``max_image_bytes``, default :func:`~cxr_cad.config.accept.default_max_image_bytes`,
            or a Pillow decompression bomb).
    """
    path = Path(path)
    with _open(path, fmt) as image:
        return _meta(image, path, fmt, max_image_bytes)


def _to_gray(image: Image.Image) -> np.ndarray:
    """Float32 gray values in the image's own scale (0..255 or 0..65535)."""
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.float32)
    if mode in ("L", "LA", "La"):
        return np.asarray(image.getchannel(0) if mode != "L" else image, dtype=np.float32)
    if mode.startswith("I"):
        return np.asarray(image, dtype=np.float32)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return np.tensordot(rgb, _LUMA, axes=([2], [0])).astype(np.float32)


def read_raster_image(
    path: str | os.PathLike, fmt: str, *, reduce_to: int | None = None, max_image_bytes: int | None = None
) -> tuple[np.ndarray, dict]:
    """Read a PNG/JPEG file -> (2-D float32 in [0, 1], meta); see the module doc for the scaling.

    Raises:
        RejectedFile: as :func:`read_raster_header`, plus ``DECODE_FAILED`` (truncated or
            corrupt data, too large) and ``CONSTANT_IMAGE``.
    """
    path = Path(path)
    with _open(path, fmt) as image:
        meta = _meta(image, path, fmt, max_image_bytes)
        bits = _MODES[image.mode][0]
        level = working_level(meta["rows"], meta["columns"], reduce_to)
        try:
            reached = jpeg_draft(image, level) if fmt == "jpeg" and level else 0
            image.load()
            gray = area_reduce(_to_gray(image), level - reached)
        except Image.DecompressionBombError as exc:
            raise RejectedFile(
                Reason.IMAGE_TOO_LARGE, f"{fmt.upper()} decompression bomb ({exc}); not decoded", path
            ) from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise RejectedFile(
                Reason.DECODE_FAILED,
                f"cannot decode the {fmt.upper()} pixel data "
                f"({type(exc).__name__}: {exc}); the file is truncated or corrupt",
                path,
            ) from exc
    if bits == 16 and image.mode == "I" and float(gray.max()) > 65535:
        bits = 32
    if float(gray.min()) == float(gray.max()):
        raise RejectedFile(
            Reason.CONSTANT_IMAGE, f"every pixel has the value {gray.flat[0]:g}; the image is blank", path
        )
    gray *= np.float32(1.0 / (2**bits - 1))
    return np.clip(gray, 0.0, 1.0, out=gray), meta

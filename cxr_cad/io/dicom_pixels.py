"""The DICOM pixel pipeline: decode -> Modality LUT -> VOI LUT/window -> MONOCHROME1 -> [0, 1].

Order (PS3.4 N.2 grayscale pipeline, display orientation bright = bone):

1. **Decode** the stored values through pydicom's decoders (native, deflated, RLE,
   JPEG baseline/extended (8 and 12-bit)/lossless, JPEG-LS, JPEG 2000, HTJ2K), each
   compressed syntax through the permissively licensed plugins that
   :mod:`cxr_cad.io.decoders` names, in its order. With ``reduce_to`` (the model input
   side) JPEG 2000 / HTJ2K decode at a lower resolution level (one short of the working
   level: the last halving is a block mean, as elsewhere) and 8-bit JPEG baseline with
   DCT scaling, toward the working resolution of :mod:`cxr_cad.io.working`.
2. **Modality LUT**: (0028,3000) Modality LUT Sequence when present (through
   :func:`pydicom.pixels.apply_modality_lut`), else (0028,1053) Rescale Slope and
   (0028,1052) Rescale Intercept (both must be present, as in pydicom), in float32;
   the rest of the way to the working resolution is made by block means
   (:func:`cxr_cad.io.working.area_reduce`) of the stored values (a Modality LUT Sequence:
   of its output), before any VOI or scaling.
3. **VOI** (``apply_voi``): (0028,3010) VOI LUT Sequence (first item, through
   :func:`pydicom.pixels.apply_voi`) or (0028,1050) Window Center / (0028,1051)
   Window Width (first value of each), with (0028,1056) VOI LUT Function LINEAR,
   LINEAR_EXACT or SIGMOID exactly as :func:`pydicom.pixels.apply_windowing` defines them.
4. **MONOCHROME1** ((0028,0004) Photometric Interpretation): inverted, so low = dark.
5. **Scale to [0, 1]**: with a window, the window's output range maps to [0, 1]
   (values below the window are 0, above are 1); with a VOI LUT, the LUT's own
   output range (min/max of its entries); without VOI, the minimum/maximum of the
   values actually present. Min/max scaling is invariant to any affine re-encoding
   of the stored values, so a MONOCHROME1 file storing ``M - v`` gives exactly the
   pixels of the MONOCHROME2 file storing ``v``; with windows the two agree up to
   one stored unit (LINEAR windows are not exactly symmetric under inversion).

Colour data (RGB, or YBR converted to RGB by pydicom) skips 2-4 and becomes gray
by ITU-R BT.601 luma, then min/max scaling.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.uid import UID, JPEG2000TransferSyntaxes, JPEGBaseline8Bit, JPEGExtended12Bit

from cxr_cad.errors import Reason, RejectedFile
from cxr_cad.io.decoders import GPL_EXTRA, DecodeError, NoDecoderError, decode_array, is_decoder_panic, is_gpl
from cxr_cad.io.working import area_reduce, working_level

log = logging.getLogger(__name__)

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _first(value) -> float:
    """First value of a possibly multi-valued DS element, as float."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def check_codestream(ds: Dataset, ts: UID, path: Path, limit: int) -> None:
    """Refuse a compressed frame whose own codestream header declares more than ``limit`` bytes.

    The decoders allocate what the codestream declares, whatever (0028,0010)/(0028,0011) say
    (:mod:`cxr_cad.io.codestream`); RLE output is sized from Rows/Columns, already checked.

    Raises:
        RejectedFile: ``IMAGE_TOO_LARGE``.
    """
    from pydicom.encaps import generate_fragments

    from cxr_cad.io.codestream import codestream_bytes

    # A (corrupt) UID that is no transfer syntax: pydicom's is_encapsulated raises on it; the
    # decoder then reports it as DECODE_FAILED.
    if not ts.is_transfer_syntax or not ts.is_encapsulated or "PixelData" not in ds:
        return
    try:
        fragments = generate_fragments(ds.PixelData)
        next(fragments)  # the Basic Offset Table item
        first = next(fragments)
    except Exception:  # noqa: BLE001 - malformed encapsulation: the decoder reports DECODE_FAILED
        return
    size = codestream_bytes(bytes(first[:65536]))
    if size is not None and size > limit:
        raise RejectedFile(
            Reason.IMAGE_TOO_LARGE,
            f"the compressed frame's own header declares "
            f"{size / 2**20:,.0f} MiB of decoded pixels, above the {limit / 2**20:,.0f} MiB "
            "limit (a decompression bomb, or a codestream that disagrees with (0028,0010) "
            "Rows / (0028,0011) Columns); set CXR_CAD_MAX_IMAGE_BYTES for real images this "
            "large",
            path,
        )


def _decode_hint(exc: BaseException, ts: UID) -> str:
    """What to do about a decode failure: install a decoder, try the GPL extra, or re-export."""
    gpl = (
        f"the optional GPL-3.0 decoder pylibjpeg-libjpeg reads some JPEG files the default "
        f"decoders refuse: pip install 'cxr_cad[{GPL_EXTRA}]'"
    )
    if isinstance(exc, NoDecoderError):
        return (
            "reinstall cxr_cad to get its default decoders (Pillow, imagecodecs, pyjpegls, "
            "pylibjpeg-openjpeg, pylibjpeg-rle)" + (f"; or {gpl}" if is_gpl(ts, "pylibjpeg") else "")
        )
    if isinstance(exc, DecodeError) and is_gpl(ts, "pylibjpeg") and "pylibjpeg" not in exc.tried:
        return f"the pixel data may be truncated or corrupt: re-export the file; or {gpl}"
    if isinstance(exc, NotImplementedError):  # pydicom has no decoder for this transfer syntax
        return "convert the file to an uncompressed or JPEG / JPEG 2000 transfer syntax (e.g. gdcmconv --raw)"
    return "the pixel data is truncated or corrupt: re-export the file"


def _jpeg_scaled(ds: Dataset, level: int, path: Path) -> tuple[np.ndarray, int] | None:
    """8-bit grayscale JPEG pixel data decoded with libjpeg's DCT scaling (Pillow ``draft``).

    None when Pillow declines or fails: the caller then decodes at full resolution through the
    plugins of :mod:`cxr_cad.io.decoders` (Pillow first), which report any error.
    """
    from PIL import Image
    from pydicom.encaps import generate_frames

    from cxr_cad.io.working import jpeg_draft

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        with Image.open(io.BytesIO(frame), formats=("JPEG",)) as image:
            if image.mode != "L" or image.size != (int(ds.Columns), int(ds.Rows)):
                return None
            reached = jpeg_draft(image, level)
            if reached == 0:
                return None
            image.load()
            return np.asarray(image), reached
    except (OSError, ValueError, StopIteration, SyntaxError) as exc:
        log.debug("%s: DCT-scaled JPEG decode failed (%s); decoding at full resolution", path, exc)
        return None


def decode(ds: Dataset, path: Path, *, level: int = 0, max_image_bytes: int | None = None) -> tuple[np.ndarray, int]:
    """Decoded stored values, 2-D (rows, columns) or (rows, columns, 3) RGB, and their level.

    ``level`` asks for the image shrunk by ``2**level`` where the codec can do it
    (:mod:`cxr_cad.io.working`): JPEG 2000 / HTJ2K by resolution levels (at most the
    codestream's own, and :data:`~cxr_cad.io.j2k.LEVELS_SHORT` short of ``level``), 8-bit grayscale JPEG baseline by DCT scaling (at most 1/8). Returns the
    level actually decoded (0 for every other syntax); the caller averages the rest.
    A compressed frame whose codestream declares more than ``max_image_bytes`` (default
    :func:`~cxr_cad.config.accept.default_max_image_bytes`) is not decoded.

    Raises:
        RejectedFile: ``DECODE_FAILED`` with the decoder's message; ``IMAGE_TOO_LARGE``.
    """
    from cxr_cad.config.accept import default_max_image_bytes

    ts = UID(str(ds.file_meta.get("TransferSyntaxUID", ""))) if hasattr(ds, "file_meta") else UID("")
    check_codestream(ds, ts, path, default_max_image_bytes() if max_image_bytes is None else max_image_bytes)
    if level > 0 and int(ds.get("SamplesPerPixel", 1) or 1) == 1:
        reduced = None
        if ts in JPEG2000TransferSyntaxes:
            from cxr_cad.io.j2k import LEVELS_SHORT, decode_reduced

            reduced = decode_reduced(ds, level - LEVELS_SHORT, path)
        elif ts in (JPEGBaseline8Bit, JPEGExtended12Bit) and int(ds.get("BitsStored", 0) or 0) == 8:
            reduced = _jpeg_scaled(ds, level, path)
        if reduced is not None:
            return reduced
    if "PhotometricInterpretation" not in ds or not ds.PhotometricInterpretation:
        ds.PhotometricInterpretation = "MONOCHROME2"  # pydicom needs it; checked: 1 sample per pixel
    try:
        arr, plugin = decode_array(ds, ts)  # the plugin order of cxr_cad.io.decoders (permissive licences)
    except BaseException as exc:  # noqa: BLE001 - any decoder failure on this file's data means DECODE_FAILED
        if not isinstance(exc, Exception) and not is_decoder_panic(exc):
            raise  # KeyboardInterrupt, SystemExit
        syntax = ts.name or "unknown transfer syntax"
        raise RejectedFile(
            Reason.DECODE_FAILED,
            f"cannot decode the pixel data ({syntax}): {type(exc).__name__}: {exc}; {_decode_hint(exc, ts)}",
            path,
        ) from exc
    if plugin:
        log.debug("%s: decoded with pydicom's %r plugin", path, plugin)
    expected = 2 if int(ds.get("SamplesPerPixel", 1) or 1) == 1 else 3
    if arr.ndim != expected:
        raise RejectedFile(
            Reason.MULTI_FRAME if arr.ndim == expected + 1 else Reason.DECODE_FAILED,
            f"decoded pixel array has shape {arr.shape}, expected one frame",
            path,
        )
    return arr, 0


def modality_values(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the Modality LUT ((0028,3000) sequence, or (0028,1053) slope / (0028,1052) intercept).

    Returns float32; equals :func:`pydicom.pixels.apply_modality_lut` (which works in float64).
    """
    if ds.get("ModalityLUTSequence"):
        if arr.dtype.kind == "f":  # a filtered reduced decode: the LUT is indexed by stored values
            arr = np.rint(arr).astype(np.int64)
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    out = arr.astype(np.float32)
    slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
    if slope is not None and intercept is not None and slope != "" and intercept != "":
        slope, intercept = float(slope), float(intercept)
        if slope != 1.0:
            out *= np.float32(slope)
        if intercept != 0.0:
            out += np.float32(intercept)
    return out


def window_unit(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window ``values`` (float32, modality units) onto [0, 1], in place where possible.

    Same mapping as :func:`pydicom.pixels.apply_windowing` followed by
    ``(y - y_min) / (y_max - y_min)``: LINEAR (PS3.3 C.11.2.1.2.1, ``c - 0.5`` and
    ``w - 1``), LINEAR_EXACT (C.11.2.1.3.2) or SIGMOID.
    """
    function = function.upper()
    if function == "SIGMOID":
        out = np.multiply(values, np.float32(-4.0 / width), out=values)
        out += np.float32(4.0 * center / width)
        with np.errstate(over="ignore"):  # exp overflow -> inf -> 1/inf = 0, the correct limit
            np.exp(out, out=out)
        out += np.float32(1.0)
        return np.reciprocal(out, out=out)
    if function == "LINEAR_EXACT":
        lo, span = center - width / 2.0, width
    else:
        lo, span = (center - 0.5) - (width - 1.0) / 2.0, width - 1.0
    if span <= 0:  # LINEAR with width 1: a threshold at center - 0.5
        return np.greater(values, np.float32(lo)).astype(np.float32)
    out = np.subtract(values, np.float32(lo), out=values)
    out *= np.float32(1.0 / span)
    return np.clip(out, 0.0, 1.0, out=out)


def _window(ds: Dataset, path: Path) -> tuple[float, float, str] | None:
    """(center, width, function) of the first window, or None when absent or unusable."""
    if ds.get("WindowCenter") in (None, "") or ds.get("WindowWidth") in (None, ""):
        return None
    try:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    except (ValueError, TypeError, IndexError) as exc:
        log.warning("%s: ignoring unreadable (0028,1050) Window Center / (0028,1051) Width: %s", path, exc)
        return None
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        log.warning("%s: unknown (0028,1056) VOI LUT Function %r, using LINEAR", path, function)
        function = "LINEAR"
    if not (math.isfinite(center) and math.isfinite(width)) or width < (1.0 if function == "LINEAR" else 1e-6):
        log.warning("%s: ignoring invalid window center %s / width %s", path, center, width)
        return None
    return center, width, function


def _voi_lut_unit(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the first (0028,3010) VOI LUT Sequence item; scale by the LUT's output range."""
    item = ds.VOILUTSequence[0]
    entries, first_map = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
    own = apply_voi(np.arange(first_map, first_map + entries, dtype=np.int64), ds)
    lo, hi = float(np.min(own)), float(np.max(own))
    out = np.asarray(apply_voi(np.rint(values).astype(np.int64), ds), dtype=np.float32)
    if hi <= lo:
        return out
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return out


def _minmax_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Scale ``values`` (min ``lo`` < max ``hi``) onto [0, 1] in place."""
    values -= np.float32(lo)
    values *= np.float32(1.0 / (hi - lo))
    return np.clip(values, 0.0, 1.0, out=values)


def display_pixels(
    ds: Dataset, path: Path, *, apply_voi: bool = True, reduce_to: int | None = None, max_image_bytes: int | None = None
) -> np.ndarray:
    """The whole pipeline (module doc): 2-D float32 in [0, 1], bright = bone.

    Raises:
        RejectedFile: ``DECODE_FAILED`` (decoder error, non-finite values),
            ``IMAGE_TOO_LARGE`` (codestream above ``max_image_bytes``) or
            ``CONSTANT_IMAGE`` (one value everywhere, before or after the VOI).
    """
    level = working_level(int(ds.Rows), int(ds.Columns), reduce_to)
    arr, reached = decode(ds, path, level=level, max_image_bytes=max_image_bytes)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if arr.ndim == 3:  # colour -> gray
        values = np.tensordot(arr.astype(np.float32, copy=False), _LUMA, axes=([2], [0])).astype(np.float32)
        values = area_reduce(values, level - reached)
        photometric = "MONOCHROME2"
    else:
        # the rest of the way to the working resolution, before the VOI: on the stored values when
        # the Modality LUT is linear (rescale; fewer pixels to convert), else in modality units
        lut_sequence = bool(ds.get("ModalityLUTSequence"))
        if not lut_sequence and level > reached:
            arr = area_reduce(arr, level - reached)
        lo, hi = arr.min(), arr.max()
        if lo == hi:
            raise RejectedFile(
                Reason.CONSTANT_IMAGE,
                f"every decoded pixel has the value {lo}; the image is blank or its pixel data is broken",
                path,
            )
        try:
            values = modality_values(arr, ds)
        except Exception as exc:  # noqa: BLE001 - a corrupt Modality LUT in this file
            raise RejectedFile(
                Reason.DECODE_FAILED,
                f"cannot apply the Modality LUT ((0028,3000) Modality "
                f"LUT Sequence or (0028,1052)/(0028,1053) Rescale): {exc}",
                path,
            ) from exc
        if lut_sequence:
            values = area_reduce(values, level - reached)
    lo, hi = float(values.min()), float(values.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise RejectedFile(Reason.DECODE_FAILED, "decoded pixel values include NaN or infinity", path)
    if lo == hi:
        raise RejectedFile(
            Reason.CONSTANT_IMAGE,
            f"every pixel has the value {lo:g} after the Modality LUT "
            "(or colour to gray); the image is blank or its header is broken",
            path,
        )
    out = None
    if apply_voi and arr.ndim == 2:
        if ds.get("VOILUTSequence"):
            try:
                out = _voi_lut_unit(values, ds)
            except Exception as exc:  # noqa: BLE001 - a corrupt VOI LUT: fall back to the window / min-max
                log.warning("%s: ignoring unusable (0028,3010) VOI LUT Sequence: %s", path, exc)
        if out is None:
            window = _window(ds, path)
            if window is not None:
                out = window_unit(values, *window)
        if out is not None and float(out.min()) == float(out.max()):
            raise RejectedFile(
                Reason.CONSTANT_IMAGE,
                "the VOI LUT / window (0028,1050)/(0028,1051) maps every "
                "pixel to one value; the window does not fit the data: read it with the VOI "
                "switched off (AcceptPolicy(apply_voi=False))",
                path,
            )
    if out is None:
        out = _minmax_unit(values, lo, hi)
    if photometric == "MONOCHROME1":
        np.subtract(np.float32(1.0), out, out=out)
    return out

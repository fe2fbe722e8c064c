"""Reduced-resolution decoding of JPEG 2000 / HTJ2K pixel data.

A JPEG 2000 codestream holds a wavelet pyramid: decoding only the first
``levels - N`` resolution levels gives the image downscaled by ``2**N`` at a
fraction of the cost. The installed pylibjpeg-openjpeg has no ``reduce`` option,
so this goes through Pillow's OpenJPEG binding (``Image.reduce = N``), with the
same precision / sign handling as pydicom's Pillow decoder. Level 0 equals
pydicom's full-resolution decode exactly (tested).
"""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from cxr_cad.errors import Reason, RejectedFile
from cxr_cad.io.working import WORK_MARGIN, working_level, working_shape

log = logging.getLogger(__name__)


def codestream_info(frame: bytes) -> dict | None:
    """Parse SIZ and COD of a J2K codestream (raw or inside a JP2 wrapper).

    Returns ``{"columns", "rows", "components", "precision", "signed", "levels", "reversible"}``
    (``levels``: number of wavelet decompositions, ``reversible``: the 5/3 wavelet rather than
    the 9/7, both from (FF52) COD SPcod) or None when the markers are not found.
    """
    start = frame.find(b"\xff\x4f\xff\x51")
    if start < 0:
        return None
    pos = start + 2
    info: dict = {}
    while pos + 4 <= len(frame):
        marker, length = struct.unpack_from(">HH", frame, pos)
        body = pos + 4
        if marker == 0xFF51 and body + 38 <= len(frame):  # SIZ
            xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", frame, body + 2)
            components = struct.unpack_from(">H", frame, body + 34)[0]
            ssiz = frame[body + 36]
            info.update(
                columns=xsiz - xo,
                rows=ysiz - yo,
                origin=(xo, yo),
                components=components,
                precision=(ssiz & 0x7F) + 1,
                signed=bool(ssiz & 0x80),
            )
        elif marker == 0xFF52 and body + 10 <= len(frame):  # COD
            info["levels"] = frame[body + 5]
            info["reversible"] = frame[body + 9] == 1  # SPcod transformation: 1 = 5/3, 0 = 9/7
        elif marker == 0xFF90:  # SOT: end of the main header
            break
        pos += 2 + length
    return info if {"levels", "precision"} <= info.keys() else None


#: Kept for callers of the old name: the working-resolution margin (:data:`cxr_cad.io.working.WORK_MARGIN`).
REDUCE_MARGIN = WORK_MARGIN


def reduction_level(shorter_side: int, reduce_to: int, levels: int) -> int:
    """The working level (:func:`cxr_cad.io.working.working_level`) capped at the codestream's ``levels``."""
    return max(0, min(levels, working_level(shorter_side, shorter_side, reduce_to)))


#: JPEG 2000 decodes this many resolution levels short of the working level, so the last halving
#: (at least) is a block mean, as for every other container. The wavelet low-pass (5/3 or 9/7) keeps
#: more detail near the reduced Nyquist frequency than a block mean and is centred on pixel
#: ``2**level * k``, not on the block's centre; decoding all the way moved a model's scores by up to
#: 0.038 against the same film's JPEG on kermany-dev (a least-squares correction filter still left
#: 0.017), one level short leaves 0.002 (benchmarks/container_invariance.py, docs/io.md).
LEVELS_SHORT = 1


def _set_reduce(image: Any, level: int) -> None:
    """Ask Pillow's JPEG 2000 decoder for resolution ``level`` (``image.reduce = level``).

    The one place that touches a Pillow internal, on purpose. OpenJPEG's reduced size is
    ``ceil(size / 2**level)``; Pillow's ``load()`` computes ``int((size + 2**level // 2) / 2**level)``,
    which is one pixel short for some odd sizes (101 px at level 2: 25, OpenJPEG writes 26) and
    then fails ("broken data stream"). Pillow has no public way to set the decoded size (``size``
    is read-only, ``draft()`` is JPEG-only, ``Image.reduce()`` shrinks after a full decode), so
    the size Pillow starts from is pre-set (``_size``) such that its formula gives OpenJPEG's
    size. ``test_j2k_pillow_reduce_needs_the_size_fix`` fails when a Pillow release makes this
    unnecessary; if Pillow drops ``_size``, the decode fails and :func:`decode_reduced` falls
    back to a full-resolution decode (same pixels, slower).
    """
    power = 1 << level
    adjust = power >> 1
    width, height = image.size
    image._size = (-(-width // power) * power - adjust, -(-height // power) * power - adjust)
    image.reduce = level


def decode_level(ds: Dataset, level: int, path: Path) -> np.ndarray:
    """Decode the single-frame, single-sample J2K Pixel Data of ``ds`` downscaled by ``2**level``.

    Values are the stored values as pydicom returns them ((0028,0103) Pixel
    Representation and (0028,0101) Bits Stored honoured, J2K sign corrected).

    Raises:
        RejectedFile: ``DECODE_FAILED`` when the codestream cannot be decoded.
    """
    from PIL import Image

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        info = codestream_info(frame) or {}
        with Image.open(io.BytesIO(frame), formats=("JPEG2000",)) as image:
            if level:
                _set_reduce(image, level)
            image.load()
            size = image.size
            buffer = bytearray(image.tobytes())
    except (OSError, ValueError, StopIteration, SyntaxError) as exc:
        raise RejectedFile(
            Reason.DECODE_FAILED,
            f"cannot decode the JPEG 2000 pixel data at reduction level {level}: {type(exc).__name__}: {exc}",
            path,
        ) from exc
    precision = int(info.get("precision", ds.BitsStored))
    pixel_rep = int(ds.get("PixelRepresentation", 0) or 0)
    signed = bool(info.get("signed", pixel_rep))
    bits_allocated = 8 if precision <= 8 else 16
    nbytes = bits_allocated // 8
    arr = np.frombuffer(buffer, dtype=f"u{nbytes}").reshape(size[1], size[0])
    if signed and pixel_rep == 1:
        arr = arr.view(f"i{nbytes}")
        arr -= np.int32(2 ** (bits_allocated - 1))  # as pydicom: wraps modulo 2**bits
    if shift := bits_allocated - precision:
        np.right_shift(arr, shift, out=arr)
    arr = arr.view(f"i{nbytes}" if pixel_rep else f"u{nbytes}")
    if signed != bool(pixel_rep) and shift:
        # same correction as pydicom for a J2K sign that disagrees with Pixel Representation
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)
    return arr


def decode_reduced(ds: Dataset, level: int, path: Path) -> tuple[np.ndarray, int] | None:
    """Decode at resolution level ``min(level, codestream levels)``: (stored values, level decoded).

    None when no reduction applies (level 0, a codestream with several components or an image
    offset, no decomposition levels) or when the reduced decode fails or gives an unexpected size
    (logged; the caller then decodes at full resolution, same pixels, slower).
    """
    rows, columns = int(ds.Rows), int(ds.Columns)
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except (ValueError, StopIteration, struct.error) as exc:
        raise RejectedFile(
            Reason.DECODE_FAILED, f"cannot find the JPEG 2000 frame in (7FE0,0010) Pixel Data: {exc}", path
        ) from exc
    info = codestream_info(frame)
    if info is None or info.get("components", 1) != 1 or info.get("origin", (0, 0)) != (0, 0):
        return None
    level = max(0, min(int(level), int(info["levels"])))
    if level == 0:
        return None
    try:
        arr = decode_level(ds, level, path)
    except RejectedFile as exc:
        log.warning(
            "%s: reduced-resolution JPEG 2000 decode failed (%s); decoding at full resolution", path, exc.detail
        )
        return None
    expected = working_shape(rows, columns, level)
    if arr.shape != expected:
        log.warning(
            "%s: reduced JPEG 2000 decode gave %s, expected %s; decoding at full resolution", path, arr.shape, expected
        )
        return None
    log.debug("%s: JPEG 2000 decoded at level %d: %s -> %s", path, level, (rows, columns), arr.shape)
    return arr, level

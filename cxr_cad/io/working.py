"""The working resolution: every image, whatever its container, shrunk by one power of two.

A radiograph is read for a model whose input side is ``target`` pixels (the ``reduce_to``
of :func:`cxr_cad.io.read_image`). Decoding a 2000-px plate at full resolution only to
average it down to 224 px wastes most of the decode, so each image is first brought to its
**working resolution**: the stored image shrunk by ``2**level``, with ``level`` the largest
whole number that keeps the shorter side at least :data:`WORK_MARGIN` times ``target``
(:func:`working_level`). The working image's shorter side is then in ``[2, 4) x target``
(or the stored size, when that is already below ``4 x target``), and its size is
``ceil(stored / 2**level)`` on each axis (:func:`working_shape`), whatever the route:

* JPEG 2000 / HTJ2K: the codestream's own resolution levels (:mod:`cxr_cad.io.j2k`);
* JPEG (files and 8-bit DICOM JPEG baseline): libjpeg's DCT scaling through Pillow's
  ``draft`` (scales 1/2, 1/4, 1/8; :func:`jpeg_draft`);
* everything else (uncompressed, RLE, JPEG-LS, JPEG lossless / 12-bit, PNG), and whatever a
  codec could not reduce: the mean of each ``f x f`` block of native values
  (:func:`area_reduce`), the edge blocks averaging the pixels they have.

The rule depends only on the stored size and ``target``, so a film stored as a JPEG, a PNG
or any DICOM syntax reaches the same working size; the transform chain's area resize to
``target`` then does the last >= 2x of the shrinking, which evens out the small differences
between the codecs' low-pass filters (``benchmarks/container_invariance.py``). The working
image is made *before* any intensity scaling (Modality LUT aside, VOI, min-max, percentiles),
so those run on a quarter or less of the pixels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: The working image keeps at least this many times the target on its shorter side, so the
#: final area resize (not a codec's low-pass alone) does the last 2x or more of the shrinking.
#: Measured on real radiographs (Kermany, ~1000 px, target 224): stopping at >= 1x the target
#: moved model probabilities by up to 0.019 against a full decode; at >= 2x below 0.005.
WORK_MARGIN = 2

#: Largest DCT scaling libjpeg offers (1/8).
MAX_JPEG_LEVEL = 3


def working_level(rows: int, columns: int, target: int | None) -> int:
    """Largest N with ``min(rows, columns) / 2**N >= WORK_MARGIN * target``; 0 without a target.

    >>> working_level(2048, 1700, 224), working_level(895, 1000, 224), working_level(896, 1000, 224)
    (1, 0, 1)
    """
    if not target or target <= 0:
        return 0
    goal = WORK_MARGIN * int(target)
    shorter = min(int(rows), int(columns))
    if shorter < 2 * goal:
        return 0
    return max(0, int(math.floor(math.log2(shorter / goal))))


def working_shape(rows: int, columns: int, level: int) -> tuple[int, int]:
    """(rows, columns) of an image shrunk by ``2**level``: ``ceil`` on each axis."""
    f = 1 << level
    return -(-int(rows) // f), -(-int(columns) // f)


def area_reduce(values: np.ndarray, level: int) -> np.ndarray:
    """Mean of each ``2**level`` square block of ``values`` (2-D, or (rows, columns, samples)).

    Edge blocks hold fewer pixels and average what they hold, so the output has
    :func:`working_shape`. Returns float32 (``values`` itself, as float32, for level 0).
    Sums are exact: float32 up to 8x8 blocks of 16-bit values, float64 beyond.
    """
    if level <= 0:
        return np.asarray(values, dtype=np.float32)
    f = 1 << level
    rows, columns = values.shape[:2]
    acc = np.float32 if f <= 8 else np.float64
    out_rows, out_cols = working_shape(rows, columns, level)
    full_r, full_c = (rows // f) * f, (columns // f) * f
    out = np.empty((out_rows, out_cols) + values.shape[2:], dtype=acc)
    tail = values.shape[2:]
    if full_r and full_c:  # the whole blocks: f strided row adds, then f strided column adds
        rows_sum = values[0:full_r:f].astype(acc)
        for i in range(1, f):
            np.add(rows_sum, values[i:full_r:f], out=rows_sum)
        whole = out[: full_r // f, : full_c // f]
        np.copyto(whole, rows_sum[:, 0:full_c:f])
        for j in range(1, f):
            np.add(whole, rows_sum[:, j:full_c:f], out=whole)
        np.multiply(whole, 1.0 / (f * f), out=whole)
    expand = (1,) * len(tail)
    if full_r < rows:  # the last row of blocks is shorter than f
        sums = np.add.reduceat(values[full_r:].sum(axis=0, dtype=acc), np.arange(0, columns, f), axis=0)
        widths = np.diff(np.append(np.arange(0, columns, f), columns)) * (rows - full_r)
        out[-1] = sums / widths.reshape(-1, *expand).astype(acc)
    if full_c < columns:  # the last column of blocks is narrower than f
        sums = np.add.reduceat(values[:, full_c:].sum(axis=1, dtype=acc), np.arange(0, rows, f), axis=0)
        heights = np.diff(np.append(np.arange(0, rows, f), rows)) * (columns - full_c)
        out[:, -1] = sums / heights.reshape(-1, *expand).astype(acc)
    return out.astype(np.float32, copy=False)


def jpeg_draft(image: Any, level: int) -> int:
    """Ask Pillow's JPEG decoder (an opened, not yet loaded ``JpegImageFile``) for DCT scaling.

    Requests scale ``1 / 2**min(level, 3)`` through the public ``Image.draft(mode, size)``
    (the colour mode is kept: no colour conversion happens here). Returns the level libjpeg
    will decode at (0 when Pillow declines, e.g. a second draft). The decoded size is
    :func:`working_shape` of that level.
    """
    level = min(int(level), MAX_JPEG_LEVEL)
    if level <= 0:
        return 0
    columns, rows = image.size
    f = 1 << level
    # Pillow picks the largest scale s in (8, 4, 2, 1) with s <= min(width // w, height // h);
    # asking for floor(size / f) gives exactly f (size // floor(size / f) is in [f, 2f)).
    request = (max(1, columns // f), max(1, rows // f))
    if image.draft(image.mode, request) is None:
        return 0
    for got in range(level, -1, -1):  # the scale Pillow chose (``level`` unless it declined)
        if image.size == working_shape(rows, columns, got)[::-1]:
            return got
    raise ValueError(f"Pillow's DCT-scaled JPEG size {image.size} is no power-of-two reduction of {(columns, rows)}")

"""Reading one image: DICOM, PNG or JPEG -> (float32 [0, 1] display pixels, metadata).

Public contract (docs/architecture.md, ``cxr_cad.io``)::

    AcceptPolicy(modalities=("CR", "DX", "DR"), reject_lateral=True, apply_voi=True)
    read_header(path, *, policy=AcceptPolicy()) -> dict
    read_image(path, *, policy=AcceptPolicy(), reduce_to=None) -> (np.ndarray, dict)

The format is detected from the file's content, never its name. Every file that
is not accepted raises :class:`cxr_cad.errors.RejectedFile` with a stable
:class:`cxr_cad.errors.Reason` code.
"""

from __future__ import annotations

import os

import numpy as np

from cxr_cad.config.accept import AcceptPolicy
from cxr_cad.core.columns import META_KEYS
from cxr_cad.errors import ConfigError
from cxr_cad.io.detect import sniff_format

__all__ = ["AcceptPolicy", "read_header", "read_image", "META_KEYS", "sniff_format"]


_DEFAULT_POLICY = AcceptPolicy()


def read_header(path: str | os.PathLike, *, policy: AcceptPolicy = _DEFAULT_POLICY) -> dict:
    """Read the header of one DICOM/PNG/JPEG file and check it against ``policy``; no pixel decoding.

    Returns the ``meta`` dict (keys :data:`META_KEYS`; missing text values are ``""``,
    missing numbers None). Patient's Name is never read into it.

    Raises:
        RejectedFile: ``EMPTY_FILE``, ``NOT_DICOM``, ``UNSUPPORTED_FORMAT``, ``UNREADABLE``,
            ``NO_PIXEL_DATA``, ``NOT_AN_IMAGE_SOP_CLASS``, ``MULTI_FRAME``,
            ``UNSUPPORTED_MODALITY``, ``LATERAL_VIEW``, ``UNSUPPORTED_PHOTOMETRIC``,
            ``IMAGE_TOO_LARGE`` (declared decoded size above ``policy.max_image_bytes``;
            checked before anything is decoded).
    """
    fmt = sniff_format(path)
    if fmt == "dicom":
        from cxr_cad.io.dicom import read_dicom_header

        return read_dicom_header(path, policy=policy)
    from cxr_cad.io.images import read_raster_header

    return read_raster_header(path, fmt, max_image_bytes=policy.max_image_bytes)


def read_image(
    path: str | os.PathLike, *, policy: AcceptPolicy = _DEFAULT_POLICY, reduce_to: int | None = None
) -> tuple[np.ndarray, dict]:
    """Read one DICOM/PNG/JPEG file -> (pixels, meta).

    ``pixels`` is a 2-D float32 array in [0, 1] in display orientation (high =
    bright = bone); for DICOM see :mod:`cxr_cad.io.dicom_pixels` for the pipeline.
    ``reduce_to``: the caller will resize so the shorter side is about ``reduce_to``;
    JPEG 2000 and JPEG may then decode at a reduced resolution whose shorter side
    stays >= ``reduce_to``. None decodes at full resolution. ``meta`` is as for
    :func:`read_header` (``rows``/``columns`` are the stored size).

    Raises:
        RejectedFile: everything :func:`read_header` raises, plus ``DECODE_FAILED`` and
            ``CONSTANT_IMAGE``.
        ConfigError: ``reduce_to`` below 1.
    """
    if reduce_to is not None and int(reduce_to) < 1:
        raise ConfigError(f"reduce_to must be a positive number of pixels or None, got {reduce_to!r}")
    fmt = sniff_format(path)
    if fmt == "dicom":
        from cxr_cad.io.dicom import read_dicom_image

        return read_dicom_image(path, policy=policy, reduce_to=reduce_to)
    from cxr_cad.io.images import read_raster_image

    return read_raster_image(path, fmt, reduce_to=reduce_to, max_image_bytes=policy.max_image_bytes)

"""Image size declared inside a compressed codestream (JPEG, JPEG-LS, JPEG 2000), from its header.

A DICOM header's Rows/Columns are checked against the size limit before decoding
(:func:`cxr_cad.io.dicom.check_declared_size`), but the decoders (libjpeg, CharLS,
OpenJPEG) allocate what the *codestream* declares, which a crafted file can set to
65535 x 65535 behind a harmless DICOM header. :func:`codestream_bytes` reads that
declaration from the first bytes of a frame so it can be checked too, without decoding.

Hand-written: the decoders expose no "header only" call through pydicom, and only the
frame header markers are needed (ITU-T T.81 B.2.2 SOFn, T.87 SOF55, T.800 A.5.1 SIZ).
"""

from __future__ import annotations

import struct

#: JPEG start-of-frame markers: baseline, extended, progressive, lossless (T.81), JPEG-LS (T.87).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
#: Markers without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_size(data: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, precision) from the first SOFn/SOF55 of a JPEG codestream."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker in _SOF_MARKERS:
            if pos + 10 > len(data):
                return None
            precision, rows, columns, comps = struct.unpack_from(">BHHB", data, pos + 4)
            return rows, columns, comps, precision
        if marker == 0xDA or length < 2:  # start of scan before a frame header: malformed
            return None
        pos += 2 + length
    return None


def _j2k_size(data: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, precision) from the SIZ marker segment of a J2K codestream."""
    if len(data) < 4 + 38 + 3 or data[2:4] != b"\xff\x51":
        return None
    _lsiz, _rsiz, xsiz, ysiz, xo, yo, _xt, _yt, _xto, _yto, comps = struct.unpack_from(">HHIIIIIIIIH", data, 4)
    precision = (data[4 + 38] & 0x7F) + 1
    return max(0, ysiz - yo), max(0, xsiz - xo), comps, precision


def codestream_size(data: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, bits per sample) a JPEG/JPEG-LS/JPEG 2000 frame declares.

    ``data``: the start of the frame (the first kB are enough unless the JPEG carries large
    application segments before its frame header). A JP2 file wrapper is searched for its
    codestream. None when the bytes are not such a codestream or the header is not found."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:4] == b"\xff\x4f\xff\x51":
        return _j2k_size(data)
    at = data.find(b"\xff\x4f\xff\x51")
    if data[4:8] == b"jP  " and at >= 0:
        return _j2k_size(data[at:])
    return None


def codestream_bytes(data: bytes) -> int | None:
    """Decoded bytes the codestream at the start of ``data`` declares (None when not found)."""
    size = codestream_size(data)
    if size is None:
        return None
    rows, columns, comps, precision = size
    return rows * columns * max(1, comps) * (1 if precision <= 8 else 2 if precision <= 16 else 4)

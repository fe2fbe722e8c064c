"""File-type detection by content (magic bytes), never by file name extension.

* DICOM Part 10: 128-byte preamble followed by ``DICM``.
* DICOM without preamble / File Meta header (a bare data set as some old systems
  write it): accepted only when the first bytes parse as a plausible run of
  data elements (ascending tags in group 0000/0002/0008, a valid
  VR or a sane length), so random binary junk is ``NOT_DICOM`` rather than a
  garbage data set read by ``dcmread(force=True)``.
* PNG (``\\x89PNG\\r\\n\\x1a\\n``) and JPEG (``FF D8 FF``).
* Other image formats (TIFF, BMP, GIF, WebP, JPEG 2000 files) -> ``UNSUPPORTED_FORMAT``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from cxr_cad.core.files import NotRegularFileError, open_regular
from cxr_cad.errors import Reason, RejectedFile

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
HEAD_BYTES = 1024

#: Value Representations (PS3.5 Table 6.2-1).
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
#: VRs with a 2-byte reserved field and a 4-byte length in explicit VR encoding.
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
#: Groups a bare data set may plausibly start with: command, file meta, identifying.
_FIRST_GROUPS = frozenset({0x0000, 0x0002, 0x0008})

_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000 (JP2)"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"\x00\x00\x00\x0cjXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
)


def _walk_elements(head: bytes, file_size: int, explicit: bool, little: bool = True) -> int:
    """Number of consecutive plausible data elements at the start of ``head``.

    Stops at the first implausible element, at an undefined length (sequence or
    encapsulated data) or at the end of ``head``; returns -1 when the first tag is
    not in a group a data set starts with.
    """
    e = "<" if little else ">"
    pos, count, last_tag = 0, 0, -1
    while pos + 8 <= len(head):
        group, elem = struct.unpack_from(e + "HH", head, pos)
        tag = (group << 16) | elem
        if count == 0 and group not in _FIRST_GROUPS:
            return -1
        if tag <= last_tag:
            return count
        if explicit:
            vr = head[pos + 4 : pos + 6]
            if vr not in _VRS:
                return count
            if vr in _LONG_VRS:
                if pos + 12 > len(head):
                    return count + 1
                length = struct.unpack_from(e + "I", head, pos + 8)[0]
                header = 12
            else:
                length = struct.unpack_from(e + "H", head, pos + 6)[0]
                header = 8
        else:
            length = struct.unpack_from(e + "I", head, pos + 4)[0]
            header = 8
        if length == 0xFFFFFFFF:
            return count + 1
        if pos + header + length > file_size:
            return count
        count += 1
        last_tag = tag
        pos += header + length
    return count


def looks_like_bare_dataset(head: bytes, file_size: int) -> bool:
    """True when ``head`` (the first bytes of a file) parses as a DICOM data set without preamble.

    Requires the first element in group 0000, 0002 or 0008 and at least two
    consecutive plausible elements (or one that fills the file / starts a
    sequence), in implicit or explicit VR little endian or explicit VR big endian.
    """
    for explicit, little in ((True, True), (False, True), (True, False)):
        n = _walk_elements(head, file_size, explicit, little)
        if n >= 2 or (n == 1 and file_size <= len(head)):
            return True
    return False


def sniff_format(path: str | os.PathLike) -> str:
    """Return ``"dicom"``, ``"png"`` or ``"jpeg"`` from the first bytes of ``path``.

    Only a regular file is opened for reading (:func:`cxr_cad.core.files.open_regular`); a FIFO,
    device or socket is ``UNREADABLE`` at once, never a read that blocks.

    Raises:
        RejectedFile: ``EMPTY_FILE`` (0 bytes), ``UNREADABLE`` (cannot be opened or
            read, or not a regular file), ``UNSUPPORTED_FORMAT`` (a known image format we do not read),
            ``NOT_DICOM`` (anything else).
    """
    path = Path(path)
    try:
        with open_regular(path) as fp:
            size = os.fstat(fp.fileno()).st_size
            head = fp.read(HEAD_BYTES)
    except NotRegularFileError as exc:
        raise RejectedFile(Reason.UNREADABLE, exc.strerror or "not a regular file", path) from exc
    except OSError as exc:
        raise RejectedFile(
            Reason.UNREADABLE,
            f"cannot read the file: {exc.strerror or exc}; check that it exists and is readable",
            path,
        ) from exc
    if size == 0 or not head:
        raise RejectedFile(Reason.EMPTY_FILE, "the file has 0 bytes; re-export or remove it", path)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if looks_like_bare_dataset(head, size):
        return "dicom"
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            raise RejectedFile(
                Reason.UNSUPPORTED_FORMAT, f"{name} image; only DICOM, PNG and JPEG are read: convert it to PNG", path
            )
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        raise RejectedFile(
            Reason.UNSUPPORTED_FORMAT, "WebP image; only DICOM, PNG and JPEG are read: convert it to PNG", path
        )
    if head.startswith(b"BM") and len(head) >= 6 and struct.unpack_from("<I", head, 2)[0] == size:
        raise RejectedFile(
            Reason.UNSUPPORTED_FORMAT, "BMP image; only DICOM, PNG and JPEG are read: convert it to PNG", path
        )
    if size >= 132:
        detail = "no DICOM 'DICM' marker at byte 128, no plausible DICOM data set at byte 0, and not PNG/JPEG"
    else:
        detail = f"the file is too short ({size} bytes) for DICOM and is not PNG/JPEG"
    raise RejectedFile(Reason.NOT_DICOM, detail + "; remove it from the input folder", path)

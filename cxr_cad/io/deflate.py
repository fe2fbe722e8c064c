"""Deflated DICOM data sets inflated in bounded chunks before pydicom inflates them whole.

pydicom inflates a Deflated Explicit VR Little Endian data set in one ``zlib.decompress``; a
few kB can inflate to gigabytes (a zip bomb). :func:`check_inflated_size` counts the inflated
bytes first, holding at most 1 MiB at a time.
"""

from __future__ import annotations

from pathlib import Path

from cxr_cad.errors import Reason, RejectedFile


def check_inflated_size(path: Path, limit: int) -> None:
    """Inflate a Deflated Explicit VR Little Endian file in bounded chunks, counting the output.

    pydicom inflates the whole data set in one ``zlib.decompress``; a few kB can inflate to
    gigabytes. The data set after the File Meta group is raw deflate (PS3.5 A.5).

    Raises:
        RejectedFile: ``IMAGE_TOO_LARGE`` when it inflates beyond ``limit`` + 16 MiB of header.
    """
    import zlib

    from pydicom.filereader import read_file_meta_info

    meta = read_file_meta_info(path)
    start = 132 + 12 + int(meta.get("FileMetaInformationGroupLength", 0) or 0)
    budget = limit + (16 << 20)
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    with open(path, "rb") as fh:
        fh.seek(start)
        while chunk := fh.read(1 << 16):
            while chunk:
                try:
                    total += len(inflater.decompress(chunk, 1 << 20))
                except zlib.error:
                    return  # not valid deflate: pydicom reports it as unreadable
                chunk = inflater.unconsumed_tail
                if total > budget:
                    raise RejectedFile(
                        Reason.IMAGE_TOO_LARGE,
                        f"the deflated data set inflates to more than "
                        f"{budget >> 20} MiB (a decompression bomb, or an image above the "
                        f"{limit >> 20} MiB limit); raise CXR_CAD_MAX_IMAGE_BYTES if it is "
                        "a real image",
                        path,
                    )
            if inflater.eof:
                return

"""Opening input files safely: regular files only, never blocking, never unbounded.

Every command reads content only from regular files. A FIFO (named pipe) opened for
reading blocks until a writer appears, a character device can be endless, a socket
cannot be opened at all; :func:`open_regular` opens with ``O_NONBLOCK`` (so opening a
FIFO returns at once), checks with ``fstat`` on the open descriptor (so a file swapped
for a FIFO between a check and the open is still caught) and raises
:class:`NotRegularFileError` for anything but a regular file. :func:`read_text_limited`
reads a small text file (config, workflow) with a size limit and UTF-8 errors that say so.

Hand-written because neither ``open()`` nor ``pathlib`` offers "regular files only,
without blocking".
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import BinaryIO

#: Largest config or workflow file read (bytes); real ones are a few kB.
MAX_TEXT_FILE_BYTES = 1 << 20


class NotRegularFileError(OSError):
    """A path that names a FIFO, device, socket or folder where a regular file is needed."""


def describe_mode(mode: int) -> str:
    """What kind of file system object an ``st_mode`` is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def not_regular_detail(mode: int) -> str:
    """The rejection sentence for a non-regular file (used by every reader and the folder walk)."""
    return f"not a regular file ({describe_mode(mode)}); only regular files are read"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for binary reading if and only if it is a regular file; never blocks.

    Raises:
        NotRegularFileError: a FIFO, device, socket or folder (``errno`` EISDIR for a folder,
            ENXIO for anything else; ``strerror`` says what it is).
        OSError: it cannot be opened (missing, permission, ...).
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket (a FIFO opens at once for reading with O_NONBLOCK)
            raise NotRegularFileError(errno.ENXIO, not_regular_detail(os.stat(path).st_mode), path) from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            code = errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.ENXIO
            raise NotRegularFileError(code, not_regular_detail(st.st_mode), path)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_bytes_limited(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of regular file ``path``; raises ``OSError(EFBIG)`` when it holds more than ``limit``."""
    with open_regular(path) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise OSError(
            errno.EFBIG,
            f"the file is larger than {limit} bytes, far more than any config or workflow holds",
            os.fspath(path),
        )
    return data


def read_text_limited(path: str | os.PathLike, limit: int = MAX_TEXT_FILE_BYTES) -> str:
    """A UTF-8 text file of at most ``limit`` bytes, from a regular file only.

    Raises:
        OSError: unreadable, not a regular file, or too large (``strerror`` says which).
        ValueError: not valid UTF-8 (the message gives the byte offset).
    """
    data = read_bytes_limited(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None

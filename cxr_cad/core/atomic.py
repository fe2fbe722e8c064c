"""Atomic file writes: a temporary file in the same folder, fsynced, renamed over the target.

The only module that writes files this way; everything else imports it from here. No heavy
imports at module level (no torch, no pandas).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cxr_cad.errors import OutputError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "PathLike",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_many",
    "atomic_write_text",
    "fsync_dir",
    "json_dumps",
    "umask_file_mode",
]

PathLike = str | os.PathLike[str]


def umask_file_mode() -> int:
    """Mode a new file gets from ``open()`` under this process's umask (``0o666 & ~umask``).

    ``tempfile.mkstemp`` creates 0600 whatever the umask; files written through a temporary
    name are chmod'ed to this so outputs follow the umask like every other file. The umask is
    read from ``/proc/self/status`` (thread-safe) where there is one."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)  # not thread-safe, only where /proc is missing
    os.umask(current)
    return 0o666 & ~current


def fsync_dir(path: PathLike) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _output_error(path: Path, exc: BaseException, hint: str) -> OutputError:
    if isinstance(exc, OSError) and exc.strerror:
        detail = exc.strerror
    else:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return OutputError(f"cannot write {path.name} in {path.parent}: {detail}; {hint}")


_DEFAULT_HINT = "check the folder's permissions and free space, then run the same command again"


def _write_temp(path: Path, write: Callable[[IO[bytes]], object], mode: int) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # mkstemp's 0600 -> what the umask says
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], object], *, hint: str = _DEFAULT_HINT) -> None:
    """Write a file atomically: ``write(fh)`` fills a temporary file (binary) in the same folder,
    which is fsynced and renamed over ``path``; the folder is then fsynced. Readers see the old
    file or the complete new one, never a part. The mode follows the umask.

    Raises:
        OutputError: naming the file and folder (and ``hint``) when it cannot be written, e.g.
            a full disk or a read-only folder; nothing is left behind. ``torch.save`` reports a
            full disk as a RuntimeError, which is reported the same way.
    """
    dest = Path(path)
    try:
        tmp = _write_temp(dest, write, umask_file_mode())
        try:
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except (OSError, RuntimeError) as exc:
        raise _output_error(dest, exc, hint) from exc
    fsync_dir(dest.parent)


def atomic_write_bytes(path: PathLike, data: bytes, *, hint: str = _DEFAULT_HINT) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda fh: fh.write(data), hint=hint)


def atomic_write_text(path: PathLike, text: str, *, hint: str = _DEFAULT_HINT) -> None:
    """:func:`atomic_write` of ``text`` as UTF-8 (newlines written as given)."""
    atomic_write_bytes(path, text.encode("utf-8"), hint=hint)


def json_dumps(obj: Any) -> str:
    """The project's JSON style: indented, keys sorted, unknown objects as ``str``, final newline."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def atomic_write_json(path: PathLike, obj: Any, *, hint: str = _DEFAULT_HINT) -> None:
    """:func:`atomic_write_text` of :func:`json_dumps` ``(obj)``."""
    atomic_write_text(path, json_dumps(obj), hint=hint)


def atomic_write_csv(path: PathLike, df: pd.DataFrame, *, hint: str = _DEFAULT_HINT, **to_csv: Any) -> None:
    """:func:`atomic_write_text` of ``df.to_csv(index=False, **to_csv)`` (UTF-8, ``\\n`` line ends)."""
    text = df.to_csv(index=False, lineterminator="\n", **to_csv)
    atomic_write_text(path, text, hint=hint)


def _writer(data: bytes) -> Callable[[IO[bytes]], object]:
    return lambda fh: fh.write(data)


def atomic_write_many(files: Mapping[PathLike, str | bytes], *, hint: str = _DEFAULT_HINT) -> None:
    """Write several files as a unit: every one goes to a temporary file first (fsynced), and
    only when all are complete are they renamed into place. On a failure (a full disk) no file
    is replaced and the temporary files are removed, so a folder holds either the old complete
    set or the new one. ``str`` values are written as UTF-8.

    Raises:
        OutputError: naming the file that could not be written.
    """
    mode = umask_file_mode()
    temps: list[tuple[str, Path]] = []
    dest = Path(".")
    try:
        for target, content in files.items():
            dest = Path(target)
            data = content.encode("utf-8") if isinstance(content, str) else content
            temps.append((_write_temp(dest, _writer(data), mode), dest))
        for tmp, dest in temps:
            os.replace(tmp, dest)
    except OSError as exc:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise _output_error(dest, exc, hint) from exc
    for parent in {d.parent for _, d in temps}:
        fsync_dir(parent)

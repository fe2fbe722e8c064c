"""Folder walking for the scan: every entry under the sources becomes a candidate file or a problem.

:func:`iter_files` walks sources (folders recursively, or single files) in sorted order,
following symlinks but never entering a folder twice (symlink loops, or a second link to a
folder). :func:`walk_sources` also returns the entries that cannot be scanned (unreadable
folders, entries that cannot be stat'ed, devices/pipes/sockets, names that are not valid
UTF-8) as ``(path, Reason.UNREADABLE, detail)`` and the folders skipped, so the scan can
account for every one of them.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from cxr_cad.core.files import not_regular_detail
from cxr_cad.errors import Reason, UsageError

log = logging.getLogger(__name__)


def _check_sources(sources: Iterable[str | os.PathLike]) -> list[str]:
    srcs = [os.path.abspath(os.fspath(s)) for s in sources]
    if not srcs:
        raise UsageError("no input: give at least one folder or file")
    missing = [s for s in srcs if not os.path.exists(s)]
    if missing:
        raise UsageError("input not found: " + ", ".join(missing) + " (check the path)")
    return srcs


def _under(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def _check_not_inside(srcs: list[str], excl: list[str]) -> None:
    inside = [s for s in srcs if _under(s, excl) or _under(os.path.realpath(s), excl)]
    if inside:
        raise UsageError(
            f"the input {inside[0]} is the output folder or lies inside it, so none of its "
            "files would be read; give an output folder (--out) outside the inputs"
        )


class _Walk:
    """One walk's state: candidate files, problems by path, folders skipped, folders visited."""

    def __init__(self, excl: list[str]) -> None:
        self.excl = excl
        self.files: set[str] = set()
        self.problems: dict[str, tuple[str, Reason, str]] = {}
        self.skipped: list[str] = []
        self.visited: set[tuple[int, int]] = set()

    def excluded(self, path: str) -> bool:
        return bool(self.excl) and (_under(path, self.excl) or _under(os.path.realpath(path), self.excl))

    def add_entry(self, path: str, st_mode: int | None) -> None:
        if self.excluded(path):
            return
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes in the name: no CSV can hold it
            shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            self.problems[path] = (shown, Reason.UNREADABLE, "the file name is not valid UTF-8; rename the file")
            return
        if st_mode is None or stat.S_ISREG(st_mode):  # None: broken symlink -> UNREADABLE later
            self.files.add(path)
        else:
            self.problems[path] = (path, Reason.UNREADABLE, not_regular_detail(st_mode))

    def _enter(self, folder: str) -> list[os.DirEntry[str]] | None:
        """The folder's entries sorted by name, or None (recorded) when it is not to be walked."""
        try:
            st = os.stat(folder)
        except OSError as exc:
            self.problems[folder] = (folder, Reason.UNREADABLE, f"cannot open folder: {exc.strerror or exc}")
            return None
        ident = (st.st_dev, st.st_ino)
        if ident in self.visited:
            self.skipped.append(folder)
            log.info("not entering %s again (symlink loop or second link to a folder already scanned)", folder)
            return None
        self.visited.add(ident)
        if self.excluded(folder):
            return None
        try:
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.problems[folder] = (
                folder,
                Reason.UNREADABLE,
                f"cannot list folder: {exc.strerror or exc}; its files were not scanned",
            )
            return None

    def walk_dir(self, folder: str) -> None:
        entries = self._enter(folder)
        for entry in entries or ():
            path = os.path.join(folder, entry.name)
            mode: int | None
            try:
                if entry.is_dir(follow_symlinks=True):
                    self.walk_dir(path)
                    continue
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                mode = None
            except OSError as exc:
                self.problems[path] = (path, Reason.UNREADABLE, f"cannot stat: {exc.strerror or exc}")
                continue
            self.add_entry(path, mode)


def walk_sources(
    sources: Iterable[str | os.PathLike[str]], exclude: Iterable[str | os.PathLike[str]] = ()
) -> tuple[list[str], list[tuple[str, Reason, str]], list[str]]:
    """Collect candidate files, unreadable entries and skipped folders (see :func:`iter_files`).

    Returns:
        ``(files, problems, skipped)``: candidate file paths (absolute, sorted, each once);
        ``(shown path, Reason.UNREADABLE, detail)`` for entries that cannot be scanned, sorted;
        folders not entered again (symlink loops or a second link to a folder).

    Raises:
        UsageError: a source does not exist, no source was given, or a source is (inside) an
            ``exclude`` folder.
    """
    srcs = _check_sources(sources)
    excl = [os.path.abspath(os.fspath(e)) for e in exclude]
    excl += [os.path.realpath(e) for e in excl]
    _check_not_inside(srcs, excl)
    walk = _Walk(excl)
    for src in srcs:
        if os.path.isdir(src):
            walk.walk_dir(src)
        else:
            walk.add_entry(src, os.stat(src).st_mode)
    for p in list(walk.problems):
        walk.files.discard(p)
    return sorted(walk.files), sorted(walk.problems.values()), walk.skipped


def iter_files(sources: Iterable[str | os.PathLike], *, exclude: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Every entry under ``sources`` that a batch must account for (folders, recursively; or
    single files), absolute, sorted by path, each once. Symlinks are followed, but a folder
    already entered (a symlink loop, or a second link to it) is not entered again. Broken
    symlinks, FIFOs, devices, sockets and folders that cannot be listed are included too: the
    readers reject them (``UNREADABLE``, without opening a FIFO for reading), so each appears
    in a rejected table instead of vanishing. Paths under ``exclude`` (e.g. the output folder)
    are left out.

    Raises:
        UsageError: a source does not exist, no source was given, or a source lies inside an
            ``exclude`` folder (an output folder given as the input).
    """
    files, problems, _ = walk_sources(sources, exclude)
    for f in sorted(set(files) | {p for p, _, _ in problems}):
        yield Path(f)

"""The workflows shipped with cxr_cad (:func:`shipped_workflows`) and the file a ``cxr-cad run``
argument names (:func:`find_workflow`: a path, or a shipped workflow's name)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from cxr_cad.errors import UsageError

__all__ = ["SHIPPED_DIRS", "find_workflow", "shipped_workflows"]

#: Where the shipped workflow files are looked for, in order: package data (an installed
#: wheel that ships them), then the ``workflows/`` folder beside the package (a source checkout
#: or an editable install).
SHIPPED_DIRS: tuple[Path, ...] = (
    Path(__file__).resolve().parents[1] / "data" / "workflows",
    Path(__file__).resolve().parents[2] / "workflows",
)


def shipped_workflows() -> dict[str, Path]:
    """The workflows shipped with cxr_cad: ``{name (file stem): path}``, sorted by name."""
    found: dict[str, Path] = {}
    for folder in SHIPPED_DIRS:
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def find_workflow(text: str | os.PathLike) -> Path:
    """The workflow file ``text`` names: an existing file, else a shipped workflow's name
    (``chandola2021_pneumonia`` or ``chandola2021_pneumonia.yaml``).

    Raises UsageError (exit 2) naming the folder looked in and the shipped workflows, with the
    command that runs one by name.
    """
    path = Path(os.path.expanduser(os.fspath(text)))
    if path.is_file():
        return path
    shipped = shipped_workflows()
    stem = path.name[: -len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
    if path.parent == Path(".") and stem in shipped:
        return shipped[stem]
    if path.exists():
        raise UsageError(f"workflow {path} is not a regular file; give a workflow .yaml file")
    listing = ", ".join(f"{name} ({p})" for name, p in shipped.items()) or "none found"
    hint = ""
    if stem in shipped:
        hint = f"; to run the shipped one: cxr-cad run {stem}"
    else:
        close = difflib.get_close_matches(stem, list(shipped), n=1, cutoff=0.6)
        if close:
            hint = f"; did you mean the shipped workflow {close[0]}: cxr-cad run {close[0]}"
    raise UsageError(
        f"workflow file {path} not found (relative paths start in {Path.cwd()}){hint}; "
        f"shipped workflows, run by name: {listing}"
    )

"""Software versions recorded in run folders, reports and ingest records (no heavy imports)."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version

from cxr_cad import __version__

__all__ = ["software_versions"]


def software_versions(packages: Iterable[str] = ()) -> dict[str, str]:
    """``{"cxr_cad": ..., "python": ..., <package>: ...}`` in that order.

    Args:
        packages: installed distribution names (as pip spells them, e.g. ``"scikit-learn"``);
            one that is not installed maps to ``"not installed"``. Nothing is imported.
    """
    out = {"cxr_cad": __version__, "python": platform.python_version()}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out

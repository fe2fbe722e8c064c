"""Provenance: SHA-256 of files and bytes, the cxr_cad version and the versions of the libraries a
run's numbers depend on."""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version

__all__ = ["CORE_PACKAGES", "__version__", "sha256_bytes", "sha256_file", "software_versions"]

try:
    __version__ = version("cxr_cad")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


#: The libraries a run's numbers depend on, recorded in bundles, run folders, reports and ingest
#: records (pip spelling).
CORE_PACKAGES: tuple[str, ...] = (
    "torch",
    "monai",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "pydicom",
    "pillow",
    "pyyaml",
    "matplotlib",
    "jinja2",
    "fpdf2",
)


def software_versions(packages: Iterable[str] = CORE_PACKAGES) -> dict[str, str]:
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

"""Render the document model as one self-contained HTML file (figures as base64 data URIs:
SVG for the charts, PNG for the Grad-CAM tiles)."""

from __future__ import annotations

import base64
from pathlib import Path

import jinja2

from cxr_cad.core.provenance import __version__
from cxr_cad.errors import OutputError

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("cxr_cad.report", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def data_uri(path: Path) -> str:
    """``data:image/svg+xml;base64,...`` for an SVG file, ``data:image/png;base64,...`` otherwise."""
    mime = "image/svg+xml" if Path(path).suffix.lower() == ".svg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure_files(doc: dict) -> set[str]:
    """Every image file the document names (figures, figure rows, galleries)."""
    used = set()
    for s in doc["sections"]:
        for b in s["blocks"]:
            if b["kind"] == "figure":
                used.add(b["file"])
            elif b["kind"] in ("figrow", "gallery"):
                used |= {it["file"] for it in b["items"]}
    return used


def render_html(doc: dict, images: dict[str, Path]) -> str:
    """The HTML text. ``images`` maps each figure file name the document uses to its PNG.

    Raises :class:`OutputError` when a figure the document names was not written.
    """
    used = figure_files(doc)
    missing = sorted(used - set(images))
    if missing:
        raise OutputError(f"report figures missing: {', '.join(missing)}")
    uris = {name: data_uri(images[name]) for name in used}
    return _ENV.get_template("report.html.j2").render(doc=doc, images=uris, version=__version__)

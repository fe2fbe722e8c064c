"""Render the document model as a PDF with fpdf2 (pure Python: no browser, no system libraries).

Text uses the DejaVu Sans TrueType fonts that ship inside matplotlib (full Unicode:
en dashes, +/-, >=), embedded as subsets. The PDF has the same sections, tables and
figures as the HTML, drawn from the same document model. Charts are SVG files drawn by
fpdf2 as vector paths; figure rows use two columns. A table's caption moves to the next
page with the table's first rows (never alone at a page foot), and a table that splits
repeats its header row (fpdf2's ``repeat_headings``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import matplotlib
from fpdf import FPDF
from fpdf.fonts import FontFace
from PIL import Image

from cxr_cad.core.atomic import atomic_write_bytes
from cxr_cad.core.provenance import __version__
from cxr_cad.errors import OutputError

log = logging.getLogger(__name__)

_FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
_FONT = "DejaVu"
_FIG_WIDTH_MM = 120.0
_NOTE_FILL = (255, 244, 224)
_BOX_FILL = (238, 244, 251)
_SVG_SIZE = re.compile(r'<svg[^>]*?width="([\d.]+)pt"[^>]*?height="([\d.]+)pt"', re.S)
_HEAD_FILL = (235, 235, 235)


class _ReportPDF(FPDF):
    def __init__(self, title: str):
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.report_title = title
        self.set_margins(15, 15, 15)
        self.set_auto_page_break(True, margin=15)
        for style, name in (("", "DejaVuSans.ttf"), ("B", "DejaVuSans-Bold.ttf"), ("I", "DejaVuSans-Oblique.ttf")):
            path = _FONT_DIR / name
            if not path.is_file():
                raise OutputError(f"PDF font {path} not found: reinstall matplotlib, which ships it")
            self.add_font(_FONT, style, str(path))
        self.set_title(title)
        self.set_creator(f"cxr_cad {__version__} (fpdf2)")

    def footer(self) -> None:
        self.set_y(-11)
        self.set_font(_FONT, "", 7)
        self.set_text_color(110)
        self.cell(
            0,
            5,
            f"{self.report_title} \u2014 research use only, not a medical device \u2014 page {self.page_no()}/{{nb}}",
            align="C",
        )
        self.set_text_color(0)


def _paragraph(pdf: _ReportPDF, text: str, *, size: float = 9, style: str = "", fill=None) -> None:
    pdf.set_font(_FONT, style, size)
    if fill:
        pdf.set_fill_color(*fill)
    padding: Any = (1.5, 2) if fill else 0  # mm; fpdf2 takes floats, its annotation says int
    pdf.multi_cell(0, size * 0.5, text, fill=bool(fill), padding=padding, new_x="LMARGIN", new_y="NEXT")
    pdf.set_fill_color(255)
    pdf.ln(2)


def _image_size(path: Path) -> tuple[float, float]:
    """(width, height) of a PNG in pixels or an SVG in points (only the ratio is used)."""
    if Path(path).suffix.lower() == ".svg":
        m = _SVG_SIZE.search(Path(path).read_text(encoding="utf-8")[:2000])
        if not m:
            raise OutputError(f"{path}: SVG without a width/height in points")
        return float(m.group(1)), float(m.group(2))
    with Image.open(path) as im:
        return float(im.size[0]), float(im.size[1])


def _place(pdf: _ReportPDF, path: Path, x: float, y: float, w: float, h: float) -> None:
    """Draw a PNG or SVG. SVG glyph paths without a fill attribute take the current fill
    colour, so it is reset to black first (the notes leave it white)."""
    pdf.set_fill_color(0)
    pdf.set_draw_color(0)
    pdf.image(str(path), x=x, y=y, w=w, h=h)
    pdf.set_fill_color(255)


def _kv_height(block: dict) -> float:
    """Rough height (mm) of a two-column list: a caption and one or two lines per row."""
    lines = sum(max(1 + len(str(k)) // 34, 1 + len(str(v)) // 75) for k, v in block["rows"])
    return min(8 + 5.2 * lines, 150)


def _keep_with_next(pdf: _ReportPDF, need_mm: float) -> None:
    """Start a new page unless ``need_mm`` fits above the bottom margin."""
    if pdf.get_y() + need_mm > pdf.page_break_trigger:
        pdf.add_page()


def _caption(pdf: _ReportPDF, text: str, rows_after: int = 2) -> None:
    # the caption, the header row and the first rows must fit together (no orphaned title)
    _keep_with_next(pdf, 6 + 9 * min(rows_after, 3))
    if text:
        pdf.set_font(_FONT, "B", 8.5)
        pdf.multi_cell(0, 4.5, text, new_x="LMARGIN", new_y="NEXT")


def _table(
    pdf: _ReportPDF, rows: list[list[str]], widths: list[float], *, header: bool, size: float = 8, left: bool = False
) -> None:
    pdf.set_font(_FONT, "", size)
    align = ["LEFT"] + ["RIGHT"] * (len(widths) - 1) if header and not left else "LEFT"
    width = pdf.epw if len(widths) > 3 or not header else pdf.epw * 0.6  # short lists stay compact
    with pdf.table(
        col_widths=tuple(widths),
        width=width,
        align="LEFT",
        first_row_as_headings=header,
        headings_style=FontFace(emphasis="BOLD", fill_color=_HEAD_FILL),
        line_height=size * 0.5,
        padding=1,
        text_align=align,
        v_align="TOP",
    ) as t:
        for r in rows:
            row = t.row()
            for cell in r:
                row.cell(cell)
    pdf.ln(3)


def _figure(pdf: _ReportPDF, path: Path, caption: str, width: float = _FIG_WIDTH_MM) -> None:
    w0, h0 = _image_size(path)
    h = width * h0 / w0
    _keep_with_next(pdf, h + 10)
    x = pdf.l_margin + (pdf.epw - width) / 2
    _place(pdf, path, x, pdf.get_y(), width, h)
    pdf.set_y(pdf.get_y() + h + 1)
    pdf.set_font(_FONT, "I", 8)
    pdf.multi_cell(0, 4, caption, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)


def _headline(pdf: _ReportPDF, block: dict) -> None:
    """The summary box: a filled two-column table, then the warnings as highlighted notes."""
    pdf.set_font(_FONT, "", 8.5)
    with pdf.table(
        col_widths=(1.0, 2.6),
        width=pdf.epw,
        align="LEFT",
        first_row_as_headings=False,
        line_height=4.4,
        padding=1.2,
        text_align="LEFT",
        v_align="TOP",
        cell_fill_color=_BOX_FILL,
        cell_fill_mode="ALL",
        borders_layout="HORIZONTAL_LINES",
    ) as t:
        for k, v in block["rows"]:
            row = t.row()
            row.cell(k, style=FontFace(emphasis="BOLD"))
            row.cell(v)
    pdf.ln(1.5)
    for w in block["warnings"]:
        _paragraph(pdf, w, size=8, fill=_NOTE_FILL)


def _gallery(pdf: _ReportPDF, items: list[dict], images: dict[str, Path], per_row: int = 2) -> None:
    """Images in ``per_row`` columns with captions (figure rows and the Grad-CAM gallery)."""
    gap = 5.0
    w = (pdf.epw - gap * (per_row - 1)) / per_row
    for start in range(0, len(items), per_row):
        row = items[start : start + per_row]
        heights = []
        for it in row:
            iw, ih = _image_size(images[it["file"]])
            heights.append(w * ih / iw)
        need = max(heights) + 16
        if pdf.get_y() + need > pdf.page_break_trigger:
            pdf.add_page()
        y0 = pdf.get_y()
        bottom = y0
        for i, it in enumerate(row):
            x = pdf.l_margin + i * (w + gap)
            _place(pdf, images[it["file"]], x, y0, w, heights[i])
            pdf.set_xy(x, y0 + heights[i] + 1)
            pdf.set_font(_FONT, "", 7)
            pdf.multi_cell(w, 3.4, it["caption"], new_x="LEFT", new_y="NEXT")
            bottom = max(bottom, pdf.get_y())
        pdf.set_xy(pdf.l_margin, bottom + 3)


def _section_need(pdf: _ReportPDF, first: dict, images: dict[str, Path]) -> float:
    """Room (mm) a section title needs below it so that it never sits alone at a page foot."""
    if first["kind"] == "figure" and first["file"] in images:
        w0, h0 = _image_size(images[first["file"]])
        return _FIG_WIDTH_MM * h0 / w0 + 25
    if first["kind"] == "kv":
        return _kv_height(first) + 12
    if first["kind"] in ("figrow", "gallery") and all(it["file"] in images for it in first["items"][:2]):
        col = (pdf.epw - 5.0) / 2  # a section title never sits alone above its first figure row
        return max(col * h / w for w, h in (_image_size(images[it["file"]]) for it in first["items"][:2])) + 30
    return 40.0


def _block(pdf: _ReportPDF, b: dict, images: dict[str, Path]) -> None:
    kind = b["kind"]
    if kind == "paragraph":
        _paragraph(pdf, b["text"])
    elif kind == "note":
        _paragraph(pdf, b["text"], fill=_NOTE_FILL)
    elif kind == "headline":
        _headline(pdf, b)
    elif kind == "kv":  # short two-column lists stay on one page (they have no header to repeat)
        _keep_with_next(pdf, _kv_height(b))
        _caption(pdf, b["caption"], len(b["rows"]))
        _table(pdf, b["rows"], [1.0, 2.2], header=False, size=8)
    elif kind == "table":
        _caption(pdf, b["caption"], len(b["rows"]) + 1)
        _table(
            pdf,
            [b["columns"], *b["rows"]],
            b["widths"],
            header=True,
            left=bool(b.get("left")),
            size=7 if len(b["columns"]) > 6 else 7.5 if len(b["columns"]) > 4 else 8,
        )
    elif kind in ("figure", "gallery", "figrow"):
        files = [b["file"]] if kind == "figure" else [it["file"] for it in b["items"]]
        missing = [f for f in files if f not in images]
        if missing:
            raise OutputError(f"report figures missing: {', '.join(missing)}")
        if kind == "figure":
            _figure(pdf, images[b["file"]], b["caption"])
        else:
            _gallery(pdf, b["items"], images)


def pdf_bytes(doc: dict, images: dict[str, Path]) -> bytes:
    """The document as PDF bytes. Raises :class:`OutputError` for a missing figure."""
    pdf = _ReportPDF(doc["title"])
    pdf.alias_nb_pages()
    pdf.add_page()
    pdf.set_font(_FONT, "B", 16)
    pdf.multi_cell(0, 8, doc["title"], new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(_FONT, "", 10)
    pdf.set_text_color(80)
    pdf.multi_cell(0, 5, doc["subtitle"], new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0)
    pdf.ln(3)
    for s in doc["sections"]:
        first: dict = s["blocks"][0] if s["blocks"] else {"kind": "paragraph"}
        _keep_with_next(pdf, _section_need(pdf, first, images))
        pdf.set_font(_FONT, "B", 12.5)
        pdf.multi_cell(0, 7, f"{s['number']}. {s['title']}", border="B", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
        for b in s["blocks"]:
            _block(pdf, b, images)
    data = bytes(pdf.output())
    log.debug("PDF of %d pages", pdf.page_no())
    return data


def render_pdf(doc: dict, images: dict[str, Path], path: Path) -> Path:
    """Write the document as a PDF at ``path`` (atomically). Raises :class:`OutputError` for a
    missing figure or an unwritable file."""
    atomic_write_bytes(path, pdf_bytes(doc, images))
    log.debug("wrote %s", path)
    return Path(path)

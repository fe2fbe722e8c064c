"""Render the document model as a PDF with fpdf2 (pure Python: no browser, no system libraries).

Text uses the DejaVu Sans TrueType fonts that ship inside matplotlib (full Unicode:
en dashes, +/-, >=), embedded as subsets. The PDF has the same sections, tables and
figures as the HTML, drawn from the same document model.
"""
from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
from fpdf import FPDF
from fpdf.fonts import FontFace
from PIL import Image

from cxr_cad import __version__
from cxr_cad.errors import OutputError

log = logging.getLogger(__name__)

_FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
_FONT = "DejaVu"
_FIG_WIDTH_MM = 120.0
_NOTE_FILL = (255, 244, 224)
_HEAD_FILL = (235, 235, 235)


class _ReportPDF(FPDF):
    def __init__(self, title: str):
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.report_title = title
        self.set_margins(15, 15, 15)
        self.set_auto_page_break(True, margin=15)
        for style, name in (("", "DejaVuSans.ttf"), ("B", "DejaVuSans-Bold.ttf"),
                            ("I", "DejaVuSans-Oblique.ttf")):
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
        self.cell(0, 5, f"{self.report_title} \u2014 research use only, not a medical device \u2014 "
                        f"page {self.page_no()}/{{nb}}", align="C")
        self.set_text_color(0)


def _paragraph(pdf: _ReportPDF, text: str, *, size: float = 9, style: str = "", fill=None) -> None:
    pdf.set_font(_FONT, style, size)
    if fill:
        pdf.set_fill_color(*fill)
    pdf.multi_cell(0, size * 0.5, text, fill=bool(fill), padding=(1.5, 2) if fill else 0,
                   new_x="LMARGIN", new_y="NEXT")
    pdf.set_fill_color(255)
    pdf.ln(2)


def _caption(pdf: _ReportPDF, text: str) -> None:
    if text:
        pdf.set_font(_FONT, "B", 8.5)
        pdf.multi_cell(0, 4.5, text, new_x="LMARGIN", new_y="NEXT")


def _table(pdf: _ReportPDF, rows: list[list[str]], widths: list[float], *, header: bool, size: float = 8) -> None:
    pdf.set_font(_FONT, "", size)
    align = ["LEFT"] + ["RIGHT"] * (len(widths) - 1) if header else "LEFT"
    width = pdf.epw if len(widths) > 3 or not header else pdf.epw * 0.6  # short lists stay compact
    with pdf.table(col_widths=tuple(widths), width=width, align="LEFT", first_row_as_headings=header,
                   headings_style=FontFace(emphasis="BOLD", fill_color=_HEAD_FILL),
                   line_height=size * 0.5, padding=1, text_align=align, v_align="TOP") as t:
        for r in rows:
            row = t.row()
            for cell in r:
                row.cell(cell)
    pdf.ln(3)


def _figure(pdf: _ReportPDF, path: Path, caption: str, width: float = _FIG_WIDTH_MM) -> None:
    with Image.open(path) as im:
        w_px, h_px = im.size
    h = width * h_px / w_px
    if pdf.get_y() + h + 10 > pdf.page_break_trigger:
        pdf.add_page()
    x = pdf.l_margin + (pdf.epw - width) / 2
    pdf.image(str(path), x=x, y=pdf.get_y(), w=width, h=h)
    pdf.set_y(pdf.get_y() + h + 1)
    pdf.set_font(_FONT, "I", 8)
    pdf.multi_cell(0, 4, caption, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)


def _gallery(pdf: _ReportPDF, items: list[dict], images: dict[str, Path], per_row: int = 3) -> None:
    gap = 4.0
    w = (pdf.epw - gap * (per_row - 1)) / per_row
    for start in range(0, len(items), per_row):
        row = items[start:start + per_row]
        heights = []
        for it in row:
            with Image.open(images[it["file"]]) as im:
                heights.append(w * im.size[1] / im.size[0])
        need = max(heights) + 16
        if pdf.get_y() + need > pdf.page_break_trigger:
            pdf.add_page()
        y0 = pdf.get_y()
        bottom = y0
        for i, it in enumerate(row):
            x = pdf.l_margin + i * (w + gap)
            pdf.image(str(images[it["file"]]), x=x, y=y0, w=w, h=heights[i])
            pdf.set_xy(x, y0 + heights[i] + 1)
            pdf.set_font(_FONT, "", 7)
            pdf.multi_cell(w, 3.4, it["caption"], new_x="LEFT", new_y="NEXT")
            bottom = max(bottom, pdf.get_y())
        pdf.set_xy(pdf.l_margin, bottom + 3)


def render_pdf(doc: dict, images: dict[str, Path], path: Path) -> Path:
    """Write the document as a PDF at ``path``. Raises :class:`OutputError` for a missing figure."""
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
        first = s["blocks"][0] if s["blocks"] else {"kind": "paragraph"}
        need = 40.0
        if first["kind"] == "figure" and first["file"] in images:
            with Image.open(images[first["file"]]) as im:
                need = _FIG_WIDTH_MM * im.size[1] / im.size[0] + 25
        if pdf.get_y() + need > pdf.page_break_trigger:
            pdf.add_page()
        pdf.set_font(_FONT, "B", 12.5)
        pdf.multi_cell(0, 7, f"{s['number']}. {s['title']}", border="B", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
        for b in s["blocks"]:
            kind = b["kind"]
            if kind == "paragraph":
                _paragraph(pdf, b["text"])
            elif kind == "note":
                _paragraph(pdf, b["text"], fill=_NOTE_FILL)
            elif kind == "kv":
                _caption(pdf, b["caption"])
                _table(pdf, b["rows"], [1.0, 2.2], header=False, size=8)
            elif kind == "table":
                _caption(pdf, b["caption"])
                _table(pdf, [b["columns"], *b["rows"]], b["widths"], header=True,
                       size=7 if len(b["columns"]) > 6 else 7.5 if len(b["columns"]) > 4 else 8)
            elif kind in ("figure", "gallery"):
                files = [b["file"]] if kind == "figure" else [it["file"] for it in b["items"]]
                missing = [f for f in files if f not in images]
                if missing:
                    raise OutputError(f"report figures missing: {', '.join(missing)}")
                if kind == "figure":
                    _figure(pdf, images[b["file"]], b["caption"])
                else:
                    _gallery(pdf, b["items"], images)
    try:
        pdf.output(str(path))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc
    log.debug("wrote %s (%d pages)", path, pdf.page_no())
    return Path(path)

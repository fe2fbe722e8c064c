"""The report as a reader gets it: self-contained HTML rendered by a real headless browser,
PDF pages rendered to pixels, and no patient identifier in any file unless asked for."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import zlib

import numpy as np
import pytest
from PIL import Image

from cxr_cad.report import ReportOptions, write_report
from tests.report.test_report import MODEL_INFO, PATIENT_TAG, pdf_text, synthetic_predictions

OPTIONS = ReportOptions(n_bootstrap=200)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _ink_fraction(img: Image.Image) -> float:
    """Fraction of pixels that are not (near) white."""
    a = np.asarray(img.convert("L"), dtype=np.uint8)
    return float(np.mean(a < 240))


@pytest.fixture(scope="module")
def folds_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("rendered")
    df = synthetic_predictions(160, seed=5, folds=4)
    write_report(
        df, out, model_info=MODEL_INFO, cohort_info={"name": "render test"}, options=OPTIONS, cv={"n_folds": 4}
    )
    return out


def test_html_is_self_contained(folds_report):
    text = (folds_report / "report.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text)
    assert refs, "no images found"
    external = [r for r in refs if not (r.startswith("data:image/svg+xml;base64,") or r.startswith("#"))]
    assert external == []
    assert "<script" not in text and "<link" not in text and "@import" not in text and "url(" not in text
    # every chart is embedded once, as vector SVG
    n_figures = len(list(folds_report.glob("*.svg")))
    assert n_figures >= 6 and text.count("data:image/svg+xml;base64,") == n_figures
    assert "data:image/png" not in text  # no Grad-CAM here (no model)
    assert "@media print" in text and "@media (max-width: 640px)" in text


def _chromium_run(args: list[str], tmp_path, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


#: measures the laid-out page and posts the result to the frame's parent (headless chromium lays a
#: window out at least 500 px wide, so the report is drawn in an iframe of the tested width)
_PROBE = """<script>
window.addEventListener("load", () => {
  const doc = document.documentElement, box = document.querySelector(".headline");
  const rows = box.querySelectorAll("tr"), r = box.getBoundingClientRect();
  const out = {scrollWidth: doc.scrollWidth, innerWidth: window.innerWidth, innerHeight: window.innerHeight,
               boxTop: r.top, rowBottoms: Array.from(rows).map(x => x.getBoundingClientRect().bottom),
               sections: Array.from(document.querySelectorAll("section")).map(s => [s.id, s.offsetHeight]),
               wideTables: Array.from(document.querySelectorAll(".scroll")).filter(
                 s => s.getBoundingClientRect().right > window.innerWidth + 1).length};
  parent.postMessage(JSON.stringify(out), "*");
});
</script>"""
_FRAME = """<!DOCTYPE html><html><body style="margin:0">
<iframe src="probed.html" style="width:{w}px;height:{h}px;border:0"></iframe>
<script>window.addEventListener("message", e => {{
  const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = e.data;
  document.body.appendChild(pre); }});</script></body></html>"""

SECTION_IDS = [
    "summary",
    "header",
    "population",
    "model",
    "cohort",
    "shift",
    "study",
    "roc",
    "utility",
    "calibration",
    "subgroups",
    "failures",
    "explanations",
    "methods",
    "checklist",
]


@pytest.mark.skipif(_chromium() is None, reason="no headless chromium on this machine (apt-get install chromium)")
@pytest.mark.parametrize("width, height", [(1400, 900), (400, 850)])
def test_layout_in_headless_chromium(folds_report, tmp_path, width, height):
    """At 1400 px (desktop) and 400 px (phone): no sideways page scroll (wide tables scroll in their
    own box), the headline box's rows are on the first screen, every section is laid out."""
    import json

    probed = tmp_path / "probed.html"
    probed.write_text(
        (folds_report / "report.html").read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"),
        encoding="utf-8",
    )
    frame = tmp_path / "frame.html"
    frame.write_text(_FRAME.format(w=width, h=height), encoding="utf-8")
    proc = _chromium_run(
        [
            f"--window-size={width + 100},{height + 100}",
            "--virtual-time-budget=10000",
            "--allow-file-access-from-files",
            "--dump-dom",
            frame.as_uri(),
        ],
        tmp_path,
    )
    m = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"no probe output (rc {proc.returncode}): {proc.stderr[-1500:]}"
    got = json.loads(html.unescape(m.group(1)))
    assert got["innerWidth"] == width
    assert got["scrollWidth"] <= width, got  # the page never scrolls sideways
    assert got["wideTables"] == 0, got  # no table box pokes out of the page
    assert 0 <= got["boxTop"] < height / 3, got  # the summary opens the report ...
    assert max(got["rowBottoms"][:4]) <= height, got  # ... and its first rows fit on the first screen
    laid_out = dict(got["sections"])
    assert [s for s in SECTION_IDS if laid_out.get(s, 0) <= 0] == []
    shot = tmp_path / "shot.png"
    _chromium_run(
        [f"--window-size={width},{height}", f"--screenshot={shot}", (folds_report / "report.html").as_uri()], tmp_path
    )
    with Image.open(shot) as img:
        assert img.size == (width, height) and _ink_fraction(img) > 0.03


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext missing (apt-get install poppler-utils)")
def test_pdf_text_has_headline_and_checklist(folds_report):
    text = subprocess.run(
        ["pdftotext", "-layout", str(folds_report / "report.pdf"), "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    first_page = text.split("\f")[0]
    assert "1. Summary" in first_page and "Sensitivity (95% CI)" in first_page and "AUC (95% CI)" in first_page
    flat = re.sub(r"\s+", " ", text)
    assert "Appendix: CLAIM 2024 and TRIPOD+AI 2024 checklist" in flat
    assert flat.count("TRIPOD+AI") > 10 and "Chandola et al. 2021, ch. 4" in flat


def test_pdf_pages_render_and_hold_the_sections(folds_report):
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(folds_report / "report.pdf"))
    try:
        assert len(doc) >= 5
        inks = [_ink_fraction(doc[i].render(scale=0.6).to_pil()) for i in range(len(doc))]
    finally:
        doc.close()
    assert all(ink > 0.005 for ink in inks), inks
    text = re.sub(r"\s+", " ", pdf_text(folds_report / "report.pdf"))
    assert "Cross-validation" in text and "AUC per held-out fold" in text
    assert "research use only" in text.lower()


def _png_text_chunks(path) -> str:
    with Image.open(path) as img:
        return " ".join(f"{k}={v}" for k, v in img.info.items() if isinstance(v, str))


def _pdf_streams(raw: bytes) -> bytes:
    """All FlateDecode streams of a PDF, decompressed (fpdf2 compresses page content)."""
    out = []
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", raw, re.S):
        try:
            out.append(zlib.decompress(m.group(1)))
        except zlib.error:
            out.append(m.group(1))
    return b"\n".join(out)


def _all_report_text(folder) -> dict[str, str]:
    texts = {}
    for p in sorted(folder.iterdir()):
        raw = p.read_bytes()
        texts[p.name] = raw.decode("latin-1")
        if p.suffix == ".png":
            texts[p.name + " (metadata)"] = _png_text_chunks(p)
        if p.suffix == ".pdf":
            texts[p.name + " (streams)"] = _pdf_streams(raw).decode("latin-1")
            texts[p.name + " (text)"] = pdf_text(p)
    return texts


def test_no_patient_identifier_in_any_file(folds_report):
    texts = _all_report_text(folds_report)
    assert len(texts) >= 10
    leaks = [name for name, text in texts.items() if PATIENT_TAG in text or "/data/" in text]
    assert leaks == []


def test_identifiers_only_when_asked(tmp_path):
    df = synthetic_predictions(60, seed=6)
    write_report(df, tmp_path, model_info=MODEL_INFO, options=OPTIONS, include_identifiers=True, pdf=False)
    csv = (tmp_path / "predictions.csv").read_text()
    assert PATIENT_TAG in csv and "/data/" in csv
    others = {k: v for k, v in _all_report_text(tmp_path).items() if not k.startswith("predictions.csv")}
    assert [k for k, v in others.items() if PATIENT_TAG in v] == []


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext missing (apt-get install poppler-utils)")
def test_pdf_titles_are_not_orphaned_and_split_tables_repeat_their_header(folds_report):
    import json

    from cxr_cad.report.view import build_document

    doc = build_document(json.loads((folds_report / "metrics.json").read_text()))
    titles = {f"{s['number']}. {s['title']}" for s in doc["sections"]}
    titles |= {b["caption"] for s in doc["sections"] for b in s["blocks"] if b.get("caption")}
    text = subprocess.run(
        ["pdftotext", "-layout", str(folds_report / "report.pdf"), "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    pages = [p for p in text.split("\f") if p.strip()]
    assert len(pages) >= 5
    for n, page in enumerate(pages):
        lines = [ln.strip() for ln in page.splitlines() if ln.strip() and "page " not in ln]
        assert lines[-1] not in titles, f"page {n + 1} ends with the title {lines[-1]!r}"
    # the checklist appendix is longer than a page: every page it continues on starts with its header row
    with_rows = [p for p in pages if re.search(r"^\s*(CLAIM|TRIPOD\+AI)\s+\d", p, re.M)]
    assert len(with_rows) >= 2
    for page in with_rows:
        first_row = re.search(r"^\s*(CLAIM|TRIPOD\+AI)\s+\d", page, re.M).start()
        assert re.search(r"Checklist\s+Item\s+Topic\s+Where answered", page[:first_row])

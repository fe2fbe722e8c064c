"""The report as a reader gets it: self-contained HTML rendered by a real headless browser,
PDF pages rendered to pixels, and no patient identifier in any file unless asked for."""
from __future__ import annotations

import re
import shutil
import subprocess
import zlib

import numpy as np
import pytest
from PIL import Image

from cxr_cad.report import ReportOptions, write_report
from tests.test_report import MODEL_INFO, PATIENT_TAG, pdf_text, synthetic_predictions

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
    write_report(df, out, model_info=MODEL_INFO, cohort_info={"name": "render test"}, options=OPTIONS,
                 cv={"n_folds": 4})
    return out


def test_html_is_self_contained(folds_report):
    text = (folds_report / "report.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text)
    assert refs, "no images found"
    external = [r for r in refs if not (r.startswith("data:image/png;base64,") or r.startswith("#"))]
    assert external == []
    assert "<script" not in text and "<link" not in text and "@import" not in text and "url(" not in text
    n_figures = len(list(folds_report.glob("*.png")))
    assert text.count("data:image/png;base64,") == n_figures
    assert "@media print" in text


@pytest.mark.skipif(_chromium() is None, reason="no headless chromium on this machine (apt-get install chromium)")
def test_html_renders_in_headless_chromium(folds_report, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
           (folds_report / "report.html").as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    with Image.open(shot) as img:
        assert img.size == (1200, 3000)
        ink = _ink_fraction(img)
        # text, tables and the first figures are drawn (a blank or error page has ~no ink)
        assert ink > 0.03, ink
        # the ROC figure's blue curve shows, i.e. the embedded PNGs decoded
        rgb = np.asarray(img.convert("RGB")).astype(int)
        blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 80) & (rgb[..., 1] < 160)
        assert blue.sum() > 200


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

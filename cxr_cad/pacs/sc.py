"""The result of one image as a DICOM Secondary Capture a radiologist can read (highdicom).

The picture (:func:`compose_sc`): the film at full resolution as the io layer displays it
(Modality/VOI LUT, MONOCHROME1 inverted), untinted; for a positive call the Grad-CAM map of
:func:`cxr_cad.explain.gradcam.logodds_maps` blended on top, on a **fixed** scale (0 to
``HEAT_SCALE`` log-odds units: the same colour is the same amount of evidence in every image;
zero evidence leaves the film untouched); for a negative call no map at all. A panel on the
right holds the colour bar and its scale; a banner below the film burns in "NOT FOR
DIAGNOSTIC USE", the decision and probability of each finding, and, when the image or its
cohort is flagged as shifted, "MODEL NOT VALIDATED FOR THIS POPULATION" ((0028,0301) Burned
In Annotation = YES). Patient and study attributes come from the source through highdicom's
:meth:`highdicom.sc.SCImage.from_ref_dataset`; nothing else of the source is copied.
Why burned-in pixels and not a presentation state: docs/conformance.md.
"""

from __future__ import annotations

import warnings

import highdicom as hd
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from cxr_cad.pacs.findings import Finding
from cxr_cad.pacs.sr import MANUFACTURER, SERIES_DESCRIPTION, drop_invalid_copied

WARNING_TEXT = "NOT FOR DIAGNOSTIC USE"
SHIFT_TEXT = "MODEL NOT VALIDATED FOR THIS POPULATION (dataset shift)"
#: Top of the colour scale, in log-odds units per cell (explain.gradcam.LogoddsCam); fixed for
#: every image and recorded in the SC's (0020,4000) Image Comments and objects.csv.
HEAT_SCALE = 8.0
ALPHA_MAX = 0.5  # opacity of the map at the top of the scale; 0 evidence = the film untouched
MAX_SIDE = 4096  # films larger than this are shown reduced (the SC stays a few tens of MB at most)
_JET = (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.float32)


def upsample_cam(cam: np.ndarray, shape: tuple[int, int], aspect: str = "squash") -> np.ndarray:
    """The model-resolution map ``cam`` resized once (bilinear) onto a film of ``shape`` (H, W).

    ``aspect``: the bundle's ``TransformSpec.aspect``: "squash" (the film was resized to the
    square input) or "pad" (longer side to the input, shorter side padded symmetrically).
    """
    h, w = shape
    img = Image.fromarray(np.asarray(cam, np.float32), mode="F")
    if aspect != "pad":
        return np.array(img.resize((w, h), Image.Resampling.BILINEAR), np.float32)
    side = max(h, w)
    big = np.asarray(img.resize((side, side), Image.Resampling.BILINEAR), np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    return big[top : top + h, left : left + w].copy()


def _fit(film: np.ndarray) -> np.ndarray:
    h, w = film.shape
    if max(h, w) <= MAX_SIDE:
        return film
    f = MAX_SIDE / max(h, w)
    img = Image.fromarray(np.asarray(film, np.float32), mode="F")
    return np.asarray(img.resize((round(w * f), round(h * f)), Image.Resampling.BOX), np.float32)


def _lines(findings: list[Finding], shown: bool, not_validated: bool) -> list[tuple[str, tuple[int, int, int]]]:
    out = []
    for f in findings:
        call = "POSITIVE" if f.positive else "negative"
        out.append((f"{f.name}: {call}  p = {f.probability:.3f} (threshold {f.threshold:.3g})", (255, 255, 255)))
    out.append(
        (
            f"Grad-CAM, fixed scale 0-{HEAT_SCALE:g} log-odds"
            if shown
            else "no heatmap: negative call (Grad-CAM is shown for positive calls only)",
            (200, 200, 200),
        )
    )
    if not_validated:
        out.append((SHIFT_TEXT, (255, 200, 0)))
    return out


def compose_sc(
    film: np.ndarray,
    findings: list[Finding],
    cam: np.ndarray | None = None,
    *,
    aspect: str = "squash",
    not_validated: bool = False,
) -> np.ndarray:
    """RGB uint8 picture: ``film`` (H, W) in [0, 1] full size, the map ``cam`` (model resolution,
    log-odds units; None or a negative call: none) on the fixed scale, colour bar and banner."""
    g = _fit(np.clip(np.asarray(film, np.float32), 0, 1))
    h, w = g.shape
    shown = cam is not None and any(f.positive for f in findings)
    unit = max(12, min(h, w) // 40)  # text height, pixels
    bar_w, lines = 6 * unit, _lines(findings, shown, not_validated)
    banner = (len(lines) + 2) * unit * 3 // 2
    canvas = np.zeros((h + banner, w + bar_w, 3), np.uint8)
    canvas[:h, :w] = (g * 255 + 0.5).astype(np.uint8)[..., None]
    if shown:
        assert cam is not None
        level = upsample_cam(cam, (h, w), aspect)
        level *= 1 / HEAT_SCALE
        np.clip(level, 0, 1, out=level)
        rows, cols = np.nonzero(level >= 0.5 / 255)  # blend only where there is evidence
        lv = level[rows, cols]
        alpha = (ALPHA_MAX * lv)[:, None]
        base = canvas[rows, cols].astype(np.float32)
        canvas[rows, cols] = (base * (1 - alpha) + _JET[(lv * 255 + 0.5).astype(np.uint8)] * alpha + 0.5).astype(
            np.uint8
        )
    top, bottom = unit, h - unit
    ramp = np.linspace(255, 0, max(bottom - top, 1)).astype(np.uint8)
    canvas[top:bottom, w + unit : w + 2 * unit] = _JET[ramp][:, None, :].astype(np.uint8)
    img = Image.fromarray(canvas, mode="RGB")
    draw = ImageDraw.Draw(img)
    small, big = ImageFont.load_default(size=unit), ImageFont.load_default(size=unit * 3 // 2)
    x = w + 2 * unit + unit // 3
    draw.text((x, top), f"{HEAT_SCALE:g}", fill=(255, 255, 255), font=small)
    draw.text((x, bottom - unit), "0", fill=(255, 255, 255), font=small)
    draw.text((x, h // 2 - unit), "log-", fill=(255, 255, 255), font=small)
    draw.text((x, h // 2), "odds", fill=(255, 255, 255), font=small)
    y = h + unit // 2
    draw.text((unit, y), WARNING_TEXT, fill=(255, 40, 40), font=big)
    y += unit * 2
    for text, colour in lines:
        draw.text((unit, y), text, fill=colour, font=small)
        y += unit * 3 // 2
    return np.asarray(img, dtype=np.uint8)


def build_sc(
    source: Dataset,
    picture: np.ndarray,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 9902,
    instance_number: int = 1,
) -> Dataset:
    """A Secondary Capture image of ``picture`` (RGB uint8) in the study of ``source``."""
    # the overlay keeps the source's row/column directions; (0020,0020) from the source when it has two
    # values, else that of a PA chest film as displayed (columns to the patient's left, rows to the feet)
    orientation = tuple(source.get("PatientOrientation") or ())
    orientation = orientation if len(orientation) == 2 and all(orientation) else ("L", "F")
    with warnings.catch_warnings():
        # highdicom warns about an odd (0010,0010) Patient's Name and quotes it: keep it out of the logs
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=picture,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            patient_orientation=orientation,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.BurnedInAnnotation = "YES"
    if "Laterality" not in sc:  # (0020,0060) type 2C; empty = not a paired structure (dciodvfy asks for it)
        sc["Laterality"] = DataElement(0x00200060, "CS", None)
    sc.ImageComments = (
        f"cxr_cad result; Grad-CAM fixed scale 0-{HEAT_SCALE:g} log-odds. RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"
    )
    drop_invalid_copied(sc)
    return sc

"""A Grad-CAM overlay as a DICOM Secondary Capture image (highdicom), for a PACS viewer.

The picture: the radiograph as the model sees it (scaled up for viewing), the Grad-CAM map
of :func:`cxr_cad.explain.gradcam.gradcam_maps` blended on top in the "jet" colour map, a
colour bar (0 = no influence, 1 = strongest), the probability, and "NOT FOR DIAGNOSTIC USE"
burned into the pixels (so it survives any viewer; (0028,0301) Burned In Annotation = YES).
Patient and study attributes come from the source through highdicom's
:meth:`highdicom.sc.SCImage.from_ref_dataset`; nothing else of the source is copied.
"""

from __future__ import annotations

import warnings

import highdicom as hd
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from cxr_cad.pacs.sr import MANUFACTURER, SERIES_DESCRIPTION, drop_invalid_copied

VIEW = 512  # side of the image panel, pixels
BAR_W, BANNER_H = 90, 64
WARNING_TEXT = "NOT FOR DIAGNOSTIC USE"


def compose_overlay(
    gray: np.ndarray, heat: np.ndarray, *, probability: float, threshold: float, alpha: float = 0.45
) -> np.ndarray:
    """RGB uint8 picture (H, W, 3): overlay + colour bar + burned-in text. ``gray``/``heat`` in [0, 1]."""

    def up(a: np.ndarray) -> np.ndarray:
        img = Image.fromarray(np.clip(a, 0, 1).astype(np.float32), mode="F")
        return np.asarray(img.resize((VIEW, VIEW), Image.Resampling.BILINEAR), dtype=np.float32)

    g, h = up(gray), up(heat)
    jet = colormaps["jet"]
    blend = (1 - alpha) * np.repeat(g[..., None], 3, axis=2) + alpha * jet(np.clip(h, 0, 1))[..., :3]
    canvas = np.zeros((VIEW + BANNER_H, VIEW + BAR_W, 3), dtype=np.float32)
    canvas[:VIEW, :VIEW] = blend
    ramp = np.linspace(1, 0, VIEW - 40)[:, None]  # top = 1 (hot), bottom = 0
    canvas[20 : VIEW - 20, VIEW + 15 : VIEW + 40] = jet(np.repeat(ramp, 25, axis=1))[..., :3]
    img = Image.fromarray((canvas * 255).round().astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(img)
    small, big = ImageFont.load_default(size=14), ImageFont.load_default(size=26)
    draw.text((VIEW + 44, 14), "1.0", fill=(255, 255, 255), font=small)
    draw.text((VIEW + 44, VIEW - 30), "0.0", fill=(255, 255, 255), font=small)
    draw.text((VIEW + 44, VIEW // 2 - 8), "Grad-", fill=(255, 255, 255), font=small)
    draw.text((VIEW + 44, VIEW // 2 + 8), "CAM", fill=(255, 255, 255), font=small)
    draw.text((10, VIEW + 4), WARNING_TEXT, fill=(255, 40, 40), font=big)
    draw.text(
        (10, VIEW + 36),
        f"cxr_cad research result: probability {probability:.3f} (threshold {threshold:g})",
        fill=(255, 255, 255),
        font=small,
    )
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
    sc.ImageComments = "Grad-CAM overlay by cxr_cad. RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"
    drop_invalid_copied(sc)
    return sc

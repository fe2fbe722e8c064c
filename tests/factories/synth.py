"""Synthetic chest-radiograph-like cohorts for tests (no ../shared needed).

Images have a dark lung field pair on a brighter mediastinum/body; the positive
class ("PNEUMONIA") gets a soft bright opacity in one lung, so a small CNN can
learn the task in a few epochs. Everything is seeded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CLASSES = ("NORMAL", "PNEUMONIA")


def synthetic_cxr(rng: np.random.Generator, size: int = 96, opacity: bool = False) -> np.ndarray:
    """A float32 image in [0, 1]: body bright, lungs dark, optional opacity."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.75 - 0.15 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    for cx in (0.3 + rng.normal(0, 0.02), 0.7 + rng.normal(0, 0.02)):
        lung = ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1.0
        img[lung] = 0.22 + rng.normal(0, 0.02)
    if opacity:
        cx = rng.choice([0.3, 0.7]) + rng.normal(0, 0.03)
        cy = 0.5 + rng.normal(0, 0.1)
        r = 0.08 + rng.uniform(0, 0.05)
        img += 0.35 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2)))
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def write_png_cohort(
    root: Path,
    n_patients: int = 24,
    images_per_patient: int = 2,
    size: int = 96,
    seed: int = 0,
    positive_fraction: float = 0.5,
    bit_depth: int = 8,
) -> pd.DataFrame:
    """Write a Kermany-style folder (``NORMAL/``, ``PNEUMONIA/``) of PNGs and return a manifest.

    Each patient has one label; file names are ``<patient>-<k>.png``. Returns a DataFrame
    with ``path`` (relative to ``root``), ``label``, ``patient_id``, ``sop_instance_uid``
    (``sha256:<hex>``), ``sha256``, ``rows``, ``columns``; also written to ``root/manifest.csv``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = CLASSES[1] if p < round(n_patients * positive_fraction) else CLASSES[0]
        pid = f"P{p:04d}"
        (root / label).mkdir(parents=True, exist_ok=True)
        for k in range(images_per_patient):
            img = synthetic_cxr(rng, size, opacity=label == CLASSES[1])
            rel = f"{label}/{pid}-{k}.png"
            if bit_depth == 16:
                Image.fromarray((img * 65535).astype(np.uint16)).save(root / rel)
            else:
                Image.fromarray((img * 255).astype(np.uint8)).save(root / rel)
            digest = hashlib.sha256((root / rel).read_bytes()).hexdigest()
            rows.append(
                {
                    "path": rel,
                    "label": label,
                    "patient_id": pid,
                    "sop_instance_uid": f"sha256:{digest}",
                    "sha256": digest,
                    "rows": size,
                    "columns": size,
                    "format": "png",
                }
            )
    df = pd.DataFrame(rows)
    df.to_csv(root / "manifest.csv", index=False)
    return df


def write_multilabel_cohort(
    root: Path, *, n_patients: int = 24, seed: int = 5, label_seed: int = 1, unknown: float = 0.2
) -> pd.DataFrame:
    """:func:`write_png_cohort` with two findings as ``finding_<F>`` columns: ``Opacity`` (the
    synthetic opacity) and ``Other`` (random 0/1, a fraction ``unknown`` left blank); absolute paths."""
    df = write_png_cohort(root, n_patients=n_patients, images_per_patient=2, size=48, seed=seed)
    rng = np.random.default_rng(label_seed)
    df["finding_Opacity"] = (df["label"] == "PNEUMONIA").astype(int).astype(str)
    other = rng.integers(0, 2, len(df)).astype(str).astype(object)
    if unknown:
        other[rng.random(len(df)) < unknown] = ""  # unknown: left out of that finding's statistics
    df["finding_Other"] = other
    df["path"] = [str(root / p) for p in df["path"]]
    return df

"""``cxr-cad demo``: the whole pipeline on 100 real chest radiographs shipped with the package.

The bundled sample (``cxr_cad/data/kermany_sample``, CC BY 4.0, see its ATTRIBUTION.md) is
written out as a DICOM folder, one file per image, with the PatientID set to the sample's
patient key, in a mix of encodings a PACS export can have:

====  ==========================  ===========  =========================
i % 5 transfer syntax              bits stored  photometric
====  ==========================  ===========  =========================
0     JPEG Baseline (the JPEG)     8            MONOCHROME2
1     Explicit VR Little Endian    12           MONOCHROME1 (inverted)
2     RLE Lossless                 12           MONOCHROME2
3     JPEG 2000 Lossless           12           MONOCHROME2
4     Explicit VR Little Endian    8            MONOCHROME2
====  ==========================  ===========  =========================

Then a workflow runs on it: ingest (labels joined by patient_id from ``labels.csv``) ->
hold out 30 % of the patients -> train a randomly initialised ResNet18 briefly (30 % of the
remaining patients validate: they pick the epoch and the decision threshold) -> score the
held-out patients -> report. Rerunning on the same folder skips finished steps.

The demo's threshold is illustrative: it is chosen on about 20 validation images, fewer
than the 20 per class a threshold needs to be reliable; the report's population section
and the command's last lines say so (:func:`threshold_note`).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless, generate_uid

from cxr_cad.errors import OutputError
from cxr_cad.workflow.pipeline import run_workflow
from cxr_cad.workflow.schema import validate_workflow

log = logging.getLogger(__name__)

__all__ = [
    "DemoSettings",
    "sample_dir",
    "sample_table",
    "write_demo_dicoms",
    "demo_workflow",
    "run_demo",
    "threshold_note",
]

#: The (0008,0016) SOP Class UID of Computed Radiography Image Storage.
_CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
#: Variants by image index modulo 5: (transfer syntax name, bits stored, photometric).
VARIANTS = [
    ("jpeg_baseline", 8, "MONOCHROME2"),
    ("explicit_le", 12, "MONOCHROME1"),
    ("rle", 12, "MONOCHROME2"),
    ("jpeg2000_lossless", 12, "MONOCHROME2"),
    ("explicit_le", 8, "MONOCHROME2"),
]


@dataclass(frozen=True)
class DemoSettings:
    """How big the demo is. The defaults take a few minutes on a 2-core laptop CPU;
    :meth:`fast` is for tests (seconds)."""

    image_size: int = 128
    epochs: int = 12
    batch_size: int = 8
    lr: float = 0.001
    test_fraction: float = 0.3
    val_fraction: float = 0.3  # of the training patients: about 20 images, 10 per class, at 100 images
    n_images: int | None = None  # None = all 100; else a patient-whole, label-balanced subset
    bootstrap: int = 1000
    pdf: bool = True
    workers: int = 0
    seed: int = 0
    #: keep the model even where the training guards refuse it (recorded in the bundle): the
    #: --fast smoke run validates 1 epoch on about 5 images, whose AUC beating chance is luck
    force: bool = False

    @classmethod
    def fast(cls) -> DemoSettings:
        return cls(image_size=64, epochs=1, batch_size=8, n_images=24, bootstrap=200, pdf=True, force=True)


def sample_dir() -> Path:
    """Folder of the bundled sample (``labels.csv``, ``images/``, ``ATTRIBUTION.md``)."""
    return Path(str(resources.files("cxr_cad") / "data" / "kermany_sample"))


def sample_table(n_images: int | None = None) -> pd.DataFrame:
    """The sample's ``labels.csv`` (file, label, subtype, patient_key, width, height).

    ``n_images``: keep about that many images, half per label, whole patients only (the
    first patients in file order), for quick runs."""
    df = pd.read_csv(sample_dir() / "labels.csv", dtype=str, keep_default_na=False)
    if n_images is None or n_images >= len(df):
        return df
    keep = []
    for _, part in df.groupby("label", sort=True):
        n = 0
        for _, rows in part.groupby("patient_key", sort=False):
            if n >= n_images // 2:
                break
            keep.append(rows)
            n += len(rows)
    return pd.concat(keep).sort_values("file").reset_index(drop=True)


def _uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=["cxr_cad demo", *parts])


def _dataset(pixels8: np.ndarray, jpeg_bytes: bytes, row: Mapping[Any, Any], index: int) -> Any:
    """One CR data set for the sample image ``row`` (pixels8: uint8 2-D)."""
    syntax, bits, photometric = VARIANTS[index % len(VARIANTS)]
    ds = Dataset()
    ds.SOPClassUID = _CR_STORAGE
    ds.SOPInstanceUID = _uid("sop", row["file"])
    ds.StudyInstanceUID = _uid("study", row["file"])
    ds.SeriesInstanceUID = _uid("series", row["file"])
    ds.PatientID = row["patient_key"]
    ds.PatientName = ""
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "AP"
    ds.StudyDescription = "cxr_cad demo (Kermany sample, CC BY 4.0)"
    ds.Manufacturer = "cxr_cad demo"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(v) for v in pixels8.shape)
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    stored = (pixels8.astype(np.uint32) * 4095 + 127) // 255 if bits == 12 else pixels8.astype(np.uint32)
    if photometric == "MONOCHROME1":
        stored = (2**bits - 1) - stored
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if syntax == "jpeg_baseline":
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([jpeg_bytes])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        return ds
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = stored.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    if syntax == "rle":
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    elif syntax == "jpeg2000_lossless":
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    return ds


def write_demo_dicoms(out_dir: str | os.PathLike, table: pd.DataFrame) -> Path:
    """Write the sample images of ``table`` as DICOM files into ``out_dir/dicom/`` and the
    labels (patient_id, label) into ``out_dir/labels.csv``. Files whose bytes would not
    change are left alone (so a rerun keeps the ingest step up to date).

    Returns the DICOM folder. Raises OutputError when it cannot be written.
    """
    out = Path(out_dir)
    dicom_dir = out / "dicom"
    try:
        dicom_dir.mkdir(parents=True, exist_ok=True)
        src = sample_dir()
        for i, row in enumerate(table.to_dict("records")):
            raw = (src / row["file"]).read_bytes()
            with Image.open(io.BytesIO(raw)) as im:
                pixels = np.asarray(im.convert("L"), dtype=np.uint8)
            ds = _dataset(pixels, raw, row, i)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            target = dicom_dir / row["label"] / f"{Path(row['file']).stem}.dcm"
            target.parent.mkdir(exist_ok=True)
            data = buf.getvalue()
            if not (target.is_file() and target.read_bytes() == data):
                target.write_bytes(data)
        labels = (
            table[["patient_key", "label"]]
            .drop_duplicates()
            .rename(columns={"patient_key": "patient_id"})
            .sort_values("patient_id")
        )
        text = labels.to_csv(index=False, lineterminator="\n")
        lab = out / "labels.csv"
        if not (lab.is_file() and lab.read_text(encoding="utf-8") == text):
            lab.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(
            f"cannot write the demo DICOM folder in {out}: {exc.strerror or exc}; choose another --out"
        ) from exc
    log.info("demo: wrote %d DICOM files (%d patients) to %s", len(table), table["patient_key"].nunique(), dicom_dir)
    return dicom_dir


def demo_workflow(out_dir: str | os.PathLike, settings: DemoSettings = DemoSettings()) -> dict:
    """The (unvalidated) workflow document the demo runs on ``out_dir/dicom``."""
    out = Path(out_dir).absolute()
    s = settings
    return {
        "name": "demo",
        "description": "cxr-cad demo: bundled Kermany sample as DICOM, random-init ResNet18, held-out patients",
        "steps": ["ingest", "split", "train", "evaluate", "report"],
        "data": {
            "train": str(out / "dicom"),
            "train_labels": str(out / "labels.csv"),
            "label_key": "patient_id",
            "classes": ["NORMAL", "PNEUMONIA"],
            "positive_class": "PNEUMONIA",
        },
        "ingest": {"modalities": ["CR", "DX", "DR"], "workers": 1},
        "split": {"test_fraction": s.test_fraction, "seed": s.seed},
        "model": {"init": "none", "image_size": s.image_size},
        "train": {
            "epochs": s.epochs,
            "batch_size": s.batch_size,
            "seed": s.seed,
            "optim": {"name": "adamw", "lr": s.lr, "weight_decay": 0.0001},
            "schedule": {"name": "cosine"},
            "early_stopping": {"patience": 0},
            "data": {"val_fraction": s.val_fraction},
            "threshold": {"method": "youden"},
            "runtime": {"device": "cpu", "precision": "fp32", "workers": s.workers},
            **({"force": True} if s.force else {}),
        },
        "evaluate": {"batch_size": 32, "workers": s.workers, "device": "cpu"},
        "cohort": {  # shown in the report's population section (cxr_cad/data/ATTRIBUTION.md)
            "source": "Kermany et al. 2018 (Mendeley Data doi:10.17632/rscbjbr9sj.2, CC BY 4.0), 100-image "
            "sample bundled with cxr_cad, written out as DICOM",
            "site": "Guangzhou Women and Children's Medical Center, China",
            "design": "retrospective: images from a public data set; a pipeline demonstration, not a model to "
            "use: its decision threshold is illustrative (chosen on a validation split of about 20 images)",
            "population": "paediatric patients (children), frontal chest radiographs",
            "eligibility": "random whole patients with at most 3 images from the data set's training split",
            "reference_standard": "the data set's labels (graded by expert physicians in the original study); "
            "taken as given",
        },
        "report": {"pdf": s.pdf, "bootstrap": s.bootstrap, "alpha": 0.05},
    }


def threshold_note(run_dir: str | os.PathLike) -> str | None:
    """One plain line on the demo model's threshold (what it was chosen on, and that it is
    illustrative), from the train step's ``result.json``; None when there is none."""
    path = Path(run_dir) / "train" / "result.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    detail = result.get("threshold_detail") or {}
    return (
        f"note: the model's threshold {result.get('threshold', float('nan')):.4f} ({result.get('threshold_method')}) "
        f"was chosen on {detail.get('n', '?')} validation images ({detail.get('n_positive', '?')} positive, "
        f"{detail.get('n_negative', '?')} negative) at epoch {result.get('best_epoch')}: it is illustrative, "
        "not an operating point (a reliable threshold needs at least 20 images per class)"
    )


def run_demo(out_dir: str | os.PathLike, settings: DemoSettings = DemoSettings(), *, on_step: Callable | None = None):
    """Write the DICOM folder, then run :func:`demo_workflow` in ``out_dir/run``.

    Returns the :class:`~cxr_cad.workflow.pipeline.WorkflowResult`.
    """
    out = Path(out_dir).absolute()
    write_demo_dicoms(out, sample_table(settings.n_images))
    wf = validate_workflow(demo_workflow(out, settings), base_dir=out, source="cxr-cad demo")
    return run_workflow(wf, out / "run", on_step=on_step)

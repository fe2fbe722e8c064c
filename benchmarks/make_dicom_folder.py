"""Make a benchmark folder of realistic CR DICOM files from the Kermany JPEGs.

Each source JPEG (``../shared/data/kermany-dev``, CC BY 4.0, see its README) is upscaled
so its longer side is ``--size`` pixels (default 2000, the size of a real CR plate),
turned into 12-bit values (0..4095, with a little noise so lossless codecs work as hard
as on real data) and wrapped as a CR Image Storage DICOM file. The files cycle through
four transfer syntaxes (Explicit VR Little Endian uncompressed, JPEG 2000 lossless, RLE
lossless, JPEG-LS lossless) and alternate MONOCHROME2 / MONOCHROME1 (inverted values).

``--unique`` distinct files are encoded (encoding is slow); the folder is then filled up
to ``--n`` files with hard links (``copy-XXXXX.dcm``) to them, so 10,000 inputs cost the
disk space of ``--unique``. Decoding work per file is the same; only the page cache makes
repeated reads cheaper than a cold PACS export.

    python benchmarks/make_dicom_folder.py OUT_DIR --n 200 --unique 40
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

CRImageStorage = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
KERMANY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kermany-dev"
SYNTAXES = (ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, JPEGLSLossless)
#: ``--syntaxes`` names; ``jpeg_baseline`` stores the top 8 of the 12 bits (8-bit JPEG, quality 95).
SYNTAX_NAMES = {
    "explicit": ExplicitVRLittleEndian,
    "j2k": JPEG2000Lossless,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "jpeg_baseline": JPEGBaseline8Bit,
}


def to_jpeg_baseline(ds: Dataset) -> None:
    """Re-encode ``ds``'s 12-bit pixels as 8-bit JPEG baseline (Pillow, quality 95), in place."""
    import io

    from pydicom.encaps import encapsulate

    pixels = (np.frombuffer(ds.PixelData, dtype="<u2").reshape(ds.Rows, ds.Columns) >> 4).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"


def to_12bit(jpeg: Path, size: int, rng: np.random.Generator) -> np.ndarray:
    """The JPEG upscaled (longer side ``size``) as uint16 values in 0..4095."""
    img = Image.open(jpeg).convert("L")
    scale = size / max(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) * (4095.0 / 255.0)
    arr += rng.normal(0.0, 4.0, arr.shape).astype(np.float32)
    return np.clip(np.rint(arr), 0, 4095).astype(np.uint16)


def make_dataset(pixels: np.ndarray, *, monochrome1: bool, k: int) -> Dataset:
    """A CR Image Storage dataset (uncompressed) holding ``pixels`` (12 bits stored)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = CRImageStorage
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = f"BENCH{k:05d}"
    ds.Modality = "CR"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.PixelData = (4095 - pixels if monochrome1 else pixels).astype("<u2").tobytes()
    return ds


def make_folder(
    out: Path,
    n: int,
    unique: int,
    size: int = 2000,
    source: Path = KERMANY,
    seed: int = 0,
    syntaxes: tuple = SYNTAXES,
) -> list[Path]:
    """Write ``unique`` encoded files (cycling through ``syntaxes``) and hard links up to ``n`` files under ``out``."""
    with open(source / "manifest.csv", newline="", encoding="utf-8") as fh:
        jpegs = [source / row["path"] for row in csv.DictReader(fh)]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(jpegs), size=min(unique, n), replace=False)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k, j in enumerate(picks):
        syntax = syntaxes[k % len(syntaxes)]
        ds = make_dataset(to_12bit(jpegs[j], size, rng), monochrome1=bool((k // len(syntaxes)) % 2), k=k)
        if syntax == JPEGBaseline8Bit:
            to_jpeg_baseline(ds)
        elif syntax != ExplicitVRLittleEndian:
            ds.compress(syntax)
        path = out / f"img-{k:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        print(f"\r{k + 1}/{len(picks)} encoded", end="", file=sys.stderr)
    print(file=sys.stderr)
    for k in range(len(files), n):
        link = out / f"copy-{k:05d}.dcm"
        if not link.exists():
            os.link(files[k % len(picks)], link)
        files.append(link)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=200, help="number of files in the folder (default 200)")
    ap.add_argument("--unique", type=int, default=40, help="distinct encoded files (default 40)")
    ap.add_argument("--size", type=int, default=2000, help="longer side in pixels (default 2000)")
    ap.add_argument("--source", type=Path, default=KERMANY, help="kermany-dev folder (JPEGs + manifest.csv)")
    ap.add_argument(
        "--syntaxes",
        default="explicit,j2k,rle,jpegls",
        help=f"comma-separated transfer syntaxes to cycle through, of {', '.join(SYNTAX_NAMES)} "
        "(default explicit,j2k,rle,jpegls)",
    )
    args = ap.parse_args(argv)
    unknown = [name for name in args.syntaxes.split(",") if name not in SYNTAX_NAMES]
    if unknown:
        ap.error(f"unknown syntax(es) {unknown}; choose from {', '.join(SYNTAX_NAMES)}")
    syntaxes = tuple(SYNTAX_NAMES[name] for name in args.syntaxes.split(","))
    t0 = time.perf_counter()
    files = make_folder(args.out, args.n, args.unique, args.size, args.source, syntaxes=syntaxes)
    print(f"{len(files)} files in {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

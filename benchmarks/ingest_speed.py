"""Time `cxr-cad ingest` (cxr_cad.manifest.scan.scan_sources) on N generated DICOM files.

    python benchmarks/ingest_speed.py --n 1000 --size 512 --workers 1,2

Writes N synthetic single-frame CR files (uncompressed, 16-bit, half of them RLE-compressed
with --rle) plus a few junk files into a temporary folder, then times header-only
scanning and, with --verify-pixels, full decoding, for each worker count. Prints a table
(files/s). The first run per worker count warms the OS file cache; --repeat takes the best.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cxr_cad.core.progress import set_enabled  # noqa: E402
from cxr_cad.manifest.scan import scan_sources  # noqa: E402


def write_cohort(root: Path, n: int, size: int, rle: bool, seed: int = 0) -> None:
    """N CR DICOMs (12-bit noise + gradient, size x size) over n // 4 patients."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 3000, size, dtype=np.float32)[None, :] * np.ones((size, 1), np.float32)
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PatientID = f"BENCH{i // 4:05d}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "CR", "PA", "CHEST"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (base + rng.integers(0, 1000, (size, size))).astype(np.uint16).tobytes()
        if rle and i % 2:
            ds.compress(RLELossless)
        folder = root / f"p{i // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"img{i:06d}.dcm", enforce_file_format=True)
    (root / "README.txt").write_text("not an image\n")
    (root / "empty.dcm").write_bytes(b"")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="DICOM files to generate (default 1000)")
    ap.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    ap.add_argument("--rle", action="store_true", help="RLE-compress every second file")
    ap.add_argument("--verify-pixels", action="store_true", help="also time full decoding")
    ap.add_argument("--repeat", type=int, default=2, help="runs per setting; the best is reported (default 2)")
    ap.add_argument("--dir", help="folder to generate into (default: a temporary folder, removed afterwards)")
    args = ap.parse_args(argv)
    set_enabled(False)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "cohort"
        t0 = time.perf_counter()
        write_cohort(root, args.n, args.size, args.rle)
        gen = time.perf_counter() - t0
        mb = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e6
        print(
            f"generated {args.n} DICOMs ({args.size}x{args.size}, {mb:.0f} MB, rle={args.rle}) in {gen:.1f} s; "
            f"python {platform.python_version()}, {os.cpu_count()} CPUs"
        )
        print(f"{'mode':<14}{'workers':>8}{'files':>8}{'accepted':>10}{'seconds':>10}{'files/s':>10}")
        modes = ["header-only"] + (["verify-pixels"] if args.verify_pixels else [])
        for mode in modes:
            for w in workers:
                best, result = float("inf"), None
                for _ in range(max(1, args.repeat)):
                    t = time.perf_counter()
                    result = scan_sources([root], workers=w, verify_pixels=mode == "verify-pixels")
                    best = min(best, time.perf_counter() - t)
                assert result.n_files == args.n + 2 and len(result.accepted) == args.n
                print(
                    f"{mode:<14}{w:>8}{result.n_files:>8}{len(result.accepted):>10}{best:>10.2f}"
                    f"{result.n_files / best:>10.0f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())

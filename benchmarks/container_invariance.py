"""Same film, same score: every kermany-dev image scored as its JPEG and as a 12-bit CR DICOM.

Each JPEG's 8-bit values ``x`` are stored as ``16 * x + 8`` (12 bits stored, a range that does
not span the bit depth), cycling through the containers of the issue's hold-out: explicit and
implicit VR little endian, RLE, JPEG 2000 lossless, MONOCHROME1 (every 4th), and every 6th with
Rescale Slope/Intercept plus a window covering the full range. Both sets are scored with one
bundle; the script prints the largest probability difference and how many exceed 0.01.

    python benchmarks/container_invariance.py --model runs/gen/runs/new/model.pt

Needs ../shared (a benchmark, not a test). The DICOM folder is cached under ``--work``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SYNTAXES = ("explicit", "implicit", "rle", "j2k")


def write_dicoms(jpegs: list[Path], where: Path) -> list[Path]:
    from tests.factories.dicom import write_dicom

    where.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(jpegs):
        dst = where / f"{i:05d}.dcm"
        out.append(dst)
        if dst.exists():
            continue
        v = np.asarray(Image.open(src).convert("L")).astype(np.uint16) * 16 + 8
        kw: dict = {"bits_stored": 12, "transfer_syntax": SYNTAXES[i % len(SYNTAXES)], "patient_id": f"B{i:05d}"}
        if i % 4 == 3:
            v, kw["photometric"] = 4095 - v, "MONOCHROME1"
        if i % 6 == 5:  # modality values 0.5 * stored - 1024; the window covers all of them
            kw["rescale"], kw["window"] = (0.5, -1024.0), (0.5 * 2048 - 1024.0, 0.5 * 4096)
        write_dicom(dst, v, **kw)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="bundle to score with")
    ap.add_argument("--dev", type=Path, default=ROOT.parent / "shared" / "data" / "kermany-dev")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "container_invariance")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    from cxr_cad.model import load_bundle
    from cxr_cad.training.loop import predict_probabilities

    table = pd.read_csv(args.dev / "manifest.csv")
    jpegs = [args.dev / p for p in table["path"]]
    t0 = time.perf_counter()
    dicoms = write_dicoms(jpegs, args.work / "dicom12")
    print(f"{len(dicoms)} DICOMs ready in {time.perf_counter() - t0:.0f} s", flush=True)
    bundle = load_bundle(args.model)
    p_jpeg = predict_probabilities(bundle, pd.DataFrame({"path": [str(p) for p in jpegs]}), workers=args.workers)
    p_dcm = predict_probabilities(bundle, pd.DataFrame({"path": [str(p) for p in dicoms]}), workers=args.workers)
    diff = np.abs(p_jpeg - p_dcm)
    kinds = pd.Series(
        [
            ("mono1 " if i % 4 == 3 else "") + ("rescale+window " if i % 6 == 5 else "") + SYNTAXES[i % 4]
            for i in range(len(diff))
        ]
    )
    print(f"bundle {args.model} (transform spec intensity: {bundle.transform_spec.intensity})")
    print(
        f"{len(diff)} images: max |JPEG - DICOM| = {diff.max():.4f}, mean {diff.mean():.5f}, "
        f"{int((diff > 0.01).sum())} above 0.01, {int((diff > 0.02).sum())} above 0.02"
    )
    print(pd.DataFrame({"kind": kinds, "diff": diff}).groupby("kind")["diff"].agg(["count", "max"]).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

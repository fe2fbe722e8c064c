"""Same film, same score: every kermany-dev image scored as its JPEG and as a 12-bit CR DICOM.

Each JPEG's 8-bit values ``x`` are stored as ``16 * x + 8`` (12 bits stored, a range that does
not span the bit depth), cycling through the containers of the issue's hold-out: explicit and
implicit VR little endian, RLE, JPEG 2000 lossless, MONOCHROME1 (every 4th), and every 6th with
Rescale Slope/Intercept plus a window covering the full range. Both sets are scored with one
bundle; the script prints the largest probability difference and how many exceed 0.01.

    python benchmarks/container_invariance.py --model runs/gen/runs/new/model.pt [--subset 100]

Films are read at the working resolution of ``cxr_cad.io.working`` (shorter side 2-4x the model
input): a JPEG by DCT scaling, a JPEG 2000 DICOM by resolution levels, the others by block means.

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


def write_dicoms(jpegs: list[Path], where: Path, numbers: list[int] | None = None) -> list[Path]:
    """One DICOM per JPEG; ``numbers`` (the films' rows in the manifest) pick name and container."""
    from tests.factories.dicom import write_dicom

    where.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in zip(numbers or range(len(jpegs)), jpegs):
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
    ap.add_argument(
        "--subset",
        type=int,
        default=0,
        help="score only the N films with the longest shorter side (the ones the working resolution "
        "shrinks most); 0 = all",
    )
    ap.add_argument(
        "--full-resolution-too",
        action="store_true",
        help="also score the JPEGs decoded at full resolution (the reading before issue 19) and "
        "report how far the working resolution moved the scores",
    )
    args = ap.parse_args(argv)
    from cxr_cad.io.working import working_level
    from cxr_cad.model import load_bundle
    from cxr_cad.training.loop import predict_probabilities

    table = pd.read_csv(args.dev / "manifest.csv")
    if args.subset:
        shorter = table[["width", "height"]].min(axis=1)
        table = table.loc[shorter.sort_values(ascending=False, kind="stable").index[: args.subset]].sort_index()
    numbers = [int(i) for i in table.index]
    jpegs = [args.dev / p for p in table["path"]]
    t0 = time.perf_counter()
    dicoms = write_dicoms(jpegs, args.work / "dicom12", numbers)
    print(f"{len(dicoms)} DICOMs ready in {time.perf_counter() - t0:.0f} s", flush=True)
    bundle = load_bundle(args.model)
    p_jpeg = predict_probabilities(bundle, pd.DataFrame({"path": [str(p) for p in jpegs]}), workers=args.workers)
    p_dcm = predict_probabilities(bundle, pd.DataFrame({"path": [str(p) for p in dicoms]}), workers=args.workers)
    diff = np.abs(p_jpeg - p_dcm)
    kinds = pd.Series(
        [
            ("mono1 " if i % 4 == 3 else "") + ("rescale+window " if i % 6 == 5 else "") + SYNTAXES[i % 4]
            for i in numbers
        ]
    )
    size = bundle.transform_spec.image_size
    levels = [working_level(int(h), int(w), size) for h, w in zip(table["height"], table["width"])]
    print(f"bundle {args.model} (transform spec intensity: {bundle.transform_spec.intensity}, input {size} px)")
    print(
        "working resolution (cxr_cad.io.working): "
        + ", ".join(f"{n} films at 1/{2**lv}" for lv, n in sorted(pd.Series(levels).value_counts().items()))
    )
    print(
        f"{len(diff)} images: max |JPEG - DICOM| = {diff.max():.4f}, mean {diff.mean():.5f}, "
        f"{int((diff > 0.01).sum())} above 0.01, {int((diff > 0.02).sum())} above 0.02"
    )
    print(pd.DataFrame({"kind": kinds, "diff": diff}).groupby("kind")["diff"].agg(["count", "max"]).to_string())
    if args.full_resolution_too:
        import cxr_cad.io.working as working

        margin, working.WORK_MARGIN = working.WORK_MARGIN, 10**9  # every film at level 0
        try:
            p_full = predict_probabilities(
                bundle, pd.DataFrame({"path": [str(p) for p in jpegs]}), workers=args.workers
            )
        finally:
            working.WORK_MARGIN = margin
        moved = np.abs(p_jpeg - p_full)
        shrunk = np.asarray(levels) > 0
        print(
            f"working vs full resolution (JPEG): max |dp| {moved.max():.4f} over all, "
            f"{moved[shrunk].max() if shrunk.any() else 0.0:.4f} over the {int(shrunk.sum())} shrunk films, "
            f"mean {moved.mean():.5f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

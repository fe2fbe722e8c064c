"""Measure the dataset-shift warning (docs/shift.md) on real data.

Given a training run folder (``cxr-cad train`` on kermany-dev), it

1. adds a training-data summary to a copy of the run's bundle when the bundle has none
   (bundles trained before the feature), from the run's ``split.csv``;
2. scores unseen patients of the same source (rows of a second manifest, e.g.
   kermany-224-train, whose ``patient_id`` is not in the training manifest), shifted versions
   of a subset of them, and a folder of adult DICOM films;
3. prints the fraction of images flagged and the cohort verdict for each.

    python benchmarks/shift.py --run runs/kdev_run --train-manifest runs/kdev/manifest.csv \\
        --unseen-manifest runs/k224/manifest.csv --adult ../shared/data/dicom --work runs/shift_bench
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import ndimage

SHIFTS = {
    "inverted": lambda x: 255 - x,
    "blur_sigma4%": lambda x: ndimage.gaussian_filter(x, x.shape[1] * 0.04),
    "zoom_center40%": lambda x: x[
        int(x.shape[0] * 0.3) : int(x.shape[0] * 0.7), int(x.shape[1] * 0.3) : int(x.shape[1] * 0.7)
    ],
    "gamma0.6": lambda x: 255 * (x / 255) ** 0.6,
    "contrast0.7": lambda x: 128 + 0.7 * (x - 128),
    "jpeg_q50": None,  # handled in _derive
    "down64_up": lambda x: np.asarray(
        Image.fromarray(x.astype(np.uint8)).resize((64, 64)).resize(x.shape[::-1]), np.float64
    ),
}


def _bundle_with_summary(run: Path, train_manifest: pd.DataFrame, work: Path) -> Path:
    from cxr_cad.model import load_bundle
    from cxr_cad.shift.monitor import summarise_training, summary_from_bundle

    src = run / "model.pt"
    b = load_bundle(src)
    if summary_from_bundle(b) is not None:
        return src
    split = pd.read_csv(run / "split.csv", dtype=str)
    rows = train_manifest.merge(split[["sop_instance_uid", "split"]], on="sop_instance_uid")
    t0 = time.perf_counter()
    summary = summarise_training(
        b.model,
        b.transform_spec,
        rows[rows["split"] == "train"],
        rows[rows["split"] != "train"],
        cache_dir=work / "cache",
        workers=2,
    )
    print(
        f"summary: {summary['n_train']} train + {summary['n_validation']} validation images, "
        f"{time.perf_counter() - t0:.0f} s; q99 distance {summary['quantiles']['q990']:.2f}"
    )
    d = torch.load(src, weights_only=True)
    d["extra"] = {**(d.get("extra") or {}), "shift": summary}
    out = work / "model_with_summary.pt"
    torch.save(d, out)
    return out


def _derive(paths: list[str], out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        img = np.asarray(Image.open(p).convert("L"), np.float64)
        if name == "jpeg_q50":
            buf = io.BytesIO()
            Image.fromarray(img.astype(np.uint8)).save(buf, format="JPEG", quality=50)
            (out / f"{i:04d}.jpg").write_bytes(buf.getvalue())
            continue
        Image.fromarray(np.clip(SHIFTS[name](img), 0, 255).astype(np.uint8)).save(out / f"{i:04d}.png")
    return out


def _score(bundle: Path, sources: list, out: Path) -> dict:
    from cxr_cad.inference.predict import PredictOptions, predict
    from cxr_cad.io import AcceptPolicy

    r = predict(sources, out, bundle, PredictOptions(workers=2, policy=AcceptPolicy(modalities=()), overwrite=True))
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    s = pd.to_numeric(pred["shift_score"], errors="coerce")
    return {
        "n": int(len(pred)),
        "flagged": float((s > 1).mean()),
        "median_score": float(s.median()),
        "cohort_flagged": r.shift["flagged"],
        "scores": s.round(2).tolist() if len(s) <= 10 else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--train-manifest", required=True, type=Path)
    p.add_argument("--unseen-manifest", required=True, type=Path)
    p.add_argument("--adult", type=Path, default=None, help="folder of adult DICOM films")
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--n-unseen", type=int, default=1000, help="unseen images scored (seeded sample)")
    p.add_argument("--n-shifted", type=int, default=200, help="unseen images per shifted version")
    args = p.parse_args(argv)
    from cxr_cad.manifest import read_manifest

    args.work.mkdir(parents=True, exist_ok=True)
    train = read_manifest(args.train_manifest, check_files=False)
    bundle = _bundle_with_summary(args.run, train, args.work)
    other = read_manifest(args.unseen_manifest, check_files=False)
    unseen = other[~other["patient_id"].isin(set(train["patient_id"]))]
    print(f"unseen: {len(unseen)} images of {unseen['patient_id'].nunique()} patients not in the training manifest")
    unseen = unseen.sample(n=min(args.n_unseen, len(unseen)), random_state=0)
    paths = [str(x) for x in unseen["path"]]
    results = {"unseen patients (same source)": _score(bundle, paths, args.work / "unseen")}
    for name in SHIFTS:
        src = _derive(paths[: args.n_shifted], args.work / "shifted" / name, name)
        results[f"unseen, {name}"] = _score(bundle, [src], args.work / "scores" / name)
    if args.adult:
        results["adult DICOM films"] = _score(bundle, [args.adult], args.work / "adult")
    print(f"{'cohort':36s} {'n':>5s} {'flagged':>8s} {'median score':>13s} cohort verdict")
    for k, v in results.items():
        print(
            f"{k:36s} {v['n']:5d} {v['flagged']:8.1%} {v['median_score']:13.2f} "
            f"{'FLAGGED' if v['cohort_flagged'] else 'not flagged'}"
            f"{'  ' + str(v['scores']) if v['scores'] else ''}"
        )
    (args.work / "shift_results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

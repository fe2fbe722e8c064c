"""Generalisation benchmark: train on kermany-dev, test on unseen patients and simulated shift.

Trains (or reuses the cached run folders of) several recipes on ../shared/data/kermany-dev and
scores each on

* ``unseen``: the patients of ../shared/data/kermany-224-train who are not in kermany-dev
  (matched by ``patient_key`` of both shared manifests; no patient in both);
* ``test-a``: ../shared/data/kermany-test-a, half of the study's own test split (external test
  only; docs/generalisation.md);
* simulated acquisition shifts of a seeded subsample of those images: ``gamma0.6``,
  ``gamma1.6`` (pixel gamma), ``contrast0.6`` (contrast x0.6 about the mean),
  ``dicom12`` (12-bit CR DICOM, stored = 16 x value + 8, uncompressed, no window),
  ``lowres`` (the 224 px image down to 112 px and back up: the cohort's images are
  already 224 px, so "down to 512 and up" becomes half resolution and up), ``jpeg50``
  (re-encoded at JPEG quality 50).

It prints one table: AUC with DeLong 95% CI, sensitivity / specificity / balanced accuracy at
the bundle's stored threshold, and training time. Recipes:

* ``old-readme``: the README's former recipe (``--init none --epochs 4 --lr 0.01 --image-size
  224``: SGD, cosine, affine augmentation, no per-image intensity scaling);
* ``old-defaults``: ``--init none`` with the former defaults (SGD lr 1e-3, cosine, 20 epochs);
* ``monai-tutorial``: per-image min-max ``ScaleIntensity`` (percentiles 0/100), Adam 1e-4,
  6 epochs, light affine augmentation + flips, fp32, no class weighting, threshold 0.5;
* ``new``: ``cxr-cad train --init none`` with nothing else (today's recipe).

``--variant NAME='{"optim.lr": 1e-4}'`` adds a recipe: the new one with dotted overrides.

    python benchmarks/generalisation.py --subsample 1000            # quick
    python benchmarks/generalisation.py                               # whole unseen cohort

Needs ../shared (a benchmark, not a test). Run folders are cached under ``--work``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

OLD_AUGMENT = {"rotate_deg": 10.0, "translate_frac": 0.05, "scale": [0.9, 1.1], "affine_prob": 1.0}
RECIPES: dict[str, dict] = {
    "old-readme": {
        "epochs": 4,
        "model": {"init": "none", "intensity": "none"},
        "optim": {"name": "sgd", "lr": 0.01, "weight_decay": 1e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0},
        "augment": OLD_AUGMENT,
    },
    "old-defaults": {
        "epochs": 20,
        "model": {"init": "none", "intensity": "none"},
        "optim": {"name": "sgd", "lr": 1e-3, "weight_decay": 1e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0},
        "augment": OLD_AUGMENT,
    },
    "monai-tutorial": {
        "epochs": 6,
        "model": {"init": "none", "intensity": "percentile", "intensity_percentiles": [0.0, 100.0]},
        "optim": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.0},
        "schedule": {"name": "constant", "warmup_epochs": 0},
        "early_stopping": {"patience": 0},
        "data": {"imbalance": "none"},
        "threshold": {"method": "fixed", "value": 0.5},
        "runtime": {"precision": "fp32"},
        "augment": {"rotate_deg": 15.0, "translate_frac": 0.0, "scale": [0.9, 1.1], "affine_prob": 0.5, "hflip": True},
    },
    "new": {"model": {"init": "none"}},
}
SHIFTS = ("gamma0.6", "gamma1.6", "contrast0.6", "dicom12", "lowres", "jpeg50")


def ingest(src: Path, out: Path) -> pd.DataFrame:
    """``cxr-cad ingest`` of a class-folder tree (cached); returns the manifest, absolute paths."""
    from cxr_cad.cli import main
    from cxr_cad.manifest import read_manifest

    if not (out / "manifest.csv").exists():
        rc = main(
            [
                "-q",
                "ingest",
                str(src),
                "--labels-from-folders",
                "--classes",
                "NORMAL,PNEUMONIA",
                "--positive-class",
                "PNEUMONIA",
                "--out",
                str(out),
            ]
        )
        if rc:
            raise SystemExit(f"ingest of {src} failed ({rc})")
    return read_manifest(out / "manifest.csv", require_labels=True)


def unseen_cohort(dev_src: Path, pool_src: Path, pool: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``pool`` whose patient (shared manifests' ``patient_key``) is not in kermany-dev."""
    dev_keys = set(pd.read_csv(dev_src / "manifest.csv")["patient_key"].astype(str))
    pool_keys = pd.read_csv(pool_src / "manifest.csv")
    key_of = {str((pool_src / p).resolve()): k for p, k in zip(pool_keys["path"], pool_keys["patient_key"].astype(str))}
    keys = pool["path"].map(lambda p: key_of.get(str(Path(p).resolve())))
    if keys.isna().any():
        raise SystemExit(f"{int(keys.isna().sum())} pool images are not in {pool_src / 'manifest.csv'}")
    return pool[~keys.isin(dev_keys)].reset_index(drop=True)


def _shifted(gray: np.ndarray, shift: str) -> np.ndarray | bytes:
    x = gray.astype(np.float64) / 255.0
    if shift.startswith("gamma"):
        return np.clip(np.rint(255 * x ** float(shift[5:])), 0, 255).astype(np.uint8)
    if shift.startswith("contrast"):
        y = x.mean() + float(shift[8:]) * (x - x.mean())
        return np.clip(np.rint(255 * y), 0, 255).astype(np.uint8)
    if shift == "lowres":
        img = Image.fromarray(gray)
        small = img.resize((img.width // 2, img.height // 2), Image.Resampling.BOX)
        return np.asarray(small.resize(img.size, Image.Resampling.BILINEAR))
    if shift == "jpeg50":
        buf = io.BytesIO()
        Image.fromarray(gray).save(buf, format="JPEG", quality=50)
        return buf.getvalue()
    raise ValueError(shift)


def make_shift(cohort: pd.DataFrame, shift: str, out: Path) -> pd.DataFrame:
    """Write the shifted copies of ``cohort``'s images under ``out/shift`` (cached)."""
    from tests.factories.dicom import write_dicom

    where = out / shift
    where.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, src in enumerate(cohort["path"]):
        gray = np.asarray(Image.open(src).convert("L"))
        if shift == "dicom12":
            dst = where / f"{i:05d}.dcm"
            if not dst.exists():
                write_dicom(
                    dst,
                    gray.astype(np.uint16) * 16 + 8,
                    bits_stored=12,
                    transfer_syntax="explicit",
                    patient_id=f"S{i:05d}",
                )
        else:
            dst = where / f"{i:05d}.{'jpeg' if shift == 'jpeg50' else 'png'}"
            if not dst.exists():
                res = _shifted(gray, shift)
                if isinstance(res, bytes):
                    dst.write_bytes(res)
                else:
                    Image.fromarray(res).save(dst)
        paths.append(str(dst))
    return pd.DataFrame({"path": paths, "label": cohort["label"].to_numpy()})


def train(name: str, recipe: dict, dev: pd.DataFrame, work: Path, workers: int) -> tuple[Path, float]:
    """Train one recipe into ``work/runs/name`` (a finished run is reused); (bundle, minutes)."""
    from cxr_cad.config import TrainConfig, apply_overrides
    from cxr_cad.training.trainer import train_model

    d = apply_overrides(recipe, {"data.cache_dir": str(work / "cache"), "runtime.workers": workers})
    cfg = TrainConfig.from_dict(d, source=name)
    run = work / "runs" / name
    result = train_model(dev, run, cfg)
    # training time = the epochs' wall time in train_log.csv (training + validation; summed, so a
    # run resumed after an interruption counts only its epochs once)
    return result.bundle_path, float(result.history["seconds"].sum()) / 60


def score(bundle_path: Path, cohort: pd.DataFrame, work: Path, workers: int, *, tta: bool = False) -> dict:
    """AUC + DeLong CI and the metrics at the stored threshold; ``tta`` wraps the network to
    average in the horizontally flipped image (same stored threshold)."""
    from cxr_cad.metrics import binary_metrics, delong_auc_ci
    from cxr_cad.model import ProbabilityAverage, load_bundle
    from cxr_cad.training.loop import predict_probabilities

    bundle = load_bundle(bundle_path)
    if tta:
        bundle.model = ProbabilityAverage([bundle.model], hflip=True).eval()
    p = predict_probabilities(bundle, cohort, workers=workers, cache_dir=work / "cache")
    y = (cohort["label"].astype(str) == bundle.positive_class).to_numpy().astype(int)
    ci = delong_auc_ci(y, p)
    m = binary_metrics(y, p, threshold=bundle.threshold)
    return {
        "n": int(len(y)),
        "auc": ci.auc,
        "low": ci.low,
        "high": ci.high,
        "threshold": bundle.threshold,
        "sens": m["sensitivity"]["value"],
        "spec": m["specificity"]["value"],
        "bal_acc": m["balanced_accuracy"],
        "probabilities": p.tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dev", type=Path, default=SHARED / "kermany-dev")
    ap.add_argument("--pool", type=Path, default=SHARED / "kermany-224-train")
    ap.add_argument("--test", type=Path, default=SHARED / "kermany-test-a", help="external test (never trained on)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "generalisation")
    ap.add_argument("--subsample", type=int, default=0, help="score this many unseen images (0 = all)")
    ap.add_argument("--shift-subsample", type=int, default=1000, help="images per simulated shift")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="extra recipe: the new one with dotted-key overrides, e.g. lr1e4='{\"optim.lr\": 1e-4}'",
    )
    ap.add_argument("--no-shifts", action="store_true", help="score the unseen cohort only")
    ap.add_argument("--tta", action="store_true", help="also score every recipe with horizontal-flip TTA")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="train every recipe at this input size instead of its own (a cheaper comparison)",
    )
    args = ap.parse_args(argv)
    from cxr_cad.config import apply_overrides

    recipes = {k: RECIPES[k] for k in args.recipes.split(",") if k}
    for v in args.variant:
        name, _, js = v.partition("=")
        recipes[name] = apply_overrides(RECIPES["new"], json.loads(js))
    if args.image_size:
        recipes = {
            f"{k}@{args.image_size}": apply_overrides(r, {"model.image_size": args.image_size})
            for k, r in recipes.items()
        }
    work = args.work.resolve()
    dev = ingest(args.dev, work / "data" / "dev")
    unseen = unseen_cohort(args.dev, args.pool, ingest(args.pool, work / "data" / "pool"))
    rng = np.random.default_rng(0)
    if args.subsample and args.subsample < len(unseen):
        unseen = unseen.iloc[np.sort(rng.choice(len(unseen), args.subsample, replace=False))].reset_index(drop=True)
    # the study's own test split (half of it): the external test the unseen-patients proxy misses
    cohorts = {"test-a": ingest(args.test, work / "data" / "testa"), "unseen": unseen}
    if not args.no_shifts:
        k = min(args.shift_subsample, len(unseen))
        base = unseen.iloc[np.sort(np.random.default_rng(1).choice(len(unseen), k, replace=False))]
        for shift in SHIFTS:
            cohorts[shift] = make_shift(base.reset_index(drop=True), shift, work / "shifts" / f"n{k}")
    print(
        f"kermany-dev {len(dev)} images; unseen cohort {len(unseen)} images "
        f"({int((unseen['label'] == 'PNEUMONIA').sum())} PNEUMONIA)",
        flush=True,
    )
    rows, results = [], {}
    for name, recipe in recipes.items():
        bundle, minutes = train(name, recipe, dev, work, args.workers)
        for (cname, cohort), tta in [(c, t) for t in ([False, True] if args.tta else [False]) for c in cohorts.items()]:
            r = score(bundle, cohort, work, args.workers, tta=tta)
            results[f"{name}{'+hflip' if tta else ''}/{cname}"] = r
            rows.append(
                f"| {name}{' + hflip TTA' if tta else ''} | {cname} | {r['n']} | {r['auc']:.3f} ({r['low']:.3f}-{r['high']:.3f}) | "
                f"{r['threshold']:.3f} | {100 * r['sens']:.1f} | {100 * r['spec']:.1f} | "
                f"{100 * r['bal_acc']:.1f} | {minutes:.1f} |"
            )
            print(rows[-1], flush=True)
    (work / f"results-{'-'.join(recipes)}.json").write_text(json.dumps(results))
    print("\n| recipe | cohort | n | AUC (DeLong 95% CI) | threshold | sens % | spec % | bal. acc % | train min |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

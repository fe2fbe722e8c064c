"""One trained bundle on the external test split and on simulated shifts of it, in one table.

``benchmarks/generalisation.py`` trains recipes on kermany-dev and shifts *unseen training-split*
images; a model trained on the whole training split (kermany-224-train) has no unseen images
of that split left, so this script takes any finished run folder and scores

* ``test-a``: ../shared/data/kermany-test-a (half of the study's own test split; external test
  only: never used here to choose anything);
* the same images under the simulated acquisition shifts of generalisation.py (gamma 0.6 / 1.6,
  contrast x0.6, 12-bit DICOM, half resolution, JPEG quality 50);

at thresholds chosen on the run's own validation predictions (``val_predictions.csv``) by each
policy: the bundle's stored one, Youden's J, sensitivity >= 0.90, sensitivity >= 0.95 (the default
since 2026-12-07) and the midpoint. Nothing is chosen on test-a. ``--json`` also keeps every image's
probability, so other policies can be compared afterwards.

    python benchmarks/external_test.py --run /work/runs/t224 --work /work/runs/ext
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _generalisation():
    spec = importlib.util.spec_from_file_location("generalisation", ROOT / "benchmarks" / "generalisation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _policies(run: Path) -> dict[str, float]:
    """Threshold per policy, chosen on the run's validation predictions only."""
    from cxr_cad.config import ThresholdConfig
    from cxr_cad.model import load_bundle
    from cxr_cad.training.threshold import choose_threshold

    val = pd.read_csv(run / "val_predictions.csv")
    y, p = val["y_true"].to_numpy(), val["probability"].to_numpy()
    out = {"stored": float(load_bundle(run / "model.pt").threshold)}
    for name, cfg in (
        ("youden", ThresholdConfig(method="youden")),
        ("sens0.90", ThresholdConfig(method="sensitivity", target_sensitivity=0.9)),
        ("sens0.95", ThresholdConfig(method="sensitivity", target_sensitivity=0.95)),
        ("midpoint", ThresholdConfig(method="midpoint")),
    ):
        out[name] = float(choose_threshold(y, p, cfg)[0])
    return out


def _at(y: np.ndarray, p: np.ndarray, thr: float) -> tuple[float, float, float, float]:
    """Sensitivity, specificity, balanced accuracy and accuracy at ``thr``."""
    pred = p >= thr
    sens = float((pred & (y == 1)).sum() / max((y == 1).sum(), 1))
    spec = float((~pred & (y == 0)).sum() / max((y == 0).sum(), 1))
    return sens, spec, (sens + spec) / 2, float((pred == (y == 1)).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished `cxr-cad train` run folder")
    ap.add_argument("--test", type=Path, default=ROOT.parent / "shared" / "data" / "kermany-test-a")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-shifts", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from cxr_cad.metrics import delong_auc_ci
    from cxr_cad.model import load_bundle
    from cxr_cad.training.loop import predict_probabilities

    gen = _generalisation()
    args.work.mkdir(parents=True, exist_ok=True)
    test = gen.ingest(args.test, args.work / "test-a")
    cohorts = {"test-a": test}
    if not args.no_shifts:
        for shift in gen.SHIFTS:
            cohorts[shift] = gen.make_shift(test, shift, args.work / "shifts")
    thresholds = _policies(args.run)
    bundle = load_bundle(args.run / "model.pt")
    print(f"run {args.run} (bundle sha256 {bundle.sha256[:12]}); {platform.processor() or platform.machine()}")
    print(
        "thresholds chosen on the run's validation split: " + ", ".join(f"{k} {v:.4f}" for k, v in thresholds.items())
    )
    header = "| cohort | n | AUC (DeLong 95% CI) | " + " | ".join(f"{k} sens/spec/BA/acc %" for k in thresholds) + " |"
    print(header)
    print("|" + "---|" * (3 + len(thresholds)))
    results = {}
    for name, cohort in cohorts.items():
        p = predict_probabilities(bundle, cohort, workers=args.workers, cache_dir=args.work / "cache")
        y = (cohort["label"].astype(str) == bundle.positive_class).to_numpy().astype(int)
        ci = delong_auc_ci(y, p)
        cells = []
        row = {"n": int(len(y)), "auc": ci.auc, "low": ci.low, "high": ci.high}
        if args.json:  # per image too, so other threshold policies can be compared afterwards
            row["y_true"], row["probability"] = y.tolist(), [float(v) for v in p]
        for k, thr in thresholds.items():
            se, sp, ba, acc = _at(y, p, thr)
            row[k] = {"threshold": thr, "sens": se, "spec": sp, "bal_acc": ba, "accuracy": acc}
            cells.append(f"{100 * se:.1f} / {100 * sp:.1f} / **{100 * ba:.1f}** / {100 * acc:.1f}")
        results[name] = row
        print(f"| {name} | {len(y)} | {ci.auc:.3f} ({ci.low:.3f}-{ci.high:.3f}) | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"thresholds": thresholds, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Site-adaptation learning curve and threshold-policy transfer (docs/adaptation.md).

The parent bundle scores the external test manifest once (raw probabilities and penultimate
features, cached in ``--cache``); then, for each method (threshold, recalibrate, head) and
each number of labelled site images (25, 50, 100, 200; patient-grouped, stratified, 5 seeded
draws), the method learns from the drawn site images and is evaluated on the remaining
images of the manifest (other patients only): AUC with its DeLong CI, sensitivity,
specificity and balanced accuracy at the child's threshold; mean and range over the draws,
next to the parent at its stored threshold on the same images.

``--policies``: the threshold policies (youden, sensitivity 0.90/0.95, calibrated Platt and
temperature at 0.5) chosen on the parent run's validation predictions
(``val_predictions.csv`` beside the bundle, or ``--val-predictions``) and applied to the whole
test manifest, i.e. which policy's threshold transfers to a new site without any site labels.

Usage::

    .venv/bin/python benchmarks/adaptation.py --model /work/runs/base224/model.pt \\
        --manifest /work/runs/testa/manifest.csv --policies --json /work/runs/adaptation.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_cad import runtime
from cxr_cad.adaptation import adapt_head, adapt_recalibrate, adapt_threshold, head_weights, parent_policy, split_site
from cxr_cad.config import ThresholdConfig
from cxr_cad.inference.features import score_features
from cxr_cad.inference.model import model_calibration
from cxr_cad.manifest import manifest_hash, read_manifest
from cxr_cad.metrics import Calibration, UndefinedMetricWarning, binary_metrics, delong_auc_ci, jsonable
from cxr_cad.model import load_bundle
from cxr_cad.training.threshold import choose_threshold

METHODS = ("threshold", "recalibrate", "head")
SIZES = (25, 50, 100, 200)


def cpu_line() -> str:
    model = platform.processor() or "?"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model}; flags {' '.join(wanted) or 'none of avx2/avx512/amx'}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def cached_scores(bundle, df: pd.DataFrame, cache: Path, precision: str, batch_size: int) -> dict:
    key = f"{bundle.sha256[:16]}-{manifest_hash(df)[:16]}-{precision}"
    file = cache / f"adaptation-scores-{key}.npz"
    if file.exists():
        z = np.load(file)
        return {k: z[k] for k in z.files}
    t0 = time.perf_counter()
    s = score_features(bundle, list(df["path"].astype(str)), batch_size=batch_size, device="cpu", precision=precision)
    if not s.ok.all():
        raise SystemExit(f"{(~s.ok).sum()} test image(s) could not be scored: {s.rejected[:3]}")
    out = {
        "probability": s.probability,
        "logits": s.logits,
        "features": s.features,
        "seconds": np.array(time.perf_counter() - t0),
    }
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(file, **out)
    return out


def point(y: np.ndarray, p: np.ndarray, thr: float) -> dict:
    m = binary_metrics(y, p, threshold=thr)
    auc = delong_auc_ci(y, p)
    return {
        "threshold": float(thr),
        "auc": auc.auc,
        "auc_low": auc.low,
        "auc_high": auc.high,
        "sensitivity": m["sensitivity"]["value"],
        "specificity": m["specificity"]["value"],
        "balanced_accuracy": m["balanced_accuracy"],
    }


def run_method(method: str, bundle, y, groups, sc: dict, site: np.ndarray, seed: int):
    policy = parent_policy(bundle.threshold_selection)
    raw, feats = sc["probability"], sc["features"]
    if method == "threshold":
        return adapt_threshold(y[site], raw[site], policy, model_calibration(bundle))
    if method == "recalibrate":
        return adapt_recalibrate(y[site], raw[site], kind=policy.calibration, cutoff=policy.cutoff)
    return adapt_head(
        y[site],
        groups[site],
        feats[site],
        sc["logits"][site],
        bundle.positive_index,
        head_weights(bundle),
        policy,
        seed=seed,
    )


def summarise(rows: list[dict]) -> dict:
    out = {}
    for k in ("auc", "auc_low", "auc_high", "sensitivity", "specificity", "balanced_accuracy", "threshold"):
        v = np.array([r[k] for r in rows], float)
        out[k] = {"mean": float(np.nanmean(v)), "min": float(np.nanmin(v)), "max": float(np.nanmax(v))}
    return out


def learning_curve(bundle, df, sc, y, groups, methods, sizes, repeats) -> list[dict]:
    parent_cal = model_calibration(bundle)
    parent_p = sc["probability"] if parent_cal is None else parent_cal(sc["probability"])
    index = pd.Series(np.arange(len(df)), index=df["sop_instance_uid"].astype(str))
    results = []
    for n in sizes:
        draws = []
        for seed in range(repeats):
            split = split_site(df, n, seed=seed, group_col="patient_id", classes=bundle.classes)
            site = index[split.site["sop_instance_uid"].astype(str)].to_numpy()
            rest = index[split.rest["sop_instance_uid"].astype(str)].to_numpy()
            draws.append((seed, site, rest))
        base = [point(y[rest], parent_p[rest], bundle.threshold) for _, _, rest in draws]
        results.append(
            {"method": "parent", "n_site": n, "n_site_actual": [len(s) for _, s, _ in draws], **summarise(base)}
        )
        for method in methods:
            rows, t0 = [], time.perf_counter()
            for seed, site, rest in draws:
                a = run_method(method, bundle, y, groups, sc, site, seed)
                p = a.probabilities(sc["probability"][rest], sc["features"][rest])
                rows.append(point(y[rest], p, a.threshold))
            results.append(
                {
                    "method": method,
                    "n_site": n,
                    "n_eval": [len(r) for _, _, r in draws],
                    "seconds_per_fit": (time.perf_counter() - t0) / len(draws),
                    **summarise(rows),
                    "repeats": rows,
                }
            )
    return results


def policies(bundle, val: pd.DataFrame, sc: dict, y: np.ndarray) -> list[dict]:
    """Each policy chosen on the validation predictions, applied to the whole test manifest."""
    yv, pv = val["y_true"].to_numpy(int), val["probability"].to_numpy(float)
    out = []
    configs = [
        ("youden", ThresholdConfig(method="youden")),
        ("sensitivity 0.90", ThresholdConfig(method="sensitivity", target_sensitivity=0.9)),
        ("sensitivity 0.95", ThresholdConfig(method="sensitivity", target_sensitivity=0.95)),
        ("calibrated platt 0.5", ThresholdConfig(method="calibrated", calibration="platt")),
        ("calibrated temperature 0.5", ThresholdConfig(method="calibrated", calibration="temperature")),
    ]
    for name, cfg in configs:
        thr, method, detail = choose_threshold(yv, pv, cfg)
        test_p, val_p = sc["probability"], pv
        if method == "calibrated":
            cal = Calibration.from_dict(detail["calibration"])
            test_p, val_p = cal(test_p), cal(pv)
        out.append(
            {
                "policy": name,
                "method": method,
                "validation": point(yv, val_p, thr),
                "test": point(y, test_p, thr),
                "detail": detail,
            }
        )
    return out


def fmt(s: dict, k: str) -> str:
    return f"{s[k]['mean']:.3f} [{s[k]['min']:.3f}-{s[k]['max']:.3f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--manifest", required=True, help="labelled external test manifest (site images + evaluation)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--policies", action="store_true", help="also the threshold policies chosen on validation")
    ap.add_argument("--val-predictions", help="the parent run's val_predictions.csv [beside the bundle]")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cache", default="/tmp/cxr-cad-bench-cache")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    warnings.simplefilter("ignore", UndefinedMetricWarning)
    logging.getLogger("cxr_cad.training.threshold").setLevel(logging.ERROR)  # small-site warnings, once per draw

    bundle = load_bundle(args.model)
    df = read_manifest(args.manifest, require_labels=True, classes=bundle.classes).reset_index(drop=True)
    sc = cached_scores(bundle, df, Path(args.cache), args.precision, args.batch_size)
    y = (df["label"].astype(str) == bundle.positive_class).to_numpy().astype(int)
    groups = df["patient_id"].astype(str).to_numpy()
    info = runtime.resolve_runtime("cpu", args.precision)
    print(
        f"# {cpu_line()}; scoring precision {info.precision}; scored {len(df)} images once in {float(sc['seconds']):.1f} s"
    )
    print(
        f"# parent {args.model} sha256 {bundle.sha256[:12]}, threshold {bundle.threshold:.4f} ({bundle.threshold_method})"
    )
    print(f"# {' '.join(sys.argv)}")
    report: dict = {"cpu": cpu_line(), "precision": info.precision, "model": args.model, "sha256": bundle.sha256,
                    "manifest": args.manifest, "n": len(df), "n_positive": int(y.sum()), "argv": sys.argv}  # fmt: skip
    if args.policies:
        val_file = (
            Path(args.val_predictions) if args.val_predictions else Path(args.model).with_name("val_predictions.csv")
        )
        val = pd.read_csv(val_file)
        report["policies"] = policies(bundle, val, sc, y)
        print(f"\nthreshold policies chosen on {val_file} ({len(val)} images), applied to all {len(df)} test images")
        print("| policy | threshold | validation sens / spec | test sens | test spec | test bal. acc. |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in report["policies"]:
            v, t = r["validation"], r["test"]
            print(f"| {r['policy']} | {t['threshold']:.4f} | {v['sensitivity']:.3f} / {v['specificity']:.3f} | "
                  f"{t['sensitivity']:.3f} | {t['specificity']:.3f} | {t['balanced_accuracy']:.3f} |")  # fmt: skip
    methods = [m for m in args.methods.split(",") if m]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    report["learning_curve"] = learning_curve(bundle, df, sc, y, groups, methods, sizes, args.repeats)
    print(f"\nlearning curve: mean [min-max] over {args.repeats} patient-grouped stratified draws; "
          "evaluated on the remaining images")  # fmt: skip
    print("| n site | method | n eval | AUC | AUC 95% CI (mean) | sensitivity | specificity | balanced accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in report["learning_curve"]:
        n_eval = r.get("n_eval") or [len(df) - k for k in r["n_site_actual"]]
        print(f"| {r['n_site']} | {r['method']} | {min(n_eval)}-{max(n_eval)} | {fmt(r, 'auc')} | "
              f"{r['auc_low']['mean']:.3f}-{r['auc_high']['mean']:.3f} | {fmt(r, 'sensitivity')} | "
              f"{fmt(r, 'specificity')} | {fmt(r, 'balanced_accuracy')} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(jsonable(report), indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Same numbers before and after a refactor: the demo and the three workflows, seeded and small.

Runs ``cxr-cad demo`` (4 epochs) and ``workflows/batch_evaluate.yaml``,
``retrain_new_cohort.yaml`` (2 epochs) and ``chandola2021_pneumonia.yaml`` (``init=none``, 64 px,
2 epochs, 3 folds, the demo folder as test cohort) with the cxr_cad source tree ``--src`` into
``--out``, then (with ``--compare BEFORE``) prints, per predictions.csv, the largest difference in
probability, and per metrics.json the numbers that differ.

    git worktree add /tmp/before <old commit>
    python benchmarks/refactor_parity.py --src /tmp/before --out /tmp/parity_before
    python benchmarks/refactor_parity.py --src . --out /tmp/parity_after --compare /tmp/parity_before

About 10 minutes per tree on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

SKIP = ("seconds", "time", "version", "elapsed", "per_s")


def _run(src: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(src), "CXR_CAD_NO_PROGRESS": "1"}
    cli = [sys.executable, "-m", "cxr_cad"]
    wf = src / "workflows"
    demo = out / "demo"
    model = demo / "run" / "train" / "model.pt"
    common = ["--set", "report.pdf=false"]
    jobs = {
        "demo": ["demo", "--out", str(demo), "--no-pdf", "--epochs", "4"],
        "batch": ["run", str(wf / "batch_evaluate.yaml"), "--set", f"data.test={demo / 'dicom'}",
                  "--set", f"data.test_labels={demo / 'labels.csv'}", "--set", f"model.bundle={model}", *common],
        "retrain": ["run", str(wf / "retrain_new_cohort.yaml"), "--set", f"data.train={demo / 'dicom'}",
                    "--set", f"data.train_labels={demo / 'labels.csv'}", "--set", f"model.bundle={model}",
                    "--set", "train.epochs=2", *common],
        "chandola": ["run", str(wf / "chandola2021_pneumonia.yaml"), "--set", f"data.train={demo / 'dicom'}",
                     "--set", f"data.train_labels={demo / 'labels.csv'}", "--set", f"data.test={demo / 'dicom'}",
                     "--set", f"data.test_labels={demo / 'labels.csv'}", "--set", "model.init=none",
                     "--set", "model.image_size=64", "--set", "train.epochs=2", "--set", "crossval.folds=3", *common],
    }  # fmt: skip
    for name, args in jobs.items():
        if name != "demo":
            args = [*args, "--out", str(out / name)]
        with open(out / f"{name}.log", "w") as log:
            rc = subprocess.run([*cli, *args], env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        print(f"{name}: exit {rc}")


def _flat(d: object, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix[:-1]] = float(d)
    return out


def _compare(a: Path, b: Path) -> float:
    worst = 0.0
    print(f"{'predictions.csv':55s} {'rows':>9s} {'max |dp|':>10s}")
    for f in sorted(a.rglob("predictions.csv")):
        g = b / f.relative_to(a)
        if not g.exists():
            print(f"{str(f.relative_to(a)):55s} missing after")
            continue
        x, y = pd.read_csv(f), pd.read_csv(g)
        m = x.merge(y, on="sop_instance_uid" if "sop_instance_uid" in x else "path", suffixes=("_a", "_b"))
        d = float((m["probability_a"] - m["probability_b"]).abs().max()) if len(m) else float("nan")
        worst = max(worst, d if d == d else 0.0)
        print(f"{str(f.relative_to(a)):55s} {len(m):4d}/{len(x):<4d} {d:10.2e}")
    print(f"\n{'metrics':55s} {'compared':>9s} {'differ':>10s}")
    for f in sorted([*a.rglob("metrics.json"), *a.rglob("cv_metrics.json")]):
        g = b / f.relative_to(a)
        if not g.exists():
            print(f"{str(f.relative_to(a)):55s} missing after")
            continue
        fa, fb = _flat(json.loads(f.read_text())), _flat(json.loads(g.read_text()))
        keys = [k for k in fa if k in fb and not any(s in k for s in SKIP)]
        diff = [k for k in keys if abs(fa[k] - fb[k]) > 1e-9]
        print(f"{str(f.relative_to(a)):55s} {len(keys):9d} {len(diff):10d}")
        for k in diff[:8]:
            print(f"    {k}: {fa[k]} -> {fb[k]}")
    print(f"\nworst probability difference: {worst:.2e}")
    return worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1], help="cxr_cad source tree")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    p.add_argument("--compare", type=Path, help="an earlier --out to compare with")
    p.add_argument("--no-run", action="store_true", help="only compare (--out already filled)")
    args = p.parse_args()
    if not args.no_run:
        _run(args.src.resolve(), args.out.resolve())
    if args.compare:
        _compare(args.compare, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

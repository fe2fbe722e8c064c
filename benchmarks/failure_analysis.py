"""Why does a bundle over-call pneumonia on kermany-test-a? Attention, feature space, occlusion.

Three checks of one bundle against test-a (issue 22, item 1; docs/generalisation.md):

1. Grad-CAM (the project's own, :func:`cxr_cad.explain.gradcam.gradcam_maps`, as the report's
   gallery uses it) of every false positive, true negative and true positive at the bundle's
   stored threshold: the share of CAM mass in fixed regions of the 224-px model input, per group;
   a contact sheet of 12 false positives.
2. Penultimate features (the shift monitor's ``FeatureTap``, through
   :func:`cxr_cad.inference.features.score_features`): distances of validation and test-a films
   to the training normal / pneumonia centroids, nearest training neighbour (cosine), and a
   logistic regression on the training features scored on test-a.
3. Occlusion: test-a rewritten as 16-bit PNG copies (border band black or median, top corners
   median, Gaussian low-pass), scored by ``predict_probabilities`` with the bundle's eval chain.

    OMP_NUM_THREADS=1 python benchmarks/failure_analysis.py --bundle /work/runs/base224 \\
        --train-manifest /work/runs/kdev/manifest.csv

Needs ../shared (a benchmark, not a test). Tables go to stdout and <out>/report_<tag>.md;
<out>/report.md concatenates every bundle's.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxr_cad.explain.gradcam import GradcamSource, _overlay, gradcam_maps
from cxr_cad.inference.features import score_features
from cxr_cad.manifest import read_manifest
from cxr_cad.metrics import delong_auc_ci
from cxr_cad.model import load_bundle
from cxr_cad.training.loop import predict_probabilities
from cxr_cad.transforms import build_load_transforms

BORDER = 0.12  # outer band, fraction of the side
# Rough fixed boxes on the squashed 224-px input, (x0, x1, y0, y1) as fractions; x = columns.
# The lung boxes and the central column do not overlap; corners are where L/R markers and text sit.
BOXES = {
    "lung (image left)": (0.12, 0.40, 0.15, 0.80),
    "lung (image right)": (0.60, 0.88, 0.15, 0.80),
    "mediastinum column": (0.40, 0.60, 0.10, 0.90),
    "top corners": None,  # two 20% x 20% squares, top-left and top-right
}


def region_masks(size: int) -> dict[str, np.ndarray]:
    """Boolean masks of the named regions on a size x size image."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    masks = {"border band": (xx < BORDER) | (xx >= 1 - BORDER) | (yy < BORDER) | (yy >= 1 - BORDER)}
    for name, box in BOXES.items():
        if box is None:
            masks[name] = (yy < 0.2) & ((xx < 0.2) | (xx >= 0.8))
        else:
            x0, x1, y0, y1 = box
            masks[name] = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    return masks


def md_table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    """A Markdown table (hand-written: pandas' to_markdown needs the optional tabulate package).
    Columns named "... %" get one decimal, other floats ``floatfmt``."""
    fmts = ["{:.1f}" if str(c).endswith("%") else floatfmt for c in df.columns]
    cells = [
        [f.format(v) if isinstance(v, float) else str(v) for f, v in zip(fmts, row)]
        for row in df.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def operating(y: np.ndarray, p: np.ndarray, thr: float) -> dict:
    ci = delong_auc_ci(y, p, interval="logit")
    called = p >= thr
    sens, spec = float(called[y == 1].mean()), float((~called[y == 0]).mean())
    return {
        "AUC": ci.auc,
        "95% CI": f"{ci.low:.3f}-{ci.high:.3f}",
        "sens %": 100 * sens,
        "spec %": 100 * spec,
        "bal. acc %": 50 * (sens + spec),
        "median p(normals)": float(np.median(p[y == 0])),
    }


def load_rows(manifest: Path, split_csv: Path | None, max_train: int, seed: int) -> pd.DataFrame:
    """Manifest rows (absolute paths, y) joined to split.csv's ``split`` when given."""
    df = read_manifest(manifest, require_labels=True)
    df["y"] = (df["label"] == "PNEUMONIA").astype(int)
    if split_csv is None:
        return df.reset_index(drop=True)
    split = pd.read_csv(split_csv, dtype=str)[["sop_instance_uid", "split"]]
    df = df.merge(split, on="sop_instance_uid", how="inner")
    train = df[df["split"] == "train"]
    if len(train) > max_train:  # a seeded sample keeps the feature pass short on CPU
        train = train.sample(n=max_train, random_state=seed)
    return pd.concat([train, df[df["split"] != "train"]], ignore_index=True)


def gradcam_section(bundle_path: Path, test: pd.DataFrame, thr: float, out: Path, tag: str) -> str:
    """Table 1: CAM mass per region and group; contact sheet of 12 false positives."""
    bundle = load_bundle(bundle_path)
    source = GradcamSource.from_bundle(bundle)  # as cxr_cad.api._report does
    called, y = test["p"].to_numpy() >= thr, test["y"].to_numpy()
    groups = {"FP": called & (y == 0), "TN": ~called & (y == 0), "TP": called & (y == 1)}
    masks, rows, fp_maps = None, [], []
    for g, sel in groups.items():
        sub = test[sel].sort_values("p", ascending=(g == "TN"))
        maps = gradcam_maps(source, sub["path"].tolist())
        masks = masks or region_masks(maps[0][1].shape[0])
        heat = np.stack([h for _, h in maps]).astype(np.float64)
        total = heat.sum(axis=(1, 2)) + 1e-12
        row: dict = {"group": g, "n": len(sub)}
        for name, m in masks.items():
            row[f"{name} %"] = 100 * float(np.mean(heat[:, m].sum(1) / total))
        peak = heat.reshape(len(heat), -1).argmax(1)
        row["peak in border %"] = 100 * float(masks["border band"].ravel()[peak].mean())
        rows.append(row)
        if g == "FP":
            fp_maps = [(m, float(p)) for m, p in zip(maps[:12], sub["p"])]
    assert masks is not None
    rows.append({"group": "area (uniform map)", "n": ""} | {f"{k} %": 100 * float(v.mean()) for k, v in masks.items()})
    rows[-1]["peak in border %"] = rows[-1]["border band %"]
    contact_sheet(fp_maps, out / f"gradcam_fp_{tag}.png")
    boxes = "; ".join(f"{k} {v}" for k, v in BOXES.items() if v) + f"; border band outer {BORDER:.0%}"
    return (
        f"### 1. Grad-CAM mass by region (threshold {thr:.4g}; layer {source.layer()})\n\n"
        f"Regions (x0, x1, y0, y1 as fractions of the 224-px input): {boxes}; top corners two 20% squares. "
        "Each map is unit-normalised (min 0, max 1) and its share of mass per region averaged per group; "
        "regions overlap (the border band cuts into the others).\n\n"
        f"{md_table(pd.DataFrame(rows), '{:.1f}')}\n\nContact sheet (12 highest-scoring FPs): "
        f"{out / f'gradcam_fp_{tag}.png'}\n"
    )


def contact_sheet(maps: list, path: Path, cols: int = 3) -> None:
    """Overlay tiles (the report gallery's own ``_overlay``) in a grid with the score on each."""
    tiles = []
    for (gray, heat), p in maps:
        t = _overlay(gray, heat)
        ImageDraw.Draw(t).text((4, 4), f"FP p={p:.4f}", fill="yellow")
        tiles.append(t)
    w, h = tiles[0].size
    sheet = Image.new("RGB", (cols * w, -(-len(tiles) // cols) * h), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * w, (i // cols) * h))
    sheet.save(path, format="PNG")


def feature_section(feats: dict[str, np.ndarray], rows: dict[str, pd.DataFrame]) -> str:
    """Table 2 (centroid distances, nearest neighbour) and table 3 (linear probes)."""
    ftr, ytr = feats["train"], rows["train"]["y"].to_numpy()
    c_n, c_p = ftr[ytr == 0].mean(0), ftr[ytr == 1].mean(0)
    unit = ftr / np.linalg.norm(ftr, axis=1, keepdims=True)
    dist_rows = []
    for cohort in ("val", "test"):
        f, y = feats[cohort], rows[cohort]["y"].to_numpy()
        nn_label = ytr[np.argmax((f / np.linalg.norm(f, axis=1, keepdims=True)) @ unit.T, axis=1)]
        for label, name in ((0, "NORMAL"), (1, "PNEUMONIA")):
            s = y == label
            d_n, d_p = np.linalg.norm(f[s] - c_n, axis=1), np.linalg.norm(f[s] - c_p, axis=1)
            dist_rows.append(
                {
                    "cohort": f"{'validation' if cohort == 'val' else 'test-a'} {name}",
                    "n": int(s.sum()),
                    "median d(normal centroid)": float(np.median(d_n)),
                    "median d(pneumonia centroid)": float(np.median(d_p)),
                    "closer to pneumonia centroid %": 100 * float(np.mean(d_p < d_n)),
                    "nearest train film (cosine) is pneumonia %": 100 * float(np.mean(nn_label[s] == 1)),
                    "median p": float(np.median(rows[cohort]["p"].to_numpy()[s])),
                }
            )
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000)).fit(ftr, ytr)
    te, yte = rows["test"], rows["test"]["y"].to_numpy()
    oracle = cross_val_predict(
        make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000)),
        feats["test"], yte, groups=te["patient_id"], cv=GroupKFold(5), method="predict_proba",
    )[:, 1]  # fmt: skip
    auc = lambda y, p: delong_auc_ci(y, p, interval="logit")  # noqa: E731
    probe_rows = []
    for what, yv, pv in (
        ("network (its own head)", "val", None),
        ("network (its own head)", "test", None),
        ("logistic regression on training-image features", "val", probe),
        ("logistic regression on training-image features", "test", probe),
    ):
        y = rows[yv]["y"].to_numpy()
        p = rows[yv]["p"].to_numpy() if pv is None else pv.predict_proba(feats[yv])[:, 1]
        ci = auc(y, p)
        probe_rows.append({"scorer": what, "cohort": yv.replace("test", "test-a").replace("val", "validation"),
                           "AUC": ci.auc, "95% CI": f"{ci.low:.3f}-{ci.high:.3f}"})  # fmt: skip
    ci = auc(yte, oracle)
    probe_rows.append({"scorer": "oracle probe: LR on test-a features, 5-fold patient-grouped CV", "cohort": "test-a",
                       "AUC": ci.auc, "95% CI": f"{ci.low:.3f}-{ci.high:.3f}"})  # fmt: skip
    return (
        f"### 2a. Penultimate features: distance to the training centroids ({len(ftr)} training films, "
        f"{int((ytr == 0).sum())} normal / {int(ytr.sum())} pneumonia; Euclidean, {ftr.shape[1]}-d)\n\n"
        f"{md_table(pd.DataFrame(dist_rows), '{:.2f}')}\n\n"
        "### 2b. Linear probes on the same features (LR: standardised, C=0.1)\n\n"
        f"{md_table(pd.DataFrame(probe_rows))}\n"
    )


def _variants(img: np.ndarray) -> dict[str, np.ndarray]:
    """The occluded / filtered copies of one (S, S) image in [0, 1]."""
    s = img.shape[0]
    band = region_masks(s)["border band"]
    corners = region_masks(s)["top corners"]
    med = float(np.median(img))
    return {
        "PNG copy (control)": img,
        f"border {BORDER:.0%} black": np.where(band, 0.0, img),
        f"border {BORDER:.0%} median": np.where(band, med, img),
        "top corners median": np.where(corners, med, img),
        "Gaussian sigma 1": gaussian_filter(img, 1.0, mode="nearest"),
        "Gaussian sigma 2": gaussian_filter(img, 2.0, mode="nearest"),
        "unsharp mask (sigma 1, amount 1)": img + (img - gaussian_filter(img, 1.0, mode="nearest")),
    }


def occlusion_section(bundle_path: Path, cohorts: dict[str, pd.DataFrame], thr: float, work: Path) -> str:
    """Table 3: AUC / sens / spec at the stored threshold of every variant of each cohort."""
    bundle = load_bundle(bundle_path)
    load = build_load_transforms(bundle.transform_spec)
    rows = []
    for cohort, df in cohorts.items():
        paths: dict[str, list[str]] = {}
        for i, p in enumerate(df["path"]):
            d = {"image": p}
            for t in load:
                d = t(d)
            img = np.asarray(d["image"])[0].astype(np.float64)
            for k, (name, v) in enumerate(_variants(img).items()):
                f = work / cohort / f"v{k}" / f"{i:04d}.png"
                f.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.round(np.clip(v, 0, 1) * 65535).astype(np.uint16)).save(f)
                paths.setdefault(name, []).append(str(f))
        y = df["y"].to_numpy()
        rows.append({"cohort": cohort, "input": "original file", **operating(y, df["p"].to_numpy(), thr)})
        for name, files in paths.items():
            p = predict_probabilities(bundle, pd.DataFrame({"path": files}), workers=0, device="cpu")
            rows.append({"cohort": cohort, "input": name, **operating(y, p, thr)})
    return (
        "### 3. Occlusion / filtering at the model input (the 224-px input rewritten as 16-bit PNG copies "
        f"under {work}, scored with the bundle's eval chain; stored threshold {thr:.4g})\n\n"
        f"{md_table(pd.DataFrame(rows))}\n"
    )


def header(argv: list[str]) -> str:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
         if ln.startswith("Model name")), "unknown",
    )  # fmt: skip
    return (
        f"Command: `{' '.join(['OMP_NUM_THREADS=1 python benchmarks/failure_analysis.py', *argv])}`\n\nCPU: {cpu}; torch threads {torch.get_num_threads()}; "
        f"{datetime.datetime.now().isoformat(timespec='minutes')}\n"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("/work/runs/base224"), help="run folder with model.pt")
    ap.add_argument("--train-manifest", type=Path, default=Path("/work/runs/kdev/manifest.csv"))
    ap.add_argument("--test-manifest", type=Path, default=Path("/work/runs/testa/manifest.csv"))
    ap.add_argument("--out", type=Path, default=Path("/work/runs/fa"))
    ap.add_argument("--max-train", type=int, default=1500, help="training films sampled for the feature checks")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: gradcam,features,occlusion")
    args = ap.parse_args(argv)
    tag, skip = args.bundle.name, set(filter(None, args.skip.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(args.bundle / "model.pt")
    thr = float(bundle.threshold)
    rows = {"test": load_rows(args.test_manifest, None, 0, 0)}
    dev = load_rows(args.train_manifest, args.bundle / "split.csv", args.max_train, 0)
    rows["train"], rows["val"] = dev[dev["split"] == "train"], dev[dev["split"] != "train"]
    feats = {}
    for k, df in rows.items():  # one pass gives the probability and the head's input
        if k == "train" and "features" in skip:
            continue
        fs = score_features(bundle, df["path"].tolist(), workers=0, device="cpu", precision="fp32")
        assert fs.ok.all(), fs.rejected
        df["p"], feats[k] = fs.probability, fs.features[:, 0, 0, :]
    test = rows["test"]
    summary = {"threshold": thr, **operating(test["y"].to_numpy(), test["p"].to_numpy(), thr)}
    parts = [f"## {tag} ({args.bundle / 'model.pt'}) on test-a\n", header(argv)]
    parts.append("Test-a at the stored threshold: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else
                                                               f"{k} {v}" for k, v in summary.items()) + "\n")  # fmt: skip
    for name, fn in (
        ("gradcam", lambda: gradcam_section(args.bundle / "model.pt", test, thr, args.out, tag)),
        ("features", lambda: feature_section(feats, rows)),
        (
            "occlusion",
            lambda: occlusion_section(
                args.bundle / "model.pt",
                {"test-a": test, "validation": rows["val"]},
                thr,
                args.out / f"png_{tag}",
            ),
        ),
    ):
        if name not in skip:
            parts.append(fn())
            print(parts[-1], flush=True)
    text = "\n".join(parts)
    (args.out / f"report_{tag}.md").write_text(text)
    reports = sorted(args.out.glob("report_*.md"))
    (args.out / "report.md").write_text("\n\n".join(r.read_text() for r in reports))
    print(f"wrote {args.out / f'report_{tag}.md'} and {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

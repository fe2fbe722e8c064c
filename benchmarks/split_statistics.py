"""Why a model trained on Kermany's training split over-calls pneumonia on its test split.

Measures eight global image statistics (after a 224x224 bilinear resize: mean, std, 1st/99th
percentile, border mean, centre mean, fraction of near-black pixels, mean absolute vertical
gradient = sharpness) on kermany-dev, kermany-test-a and a sample of kermany-224-train; prints
their means per split and label, and how well a logistic regression on them separates the
labels (5-fold CV on kermany-dev; trained on kermany-dev, scored on test-a); and how each split
is stored: JPEG colour mode and the quality its luminance quantisation table corresponds to
(the IJG scaling of the standard table, as libjpeg and Pillow write it). Figures in
docs/generalisation.md.

    python benchmarks/split_statistics.py --shared ../shared/data

Needs ../shared (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = ["mean", "std", "p1", "p99", "border", "center", "frac_black", "sharpness"]
SUBSETS = {
    "all eight": FEATURES,
    "sharpness": ["sharpness"],
    "black level + area": ["p1", "frac_black"],
    "border": ["border"],
}


#: ITU-T T.81 Annex K.1 luminance table (natural order), the base of libjpeg's quality scaling
_STD_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
)  # fmt: skip


def jpeg_quality(im: Image.Image) -> float:
    """The IJG quality whose scaled standard luminance table is closest to the file's (NaN: not JPEG)."""
    tables = getattr(im, "quantization", None)
    if not tables:
        return float("nan")
    natural = np.asarray(tables[0], float)  # Pillow gives the tables in natural (row-major) order
    best, err = 50, float("inf")
    for q in range(1, 101):
        scale = 5000 / q if q < 50 else 200 - 2 * q
        table = np.clip(np.floor((_STD_LUMA * scale + 50) / 100), 1, 255)
        e = float(np.abs(table - natural).mean())
        if e < err:
            best, err = q, e
    return float(best)


def image_stats(path: Path) -> dict:
    src = Image.open(path)
    mode, quality = src.mode, jpeg_quality(src)
    im = src.convert("L")
    w, h = im.size
    a = np.asarray(im.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    border = np.concatenate([a[:12].ravel(), a[-12:].ravel(), a[:, :12].ravel(), a[:, -12:].ravel()])
    return {
        "mode": mode,
        "jpeg_quality": quality,
        "width": w,
        "height": h,
        "mean": a.mean(),
        "std": a.std(),
        "p1": np.percentile(a, 1),
        "p99": np.percentile(a, 99),
        "border": border.mean(),
        "center": a[56:168, 56:168].mean(),
        "frac_black": (a < 0.05).mean(),
        "sharpness": np.abs(np.diff(a, axis=0)).mean(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--per-class", type=int, default=300, help="images per class sampled from kermany-224-train")
    args = ap.parse_args(argv)
    rows = []
    for name in ("kermany-dev", "kermany-test-a", "kermany-224-train"):
        m = pd.read_csv(args.shared / name / "manifest.csv")
        if name == "kermany-224-train":
            m = pd.concat([g.sample(args.per_class, random_state=0) for _, g in m.groupby("label")])
        for path, label in zip(m["path"], m["label"]):
            rows.append({"set": name, "label": label, **image_stats(args.shared / name / path)})
    df = pd.DataFrame(rows)
    print(df.groupby(["set", "label"])[["width", "height", *FEATURES]].mean().round(3).T.to_string())
    print("\nstorage (JPEG colour mode and IJG quality of the luminance table), images per split:")
    print(df.groupby(["set", "mode", "jpeg_quality"]).size().to_string())
    dev, test = df[df["set"] == "kermany-dev"], df[df["set"] == "kermany-test-a"]
    y_dev, y_test = (dev["label"] == "PNEUMONIA").astype(int), (test["label"] == "PNEUMONIA").astype(int)
    print("\n| features | dev 5-fold CV AUC | test-a AUC |\n|---|---:|---:|")
    for title, cols in SUBSETS.items():
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        cv = cross_val_predict(model, dev[cols], y_dev, cv=5, method="predict_proba")[:, 1]
        model.fit(dev[cols], y_dev)
        auc_test = roc_auc_score(y_test, model.predict_proba(test[cols])[:, 1])
        print(f"| {title} | {roc_auc_score(y_dev, cv):.3f} | {auc_test:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

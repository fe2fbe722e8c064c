"""Speed and agreement of the inference backends on the same real radiographs.

One run, the same labelled images (e.g. 720 Kermany 224x224 JPEGs from
../shared/data/kermany-224-train, patients not used for training), prints a table of:

* images/s **model-only** (pre-decoded, preprocessed tensors, batch ``--batch-size``) and
  **end to end** (``cxr_cad.inference.predict.predict``: decode workers, preprocessing, model,
  journaled CSVs) for torch fp32, torch bf16 (today's ``predict`` default on CPUs with native
  bf16), onnxruntime fp32 / int8 and OpenVINO fp32 / int8 (plus OpenVINO with its bf16
  hint, for reference);
* the AUC of each and the max |probability change| against torch fp32;
* where end-to-end time goes: decode + preprocessing alone (the engine's ``PredictDataset``
  in one process), so a missed end-to-end target can be explained.

    python benchmarks/backends.py --model RUN/model.pt --manifest bench.csv --calibration calib.csv \
        --work /tmp/backends
    python benchmarks/backends.py --auto --model RUN/model.pt --manifest bench.csv --calibration calib.csv \
        --variant-train calib.csv --variant-val val.csv --work /tmp/backends    # predict --backend auto

The int8 models are calibrated on ``--calibration`` (a labelled manifest of other
patients), through ``cxr-cad export --int8`` (its held-out check is reported; written with
``force`` so the table is complete even when the check refuses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _model_only(fn, images: torch.Tensor, batch: int, autocast: bool = False) -> tuple[float, np.ndarray]:
    """(images/s, logits) over ``images`` in batches after one warm-up batch."""
    from cxr_cad import runtime

    def run(x):
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(x.contiguous(memory_format=torch.channels_last))
        return fn(x)

    with torch.inference_mode():
        run(images[:batch])
        t = time.perf_counter()
        outs = [run(images[i : i + batch]).float() for i in range(0, len(images), batch)]
        dt = time.perf_counter() - t
    del runtime
    return len(images) / dt, torch.cat(outs).numpy()


def _end_to_end(model_path, backend: str, manifest: str, out: Path, batch: int, precision: str) -> float:
    from cxr_cad.inference.predict import PredictOptions, predict

    res = predict(
        [manifest],
        out,
        model_path,
        PredictOptions(batch_size=batch, precision=precision, backend=backend, overwrite=True),
    )
    return res.n_processed / res.seconds


def _decode_only(manifest: str, spec, n: int) -> float:
    """Images/s of decode + preprocessing alone (one process), the floor of end-to-end time."""
    from cxr_cad.inference.inputs import PredictDataset, collect_inputs
    from cxr_cad.io import AcceptPolicy

    inputs, _ = collect_inputs([manifest])
    ds = PredictDataset(inputs[:n], AcceptPolicy(), spec)
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return len(ds) / (time.perf_counter() - t)


def _fit_head(model_path: str, manifest: str, out: Path) -> str:
    """A bundle whose classifier is a logistic regression on the network's penultimate features.

    For measuring backends without a trained model at hand (training a ResNet18 on a shared
    2-core machine takes hours): the backbone is whatever ``model_path`` holds (e.g. random),
    the fc layer is fitted (scikit-learn) on ``manifest``, so the AUC is meaningful enough to
    see what int8 changes. Speed does not depend on the weights.
    """
    from sklearn.linear_model import LogisticRegression

    from cxr_cad.export.common import cohort_from_manifest
    from cxr_cad.model import head_of, load_bundle, save_bundle

    b = load_bundle(model_path)
    c = cohort_from_manifest(manifest, b.transform_spec, b.positive_class)
    feats = []
    head = head_of(b.model)
    hook = head.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    with torch.inference_mode():
        for i in range(0, len(c.images), 32):
            b.model(c.images[i : i + 32])
    hook.remove()
    f = torch.cat(feats).numpy()
    mu, sd = f.mean(0), f.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=2000).fit((f - mu) / sd, c.labels)
    w = torch.tensor(clf.coef_[0] / sd, dtype=torch.float32)
    bias = float(clf.intercept_[0] - (clf.coef_[0] * mu / sd).sum())
    with torch.no_grad():  # two-class softmax: logit difference = w.x + bias
        head.weight.copy_(torch.stack([-w / 2, w / 2]))
        head.bias.copy_(torch.tensor([-bias / 2, bias / 2]))
    path = out / "model_fitted_head.pt"
    save_bundle(
        path,
        b.model,
        classes=b.classes,
        positive_class=b.positive_class,
        transform_spec=b.transform_spec,
        threshold=0.5,
        threshold_method="fixed",
        manifest_hash=b.manifest_hash,
    )
    print(f"fitted a logistic head on {len(c.labels)} images of {manifest} -> {path}", flush=True)
    return str(path)


def _lscpu_flags() -> str:
    """The CPU model and the flags that decide the candidates (bf16, AMX, VNNI, AVX-512)."""
    import subprocess

    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("Flags")), [])
    keep = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni", "avx2")))
    return f"{model}; {os.cpu_count()} CPU(s); flags: {' '.join(keep) or 'none of avx2/avx512/amx'}"


def auto_table(model: str, manifest: str, variant_train: str | None, variant_val: str | None, work: Path, batch: int):
    """``predict --backend auto`` against torch fp32 / bf16, end to end on ``manifest`` (one process each run,
    same decode workers): the first auto run (chooses and caches), the cached run, and with
    ``--allow-int8`` when an int8 variant is stored (calibrated on ``variant_train``, verified on
    ``variant_val``). The choice threshold (``AUTO_MIN_IMAGES``) is lowered so a small benchmark chooses."""
    import shutil

    import pandas as pd

    from cxr_cad.export.variant import store_int8_variant
    from cxr_cad.inference import backend as auto
    from cxr_cad.inference.predict import PredictOptions, predict
    from cxr_cad.manifest import read_manifest
    from cxr_cad.metrics import roc_auc

    cache = work / "backend-cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ[auto.CACHE_ENV] = str(cache)
    auto.AUTO_MIN_IMAGES = 0
    bundle = work / "auto-model.pt"
    shutil.copy(model, bundle)
    shutil.rmtree(work / "auto-model.int8", ignore_errors=True)
    runs = [
        ("torch fp32 (--backend torch --precision fp32)", {"backend": "torch", "precision": "fp32"}),
        ("torch, precision auto (the former default)", {"backend": "torch"}),
        ("auto, first run (chooses, exports, caches)", {}),
        ("auto, cached choice", {}),
    ]
    if variant_train and variant_val:
        ver = store_int8_variant(
            bundle, read_manifest(variant_train, require_labels=True), read_manifest(variant_val, require_labels=True)
        )
        print(ver.line(), flush=True)
        if not ver.accepted:  # a stand-in model: lift the limits to measure int8 speed, and say so
            ver = store_int8_variant(
                bundle,
                read_manifest(variant_train, require_labels=True),
                read_manifest(variant_val, require_labels=True),
                max_auc_drop=1.0,
                max_decision_change=1.0,
            )
            print(f"LIMITS LIFTED to measure int8 speed on this stand-in model: {ver.line()}", flush=True)
        runs += [
            ("auto --allow-int8, first run", {"allow_int8": True}),
            ("auto --allow-int8, cached", {"allow_int8": True}),
        ]
    rows, ref = [], None
    for i, (name, kw) in enumerate(runs):
        out = work / f"auto-{i}"
        res = predict([manifest], out, bundle, PredictOptions(batch_size=batch, overwrite=True, **kw))
        pred = pd.read_csv(out / "predictions.csv")
        p = pred["probability"].to_numpy()
        ref = p if ref is None else ref
        y = (pred["label"].astype(str) == "PNEUMONIA").to_numpy().astype(int)
        choice = res.runtime.get("backend_choice") or {}
        rows.append(
            {
                "run": name,
                "ran": res.runtime_label,
                "images_per_s": res.images_per_s,
                "seconds": res.seconds,
                "auc": roc_auc(y, p),
                "max_change": float(np.abs(p - ref).max()),
                "candidates": choice.get("candidates"),
            }
        )
        print(rows[-1], flush=True)
    print(
        f"\n{_lscpu_flags()}; {len(ref)} images of {manifest}; batch {batch}; torch threads {torch.get_num_threads()}\n"
    )
    print("| run | ran on | images/s end to end | seconds | vs torch fp32 | AUC | max prob. change vs torch fp32 |")
    print("|---|---|---|---|---|---|---|")
    base = rows[0]["images_per_s"]
    for r in rows:
        print(
            f"| {r['run']} | {r['ran']} | {r['images_per_s']:.1f} | {r['seconds']:.1f} | "
            f"{r['images_per_s'] / base:.2f}x | {r['auc']:.4f} | {r['max_change']:.5f} |"
        )
    cands = next((r["candidates"] for r in rows if r["candidates"] and "int8" in str(r["candidates"])), None)
    cands = cands or next((r["candidates"] for r in rows if r["candidates"]), [])
    print("\n| candidate (check batch) | verified | images/s | max prob. diff vs torch fp32 | why not |")
    print("|---|---|---|---|---|")
    for c in cands:
        print(
            f"| {c['name']} | {c.get('verified')} | {c.get('images_per_s', '')} | "
            f"{c.get('max_abs_prob_diff', float('nan')):.2g} | {c.get('reason', '')} |"
        )
    (work / "auto.json").write_text(json.dumps(rows, indent=2, default=float))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="trained bundle")
    ap.add_argument("--manifest", required=True, help="labelled manifest of the benchmark images")
    ap.add_argument("--calibration", required=True, help="labelled manifest for int8 calibration (other patients)")
    ap.add_argument("--work", default="/tmp/cxr-cad-backends")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument(
        "--fit-head",
        metavar="MANIFEST",
        help="replace the classifier by a logistic regression fitted "
        "on this labelled manifest's features (no trained model at hand)",
    )
    ap.add_argument(
        "--auto",
        action="store_true",
        help="only the `predict --backend auto` table (first run, cached run, --allow-int8)",
    )
    ap.add_argument("--variant-train", metavar="MANIFEST", help="--auto: int8 variant calibration images")
    ap.add_argument("--variant-val", metavar="MANIFEST", help="--auto: int8 variant verification images")
    args = ap.parse_args(argv)
    print(_lscpu_flags(), flush=True)
    if args.auto:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        model = _fit_head(args.model, args.fit_head, work) if args.fit_head else args.model
        auto_table(model, args.manifest, args.variant_train, args.variant_val, work, args.batch_size)
        return 0

    from cxr_cad import runtime
    from cxr_cad.export import export_model, load_exported
    from cxr_cad.export.backends import OpenVinoModel
    from cxr_cad.export.common import cohort_from_manifest, softmax_positive
    from cxr_cad.inference.predict import prepare_for_inference
    from cxr_cad.metrics import roc_auc
    from cxr_cad.model import load_bundle

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.fit_head:
        args.model = _fit_head(args.model, args.fit_head, work)
    bundle = load_bundle(args.model)
    t = time.perf_counter()
    cohort = cohort_from_manifest(args.manifest, bundle.transform_spec, bundle.positive_class)
    print(
        f"{len(cohort.labels)} images preprocessed in {time.perf_counter() - t:.1f} s "
        f"({len(cohort.rejected)} rejected); threads {torch.get_num_threads()}",
        flush=True,
    )
    exports = {}
    for fmt in ("onnx", "openvino"):
        t = time.perf_counter()
        res = export_model(
            args.model, fmt, work / fmt, int8=True, calibration=args.calibration, force=True, overwrite=True
        )
        exports[fmt] = res
        print(f"export {fmt}: {time.perf_counter() - t:.0f} s; int8 check: {res.int8}", flush=True)

    fp32_info = runtime.resolve_runtime("cpu", "fp32")
    bf16_info = runtime.resolve_runtime("cpu", "bf16")
    rows = {}
    x, y, b = cohort.images, cohort.labels, args.batch_size
    torch_fp32 = prepare_for_inference(bundle.model, fp32_info)
    torch_bf16 = prepare_for_inference(load_bundle(args.model).model, bf16_info)
    models = {
        "torch fp32": (torch_fp32, False, args.model, "torch", "fp32"),
        "torch bf16 (predict default)": (torch_bf16, True, args.model, "torch", "bf16"),
        "onnxruntime fp32": (
            load_exported(work / "onnx" / "model.onnx", "onnxruntime").model,
            False,
            work / "onnx" / "model.onnx",
            "onnxruntime",
            "fp32",
        ),
        "onnxruntime int8": (
            load_exported(work / "onnx" / "model.int8.onnx", "onnxruntime").model,
            False,
            work / "onnx" / "model.int8.onnx",
            "onnxruntime",
            "fp32",
        ),
        "openvino fp32": (
            load_exported(work / "openvino" / "model.xml", "openvino").model,
            False,
            work / "openvino" / "model.xml",
            "openvino",
            "fp32",
        ),
        "openvino int8": (
            load_exported(work / "openvino" / "model.int8.xml", "openvino").model,
            False,
            work / "openvino" / "model.int8.xml",
            "openvino",
            "fp32",
        ),
        "openvino fp32, bf16 hint": (
            OpenVinoModel(work / "openvino" / "model.xml", precision="bf16"),
            False,
            None,
            None,
            None,
        ),
    }
    ref = None
    for name, (fn, ac, path, backend, prec) in models.items():
        speed, logits = _model_only(fn, x, b, autocast=ac)
        p = softmax_positive(logits, bundle.positive_index)
        ref = p if ref is None else ref
        rows[name] = {"model_only": speed, "auc": roc_auc(y, p), "max_change": float(np.abs(p - ref).max())}
        if not args.skip_e2e and path is not None:
            rows[name]["end_to_end"] = _end_to_end(path, backend, args.manifest, work / f"pred-{len(rows)}", b, prec)
        print(name, {k: round(v, 4) for k, v in rows[name].items()}, flush=True)
    decode = _decode_only(args.manifest, bundle.transform_spec, 200)
    base_model = rows["torch bf16 (predict default)"]["model_only"]
    base_e2e = rows["torch bf16 (predict default)"].get("end_to_end")
    print(
        f"\n{len(y)} images ({int(y.sum())} positive), {bundle.transform_spec.image_size} px, batch {b}, "
        f"{torch.get_num_threads()} threads; decode+preprocess alone (1 process): {decode:.1f} images/s\n"
    )
    print(
        "| backend | model-only images/s | vs torch bf16 | end-to-end images/s | vs today's predict | AUC | "
        "max prob. change vs fp32 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        e2e = r.get("end_to_end")
        print(
            f"| {name} | {r['model_only']:.1f} | {r['model_only'] / base_model:.2f}x | "
            f"{'' if e2e is None else f'{e2e:.1f}'} | {'' if e2e is None or not base_e2e else f'{e2e / base_e2e:.2f}x'}"
            f" | {r['auc']:.4f} | {r['max_change']:.4f} |"
        )
    (work / "backends.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "decode_only": decode,
                "n": len(y),
                "int8_checks": {k: v.int8 for k, v in exports.items()},
                "threads": torch.get_num_threads(),
                "load": os.getloadavg(),
            },
            indent=2,
            default=float,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

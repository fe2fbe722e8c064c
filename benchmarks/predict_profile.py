"""Where the time of a prediction goes, per image: cxr-cad against the MONAI-tutorial pipeline.

For each DICOM folder, in one run, on the same files and the same network:

* a **stage table** (one image at a time in this process, so every stage is timed alone, on one
  torch thread as in a DataLoader worker, each stage the fastest of ``--repeats`` runs of a file):
  ``decode`` (read the file, decompress; cxr-cad decodes at the working resolution of
  ``cxr_cad.io.working`` where the codec can), ``resize`` (cxr-cad: the rest of the way to the
  working resolution by block means, then the area resize to the model input; MONAI:
  ``Resize``), ``intensity`` (cxr-cad: Modality LUT, VOI / window / min-max, MONOCHROME1,
  per-image percentiles, normalisation; MONAI: ``ScaleIntensity`` + normalisation),
  ``network`` (batched forward pass, fp32 on both sides unless ``--precision``), ``writing``
  (the CSV);
* **end to end** with ``--workers`` decode processes: ``cxr_cad.api.predict`` (DataLoader
  workers decode, the main process runs the network, batches prefetched) against the MONAI
  tutorial (``LoadImaged(PydicomReader)``, ``ScaleIntensityd``, ``Resized``, fp32 eager,
  ``monai.data.DataLoader`` with the same workers), images per second.

The CPU's ``lscpu`` flags that matter (avx2, avx512*, amx*) are printed first.

    python benchmarks/make_dicom_folder.py runs/prof/cr2048 --n 40 --unique 40 --size 2048 \\
        --syntaxes explicit,j2k,rle,jpegls,jpeg_baseline
    python benchmarks/predict_profile.py --model MODEL.pt runs/prof/cr2048 runs/prof/cr224
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STAGES = ("decode", "resize", "intensity", "network", "writing")


def cpu_flags() -> str:
    """The lscpu model name and the SIMD / matrix flags that decide the fast paths."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "lscpu not available"
    info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    keep = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    return f"{info.get('Model name', '?').strip()}; {len(flags)} flags; {' '.join(keep) or 'no AVX'}"


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def _least(spent: dict[str, float], runs: list[dict[str, float]]) -> None:
    """Add each stage's fastest of ``runs`` (one file timed several times) to ``spent``.

    The machine may be shared: the fastest run is the stage's cost, the rest was waiting."""
    for stage in runs[0]:
        spent[stage] += min(r[stage] for r in runs)


def profile_cxr_cad(files: list[str], bundle, batch_size: int, repeats: int = 3) -> dict[str, float]:
    """Seconds per stage over ``files`` (see the module doc), one image at a time, each stage the
    fastest of ``repeats`` runs."""
    import pandas as pd
    import torch
    from monai.transforms import Compose

    from cxr_cad.config import AcceptPolicy
    from cxr_cad.io import dicom_pixels
    from cxr_cad.io.dicom import check_header, read_dataset
    from cxr_cad.io.working import area_reduce, working_level
    from cxr_cad.transforms import build_load_transforms, build_post_transforms

    spec, policy = bundle.transform_spec, AcceptPolicy()
    resize = Compose(build_load_transforms(spec)[1:])
    post = Compose(build_post_transforms(spec))
    spent = dict.fromkeys(STAGES, 0.0)
    images = []
    real_decode = dicom_pixels.decode
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the per-image stages on one thread, as in a DataLoader worker
    for f in files:
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            ds, has_pixels = read_dataset(Path(f), header_only=False, max_image_bytes=policy.max_image_bytes)
            check_header(ds, has_pixels, Path(f), policy)
            level = working_level(int(ds.Rows), int(ds.Columns), spec.image_size)
            arr, reached = real_decode(ds, Path(f), level=level)
            t_decode = time.perf_counter() - t
            _, t_area = _timed(area_reduce, arr, level - reached)  # done again inside display_pixels
            dicom_pixels.decode = lambda *a, _arr=arr, _r=reached, **k: (_arr, _r)  # type: ignore[assignment]
            try:
                pixels, t_display = _timed(
                    lambda d=ds, p=Path(f): dicom_pixels.display_pixels(d, p, reduce_to=spec.image_size)
                )
            finally:
                dicom_pixels.decode = real_decode
            resized, t_resize = _timed(lambda p: resize({"image": torch.from_numpy(p[None].copy())}), pixels)
            image, t_post = _timed(lambda d: post(d)["image"], resized)
            runs.append(
                {"decode": t_decode, "resize": t_area + t_resize, "intensity": max(0.0, t_display - t_area) + t_post}
            )
        _least(spent, runs)
        images.append(image)
    torch.set_num_threads(threads)
    spent["network"], probs = _network(bundle, images, batch_size)
    spent["writing"] = _write(pd, files, probs)
    return spent


def profile_monai(files: list[str], bundle, batch_size: int, repeats: int = 3) -> dict[str, float]:
    """The MONAI tutorial's stages, one image at a time, each the fastest of ``repeats`` runs."""
    import pandas as pd
    import torch
    from monai.data import PydicomReader
    from monai.transforms import EnsureChannelFirst, LoadImage, NormalizeIntensity, Resize, ScaleIntensity

    spec = bundle.transform_spec
    load = LoadImage(reader=PydicomReader(), image_only=True)
    channel, scale = EnsureChannelFirst(), ScaleIntensity()
    resize = Resize(spatial_size=(spec.image_size, spec.image_size))
    norm = NormalizeIntensity(subtrahend=list(spec.mean), divisor=list(spec.std), channel_wise=True)  # type: ignore[arg-type]
    spent = dict.fromkeys(STAGES, 0.0)
    images = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the per-image stages on one thread, as in a DataLoader worker
    for f in files:
        runs = []
        for _ in range(repeats):
            img, t_load = _timed(lambda p: channel(load(p)), f)
            scaled, t_scale = _timed(scale, img)
            small, t_resize = _timed(resize, scaled)
            out, t_norm = _timed(norm, small)
            runs.append({"decode": t_load, "intensity": t_scale + t_norm, "resize": t_resize})
        _least(spent, runs)
        images.append(torch.as_tensor(out, dtype=torch.float32))
    torch.set_num_threads(threads)
    spent["network"], probs = _network(bundle, images, batch_size)
    spent["writing"] = _write(pd, files, probs)
    return spent


def _network(bundle, images, batch_size: int) -> tuple[float, list[float]]:
    import torch

    model = bundle.model.eval()
    probs: list[float] = []
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            batch = torch.stack([x.as_tensor() if hasattr(x, "as_tensor") else x for x in images[i : i + batch_size]])
            probs += torch.softmax(model(batch), dim=1)[:, bundle.positive_index].tolist()
    return time.perf_counter() - t, probs


def _write(pd, files: list[str], probs: list[float]) -> float:
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as where:
        pd.DataFrame({"path": files, "probability": probs}).to_csv(Path(where) / "p.csv", index=False)
    return time.perf_counter() - t


def _chosen(out: Path) -> tuple[str, float | None]:
    """The backend a run used and its model-only images/s on the check batch (``summary.json``)."""
    rt = json.loads((out / "summary.json").read_text(encoding="utf-8"))["runtime"]
    choice = rt.get("backend_choice") or {}
    name = choice.get("name") or f"{rt.get('backend', 'torch')} {rt.get('precision', '?')}"
    speeds = {c["name"]: c.get("images_per_s") for c in choice.get("candidates") or []}
    return name, speeds.get(name)


def end_to_end(folder: Path, model: Path, workers: int, batch_size: int, allow_int8: bool) -> dict[str, Any]:
    """Images per second over the whole folder: ``cxr_cad.api.predict`` with default options (a
    first run, which may choose the backend, then a second one that finds the choice cached)
    against the MONAI tutorial with the same workers; plus the chosen backend's model-only
    images/s from the choice record, so end to end can be put against it."""
    from cxr_cad.api import predict
    from cxr_cad.config import PredictOptions

    n = sum(1 for _ in folder.rglob("*.dcm"))
    rates: dict[str, Any] = {"files": n}
    with tempfile.TemporaryDirectory() as where:
        for run in ("first", "cached"):
            opts = PredictOptions(workers=workers, batch_size=batch_size, allow_int8=allow_int8)
            t = time.perf_counter()
            predict(model, folder, Path(where) / run, options=opts)
            rates[f"cxr_cad_{run}"] = n / (time.perf_counter() - t)
        rates["backend"], rates["model_only"] = _chosen(Path(where) / "cached")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from predict_throughput import baseline_main  # the same MONAI baseline as the throughput benchmark

        t = time.perf_counter()
        baseline_main(str(folder), str(model), str(Path(where) / "b.csv"), batch_size, workers, n)
        rates["monai"] = n / (time.perf_counter() - t)
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path, help="DICOM folders (benchmarks/make_dicom_folder.py)")
    ap.add_argument("--model", required=True, type=Path, help="model bundle")
    ap.add_argument("--n", type=int, default=40, help="files per folder (default 40)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="decode processes end to end (default 2)")
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument(
        "--repeats", type=int, default=3, help="stage tables: each file this many times, fastest kept (default 3)"
    )
    ap.add_argument("--allow-int8", action="store_true", help="end to end with predict --allow-int8")
    args = ap.parse_args(argv)
    import torch

    from cxr_cad.model import load_bundle

    print(f"CPU: {cpu_flags()}; torch threads {torch.get_num_threads()}")
    bundle = load_bundle(args.model)
    print(
        f"model {args.model.name}: {bundle.transform_spec.image_size} px; stage tables fp32 on both sides; "
        "end to end: cxr-cad default options (precision/backend auto), MONAI fp32 eager"
    )
    results = {}
    for folder in args.folders:
        files = sorted(str(p) for p in folder.rglob("*.dcm"))[: args.n]
        ours = profile_cxr_cad(files, bundle, args.batch_size, args.repeats)
        theirs = profile_monai(files, bundle, args.batch_size, args.repeats)
        n = len(files)
        print(f"\n{folder} ({n} files), ms per image, one image at a time, fastest of {args.repeats} runs")
        print("| stage | cxr-cad | MONAI tutorial |\n| --- | ---: | ---: |")
        for stage in STAGES:
            print(f"| {stage} | {1000 * ours[stage] / n:.1f} | {1000 * theirs[stage] / n:.1f} |")
        total_o, total_t = sum(ours.values()), sum(theirs.values())
        print(f"| **total** | **{1000 * total_o / n:.1f}** | **{1000 * total_t / n:.1f}** |")
        row = {
            "stages_ms": {k: 1000 * v / n for k, v in ours.items()},
            "monai_ms": {k: 1000 * v / n for k, v in theirs.items()},
        }
        if not args.skip_end_to_end:
            rates = end_to_end(folder, args.model, args.workers, args.batch_size, args.allow_int8)
            mo = rates["model_only"]
            print(
                f"end to end over all {rates['files']} files, {args.workers} workers: MONAI {rates['monai']:.1f} "
                f"images/s; cxr-cad first run {rates['cxr_cad_first']:.1f} images/s "
                f"({rates['cxr_cad_first'] / rates['monai']:.2f}x), cached {rates['cxr_cad_cached']:.1f} images/s "
                f"(**{rates['cxr_cad_cached'] / rates['monai']:.2f}x**) on {rates['backend']}"
                + (
                    f", model-only {mo:.1f} images/s: end to end {100 * rates['cxr_cad_cached'] / mo:.0f}%"
                    if mo
                    else ""
                )
            )
            row["images_per_s"] = rates
        results[str(folder)] = row
    print(json.dumps(results, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

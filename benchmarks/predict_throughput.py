"""End-to-end throughput of ``cxr-cad predict`` on a DICOM folder, against a plain MONAI baseline.

Measures, in one run and on the same folder, model and batch size:

* **cxr-cad**: ``python -m cxr_cad predict`` (decode workers, full-resolution decode,
  bf16 autocast + channels-last where the CPU has native bf16, journaled outputs);
* **MONAI baseline**: what a MONAI tutorial does: ``LoadImaged`` with MONAI's
  ``PydicomReader``, ``ScaleIntensityd``, ``Resized`` (default mode), the same
  normalisation, ``monai.data.DataLoader`` with the same workers, fp32 eager, CSV out;
* **model only**: the ceiling, inference on pre-decoded tensors at cxr-cad's precision.

Each end-to-end path runs in its own process; its time runs from before the model is
loaded to after the CSV is written (interpreter start-up and imports excluded, the same
for both). Peak memory is sampled every 0.1 s over the process and its DataLoader
workers: the main process's RSS and the sum of PSS over the process tree (PSS splits the
pages that forked workers share, so the sum does not count them twice).

    python benchmarks/predict_throughput.py                      # 200 images, ~2 minutes
    python benchmarks/predict_throughput.py --n 10000 --skip-baseline   # memory check

Without ``--folder`` a folder is generated with ``benchmarks/make_dicom_folder.py`` under
``--work`` (needs ../shared/data/kermany-dev); without ``--model`` a randomly initialised
bundle of the default spec is written there (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _kib(pid: int, path: str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/{path}", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler(threading.Thread):
    """Peak main-process RSS and peak PSS summed over the process tree (MiB)."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_main_rss = self.peak_tree_pss = 0.0
        self.max_processes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pids = _tree_pids(self.pid)
            self.max_processes = max(self.max_processes, len(pids))
            self.peak_main_rss = max(self.peak_main_rss, _kib(self.pid, "status", "VmRSS:") / 1024)
            pss = sum(_kib(p, "smaps_rollup", "Pss:") for p in pids) / 1024
            self.peak_tree_pss = max(self.peak_tree_pss, pss)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _run_measured(cmd: list[str]) -> tuple[subprocess.CompletedProcess, MemorySampler]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "CXR_CAD_NO_PROGRESS": "1"}
    )
    sampler = MemorySampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    sampler.stop()
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return done, sampler


def run_cxr_cad(folder: Path, model: Path, out: Path, args) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "cxr_cad",
        "-q",
        "predict",
        str(folder),
        "--model",
        str(model),
        "--out",
        str(out),
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
        "--overwrite",
        "--precision",
        args.precision,
    ] + (["--compile"] if args.compile else [])
    _, mem = _run_measured(cmd)
    summary = json.loads((out / "summary.json").read_text())
    return {
        "images": summary["n_processed"],
        "seconds": summary["seconds"],
        "rss": mem.peak_main_rss,
        "pss": mem.peak_tree_pss,
        "precision": f"{summary['runtime'].get('backend', 'torch')} {summary['runtime']['precision']}",
        "rejected": summary["n_rejected"],
    }


def run_baseline(folder: Path, model: Path, out: Path, args) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_baseline",
        str(folder),
        str(model),
        str(out),
        str(args.batch_size),
        str(args.workers),
        str(args.n),
    ]
    done, mem = _run_measured(cmd)
    res = json.loads(done.stdout.strip().splitlines()[-1])
    return {**res, "rss": mem.peak_main_rss, "pss": mem.peak_tree_pss, "precision": "fp32"}


def baseline_main(folder: str, model_path: str, out_csv: str, batch_size: int, workers: int, n: int) -> None:
    """The MONAI-tutorial way: PydicomReader, ScaleIntensity, Resize, fp32 eager."""
    import torch
    from monai.data import DataLoader, Dataset, PydicomReader
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        Resized,
        ScaleIntensityd,
    )

    from cxr_cad.model import load_bundle

    t0 = time.perf_counter()
    bundle = load_bundle(model_path)
    spec = bundle.transform_spec
    files = sorted(str(p) for p in Path(folder).rglob("*.dcm"))[:n]
    chain = Compose(
        [
            LoadImaged(keys="image", reader=PydicomReader(), image_only=True),
            EnsureChannelFirstd(keys="image"),
            ScaleIntensityd(keys="image"),
            Resized(keys="image", spatial_size=(spec.image_size, spec.image_size)),
            NormalizeIntensityd(keys="image", subtrahend=list(spec.mean), divisor=list(spec.std), channel_wise=True),
            EnsureTyped(keys="image", dtype=torch.float32),
        ]
    )
    loader = DataLoader(
        Dataset([{"image": f, "path": f} for f in files], transform=chain), batch_size=batch_size, num_workers=workers
    )
    model = bundle.model.eval()
    rows = []
    with torch.no_grad():
        for batch in loader:
            probs = torch.softmax(model(batch["image"].as_tensor()), dim=1)[:, bundle.positive_index]
            rows.extend(zip(batch["path"], probs.tolist()))
    with open(out_csv, "w", encoding="utf-8") as fh:
        fh.write("path,probability\n")
        fh.writelines(f"{p},{q:.6f}\n" for p, q in rows)
    print(json.dumps({"images": len(rows), "seconds": time.perf_counter() - t0}))


def model_only(model: Path, args, precision: str) -> dict:
    """Images/s of the bare model on random pre-decoded batches (after 2 warm-up batches)."""
    import torch

    from cxr_cad import runtime
    from cxr_cad.model import load_bundle

    bundle = load_bundle(model)
    info = runtime.resolve_runtime("cpu", precision)
    net = runtime.prepare_model(bundle.model.eval(), info)
    if args.compile:
        net = torch.compile(net)
    spec = bundle.transform_spec
    x = torch.randn(args.batch_size, spec.in_channels, spec.image_size, spec.image_size)
    n_batches = max(3, min(args.n, 400) // args.batch_size)
    with torch.inference_mode(), runtime.autocast(info):
        for _ in range(2):
            net(runtime.to_device(x, info))
        t0 = time.perf_counter()
        for _ in range(n_batches):
            net(runtime.to_device(x, info)).float()
        seconds = time.perf_counter() - t0
    return {
        "images": n_batches * args.batch_size,
        "seconds": seconds,
        "rss": float("nan"),
        "pss": float("nan"),
        "precision": info.precision,
    }


def default_model(work: Path) -> Path:
    """A randomly initialised bundle with the default transform spec (written once)."""
    from cxr_cad.model import init_model, save_bundle
    from cxr_cad.transforms import TransformSpec

    path = work / "random-resnet18.pt"
    if not path.exists():
        model, _ = init_model("none", 2, 1)
        save_bundle(
            path,
            model,
            classes=["NORMAL", "PNEUMONIA"],
            positive_class="PNEUMONIA",
            transform_spec=TransformSpec(),
            threshold=0.5,
            threshold_method="fixed",
            manifest_hash="benchmark",
        )
    return path


def table(rows: dict[str, dict], baseline: str | None, ceiling: str) -> str:
    lines = [
        "| path | precision | images | seconds | images/s | vs baseline | % of model-only "
        "| peak RSS main (MiB) | peak PSS all processes (MiB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ips = {k: r["images"] / r["seconds"] for k, r in rows.items()}
    for name, r in rows.items():
        vs = f"{ips[name] / ips[baseline]:.2f}x" if baseline else "-"
        pct = f"{100 * ips[name] / ips[ceiling]:.0f}%"
        lines.append(
            f"| {name} | {r['precision']} | {r['images']} | {r['seconds']:.1f} | {ips[name]:.1f} | {vs} "
            f"| {pct} | {r['rss']:.0f} | {r['pss']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_baseline":
        folder, model, out, bs, workers, n = argv[1:7]
        baseline_main(folder, model, out, int(bs), int(workers), int(n))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, help="DICOM folder (default: generate one under --work)")
    ap.add_argument("--model", type=Path, help="model bundle (default: random weights, default spec)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cxr_cad_bench"), help="scratch folder")
    ap.add_argument("--n", type=int, default=200, help="images (generated folder size; default 200)")
    ap.add_argument("--unique", type=int, default=40, help="distinct files when generating (default 40)")
    ap.add_argument("--size", type=int, default=2000, help="longer side of generated files (default 2000)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode workers for both paths")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--compile", action="store_true", help="torch.compile in cxr-cad and model-only")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the end-to-end paths this many times, interleaved, and keep each one's best "
        "(steadier numbers on a shared machine)",
    )
    args = ap.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    folder = args.folder
    if folder is None:
        from make_dicom_folder import make_folder

        folder = args.work / f"dicom-{args.n}-{args.size}px"
        make_folder(folder, args.n, args.unique, args.size)
    model = args.model or default_model(args.work)
    rows: dict[str, dict] = {}
    print(
        f"folder {folder}, model {model}, batch {args.batch_size}, workers {args.workers}, {os.cpu_count()} CPU(s)",
        file=sys.stderr,
    )
    paths = {"cxr-cad predict": lambda: run_cxr_cad(folder, model, args.work / "out-cxr-cad", args)}
    if not args.skip_baseline:
        paths["MONAI baseline (PydicomReader, fp32)"] = lambda: run_baseline(
            folder, model, args.work / "baseline.csv", args
        )
    for _ in range(max(1, args.repeats)):
        for name, run in paths.items():
            res = run()
            if name not in rows or res["seconds"] < rows[name]["seconds"]:
                rows[name] = res
    ran = rows["cxr-cad predict"]["precision"]  # "openvino fp32", "torch bf16": model-only is torch's
    rows["model only (pre-decoded)"] = model_only(model, args, "bf16" if ran.endswith("bf16") else "fp32")
    print(subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout, file=sys.stderr)
    print(
        table(rows, None if args.skip_baseline else "MONAI baseline (PydicomReader, fp32)", "model only (pre-decoded)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

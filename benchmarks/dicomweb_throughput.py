"""Throughput of ``cxr-cad predict`` from a loopback Orthanc (DICOMweb) against the same images in a folder.

Both runs score the same DICOM files with the same model, batch size and decode workers,
each in its own ``python -m cxr_cad predict`` process; the time is the run's own
``summary.json`` ``seconds`` (model loading to final CSV, interpreter start-up excluded,
the same for both). The DICOMweb run includes the QIDO-RS listing, the WADO-RS fetches
(overlapped with scoring, ``--fetch-chunk`` instances at a time), spooling, one engine run
per chunk, and the journal. Each mode runs ``--repeat`` times, alternating; the best is kept.

    python benchmarks/dicomweb_throughput.py                 # 96 CR files of 1024 px, ~3 minutes
    python benchmarks/dicomweb_throughput.py --n 400 --size 2000 --fetch-chunk 128

Without ``--folder`` a folder of distinct CR files (four transfer syntaxes, see
``make_dicom_folder.py``; needs ../shared/data/kermany-dev) is generated under ``--work``.
Orthanc (Debian packages ``orthanc`` + ``orthanc-dicomweb``) is started privately on
127.0.0.1 with free ports, as in the tests, and stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))


def run_predict(source: str, out: Path, model: Path, args, env: dict) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "cxr_cad",
        "-q",
        "predict",
        source,
        "--model",
        str(model),
        "--out",
        str(out),
        "--overwrite",
        "--batch-size",
        str(args.batch_size),
        "--fetch-chunk",
        str(args.fetch_chunk),
    ]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} failed: {done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    n = summary.get("n_processed", 0)
    return {"seconds": summary["seconds"], "images": n, "images_per_s": n / summary["seconds"]}


def main() -> None:
    from predict_throughput import default_model

    from tests.factories.orthanc import PASSWORD, USER, skip_reason, start_orthanc

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", type=Path, default=None, help="DICOM folder (default: generated)")
    ap.add_argument("--model", type=Path, default=None, help="bundle (default: random weights, default spec)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "dicomweb_bench")
    ap.add_argument("--n", type=int, default=96, help="files to generate (default 96, all distinct)")
    ap.add_argument("--size", type=int, default=1024, help="longer side of generated files (default 1024)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: predict's)")
    ap.add_argument("--fetch-chunk", type=int, default=64, help="DICOMweb instances per chunk (default 64)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if skip_reason():
        raise SystemExit(skip_reason())
    args.work.mkdir(parents=True, exist_ok=True)
    folder = args.folder
    if folder is None:
        folder = args.work / f"folder_{args.n}_{args.size}"
        if not folder.exists():
            subprocess.run(
                [
                    sys.executable,
                    str(HERE / "make_dicom_folder.py"),
                    str(folder),
                    "--n",
                    str(args.n),
                    "--unique",
                    str(args.n),
                    "--size",
                    str(args.size),
                ],
                check=True,
            )
    files = sorted(p for p in folder.rglob("*.dcm"))
    model = args.model or default_model(args.work)
    server = start_orthanc(args.work / f"orthanc-{os.getpid()}")
    try:
        t0 = time.perf_counter()
        for p in files:
            server.upload(p)
        upload_s = time.perf_counter() - t0
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            CXR_CAD_DICOMWEB_USER=USER,
            CXR_CAD_DICOMWEB_PASSWORD=PASSWORD,
            CXR_CAD_NO_PROGRESS="1",
        )
        results: dict[str, list[dict]] = {"folder": [], "dicomweb": []}
        for _ in range(args.repeat):
            results["folder"].append(run_predict(str(folder), args.work / "out_folder", model, args, env))
            results["dicomweb"].append(
                run_predict(f"dicomweb:{server.dicomweb}", args.work / "out_dicomweb", model, args, env)
            )
    finally:
        server.stop()
    best = {k: max(v, key=lambda r: r["images_per_s"]) for k, v in results.items()}
    ratio = best["dicomweb"]["images_per_s"] / best["folder"]["images_per_s"]
    print(
        f"{len(files)} DICOM files ({args.size} px, {folder}); upload to Orthanc {upload_s:.1f} s (not timed below); "
        f"batch {args.batch_size}, fetch chunk {args.fetch_chunk}, best of {args.repeat}"
    )
    print("| source | images | seconds | images/s |")
    print("| --- | ---: | ---: | ---: |")
    for name, label in (("folder", "folder"), ("dicomweb", "loopback Orthanc, DICOMweb")):
        r = best[name]
        print(f"| {label} | {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.2f} |")
    print(f"DICOMweb / folder throughput: {ratio:.0%} (target >= 70%)")
    (args.work / "result.json").write_text(
        json.dumps({"results": results, "ratio": ratio, "n": len(files), "upload_s": upload_s}, indent=2)
    )


if __name__ == "__main__":
    main()

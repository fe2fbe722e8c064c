"""Where an int8 forward pass spends its time: OpenVINO per-layer counters vs torch bf16 per-op.

Explains the backends table (README "Measured figures"): run on an exported folder made by
`cxr-cad export --format openvino --int8 ...` (model.int8.xml) and its source bundle.

    python benchmarks/int8_profile.py --openvino-dir EXPORT_DIR --model M.pt [--batch 32 --iters 5]

Prints, per layer type and kernel (OpenVINO's exec_type, e.g. jit_avx512_amx_I8 or ref_...),
the share of the int8 forward time, then torch bf16's per-op shares from torch.profiler.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np
import torch


def openvino_profile(xml: str, batch: int, iters: int, size: int) -> tuple[float, list[tuple[str, float]]]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(xml, "CPU", {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": "2"})
    req = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((batch, 1, size, size)).astype(np.float32)
    req.infer({0: x})  # warm-up
    totals: dict[str, float] = collections.defaultdict(float)
    t0 = time.perf_counter()
    for _ in range(iters):
        req.infer({0: x})
        for p in req.profiling_info:
            totals[f"{p.node_type} [{p.exec_type}]"] += p.real_time.total_seconds()
    wall = (time.perf_counter() - t0) / iters
    return batch / wall, sorted(totals.items(), key=lambda kv: -kv[1])


def torch_profile(bundle: str, batch: int, iters: int, size: int) -> tuple[float, list[tuple[str, float]]]:
    from cxr_cad import runtime
    from cxr_cad.inference.predict import prepare_for_inference
    from cxr_cad.model import load_bundle

    info = runtime.resolve_runtime("cpu", "bf16")
    model = prepare_for_inference(load_bundle(bundle).model, info)  # exactly what `predict` runs
    x = runtime.to_device(torch.randn(batch, 1, size, size), info)
    with torch.inference_mode(), runtime.autocast(info):
        model(x)
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                model(x)
        wall = (time.perf_counter() - t0) / iters
    rows = [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()]
    return batch / wall, sorted(rows, key=lambda kv: -kv[1])


def _print(title: str, rate: float, rows: list[tuple[str, float]], top: int = 10) -> None:
    total = sum(t for _, t in rows) or 1.0
    print(f"\n{title}: {rate:.1f} images/s (profiled, counters on)")
    print(f"{'layer type [kernel]':60s} {'share':>7s}")
    for name, t in rows[:top]:
        print(f"{name[:60]:60s} {100 * t / total:6.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--openvino-dir", required=True)
    ap.add_argument("--model", required=True, help="the source bundle (.pt)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    torch.set_num_threads(2)
    rate, rows = openvino_profile(f"{a.openvino_dir}/model.int8.xml", a.batch, a.iters, a.size)
    _print("OpenVINO int8", rate, rows)
    rate, rows = torch_profile(a.model, a.batch, a.iters, a.size)
    _print("torch bf16 (autocast, channels-last)", rate, rows)


if __name__ == "__main__":
    main()

"""Training throughput at 224 px: the project's training step against plain fp32 eager PyTorch.

Same model (cxr_cad.model.build_resnet18, 2 classes, 1 channel), same batch size, same
synthetic batch, same SGD settings, measured in the same invocation. Each variant runs in
its own subprocess so its peak RSS (``resource.getrusage``) is its own. Prints a markdown
table; ``--json`` also writes the numbers.

Variants:
  * ``fp32-eager``: plain PyTorch (contiguous NCHW, no autocast) — the baseline.
  * ``project``: ``cxr_cad.training.loop.train_step`` with the runtime chosen by
    ``resolve_runtime("cpu", "auto")`` (bf16 autocast + channels-last on CPUs with native
    bf16, else fp32).
  * ``project+compile`` (``--compile``): the same, with ``torch.compile``.

Usage::

    python benchmarks/train_throughput.py                 # ~1-2 minutes on a small CPU
    python benchmarks/train_throughput.py --steps 20 --batch-size 64 --compile
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _measure(variant: str, image_size: int, batch_size: int, steps: int, warmup: int, threads: int | None) -> dict:
    import torch

    from cxr_cad.model import build_resnet18
    from cxr_cad.runtime import RuntimeInfo, prepare_model, resolve_runtime, to_device
    from cxr_cad.training.loop import train_step

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_resnet18(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch_size, 1, image_size, image_size)
    y = torch.randint(0, 2, (batch_size,))
    if variant == "fp32-eager":
        info = RuntimeInfo("cpu", "fp32", False)
        model.train()

        def step():
            loss = criterion(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss
    else:
        info = resolve_runtime("cpu", "auto")
        prepare_model(model, info)
        model.train()
        module = torch.compile(model) if variant == "project+compile" else model
        xb = to_device(x, info)

        def step():
            return train_step(module, xb, y, criterion, opt, info)

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss)
    secs = time.perf_counter() - t0
    return {
        "variant": variant,
        "precision": info.precision,
        "channels_last": info.channels_last,
        "images_per_s": steps * batch_size / secs,
        "step_s": secs / steps,
        "warmup_s": warm_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compile happens here)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    a = ap.parse_args(argv)
    if a.variant:
        print(json.dumps(_measure(a.variant, a.image_size, a.batch_size, a.steps, a.warmup, a.threads)))
        return 0
    variants = ["fp32-eager", "project"] + (["project+compile"] if a.compile else [])
    results = []
    for v in variants:
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            v,
            "--image-size",
            str(a.image_size),
            "--batch-size",
            str(a.batch_size),
            "--steps",
            str(a.steps),
            "--warmup",
            str(a.warmup),
        ]
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = results[0]["images_per_s"]
    print(
        f"Training throughput, ResNet18, {a.image_size}x{a.image_size}, batch {a.batch_size}, "
        f"{a.steps} timed steps after {a.warmup} warm-up, {results[0]['threads']} threads, "
        f"torch {results[0]['torch']}\n"
    )
    print("| variant | precision | channels-last | images/s | s/step | speed-up | peak RSS MiB |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['variant']} | {r['precision']} | {r['channels_last']} | {r['images_per_s']:.1f} | "
            f"{r['step_s']:.2f} | {r['images_per_s'] / base:.2f}x | {r['peak_rss_mib']:.0f} |"
        )
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

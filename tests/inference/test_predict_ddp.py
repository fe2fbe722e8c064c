"""``torchrun --nproc_per_node 2 -m cxr_cad predict``: two CPU processes (gloo), one merged result."""

from __future__ import annotations

import subprocess
import sys

from cxr_cad.cli import main
from tests.inference.test_predict import bundle_path, read_csv, write_images  # noqa: F401 -- bundle fixture


def _args(src, bundle, out) -> list[str]:
    return [
        "-m",
        "cxr_cad",
        "-q",
        "predict",
        str(src),
        "--model",
        str(bundle),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--precision",
        "fp32",
        "--device",
        "cpu",
    ]


def test_two_processes_equal_single_process(tmp_path, bundle_path):
    bundle = bundle_path
    src = tmp_path / "in"
    write_images(src, 13, size=64)
    (src / "zz_junk.txt").write_text("junk")
    (src / "a_empty.png").write_bytes(b"")

    assert main(_args(src, bundle, tmp_path / "single")[2:]) == 0
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            *_args(src, bundle, tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("cxr-cad predict:") == 1  # only rank 0 prints the summary

    parts = sorted(p.name for p in (tmp_path / "ddp" / ".predict").glob("part-rank*.jsonl"))
    assert parts == ["part-rank0.jsonl", "part-rank1.jsonl"]
    a, b = read_csv(tmp_path / "single" / "predictions.csv"), read_csv(tmp_path / "ddp" / "predictions.csv")
    assert [r["path"] for r in a] == [r["path"] for r in b] and len(a) == 13
    for ra, rb in zip(a, b):
        assert abs(float(ra["probability"]) - float(rb["probability"])) <= 2e-6
        assert {k: v for k, v in ra.items() if k != "probability"} == {
            k: v for k, v in rb.items() if k != "probability"
        }
    assert (tmp_path / "single" / "rejected.csv").read_text() == (tmp_path / "ddp" / "rejected.csv").read_text()
    assert len(read_csv(tmp_path / "ddp" / "rejected.csv")) == 2

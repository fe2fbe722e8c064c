"""Class 5: a real full disk (1 MiB tmpfs, root only): exit 1, one line naming the folder,
outputs complete or absent, and predict resumes once space is freed."""
from __future__ import annotations

import csv
import os

from tests.hostile import inputs as H
from tests.hostile.runner import run_cli


def _check_failure(o, folder) -> None:
    assert o.rc == 1, o.stderr
    assert not o.has_traceback, o.stderr
    assert len(o.stderr_lines) == 1, o.stderr
    assert str(folder) in o.last_line


def _leftovers(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if ".tmp" in n) if folder.exists() else []


def test_predict_on_full_disk_then_resume(tmp_path, bundle, full_disk):
    disk, filler = full_disk
    H.write_pngs(tmp_path / "imgs", n=3)
    out = disk / "pred"
    o = run_cli(["predict", tmp_path / "imgs", "--model", bundle, "--out", out, "--workers", "0"], timeout=120)
    _check_failure(o, out)
    assert not (out / "predictions.csv").exists() and _leftovers(out) == []
    filler.unlink()
    o = run_cli(["predict", tmp_path / "imgs", "--model", bundle, "--out", out, "--workers", "0"], timeout=120)
    assert o.rc == 0, o.stderr
    with open(out / "predictions.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 3


def test_ingest_on_full_disk_writes_all_or_nothing(tmp_path, full_disk):
    disk, filler = full_disk
    src = tmp_path / "imgs"
    H.write_pngs(src, n=400, size=16)   # a manifest of several 100 kB: more than the disk holds
    out = disk / "ing"
    filler.write_bytes(b"\0" * (900 << 10))   # ~100 kB left: the first output fits, the rest not
    o = run_cli(["ingest", src, "--out", out], timeout=180)
    _check_failure(o, out)
    assert sorted(os.listdir(out)) == [], "no output may be written unless all are"


def test_train_on_full_disk(tmp_path, full_disk):
    disk, _ = full_disk
    from tests.synth import write_png_cohort
    write_png_cohort(tmp_path / "c", n_patients=8, images_per_patient=1, size=64)
    out = disk / "train"
    o = run_cli(["train", "--manifest", tmp_path / "c" / "manifest.csv", "--out", out, "--init", "none",
                 "--epochs", "1", "--image-size", "64", "--batch-size", "4", "--workers", "0",
                 "--device", "cpu"], timeout=300)
    _check_failure(o, out)

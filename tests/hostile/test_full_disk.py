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
    o = run_cli(["predict", tmp_path / "imgs", "--model", bundle, "--out", out, "--workers", "0"], timeout=600)
    _check_failure(o, out)
    assert not (out / "predictions.csv").exists() and _leftovers(out) == []
    filler.unlink()
    o = run_cli(["predict", tmp_path / "imgs", "--model", bundle, "--out", out, "--workers", "0"], timeout=600)
    assert o.rc == 0, o.stderr
    with open(out / "predictions.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 3


def test_ingest_on_full_disk_writes_all_or_nothing(tmp_path, full_disk):
    disk, filler = full_disk
    src = tmp_path / "imgs"
    H.write_pngs(src, n=4)
    out = disk / "ing"
    o = run_cli(["ingest", src, "--out", out], timeout=600)
    _check_failure(o, out)
    assert sorted(os.listdir(out)) == [], "no output may be written unless all are"
    # (that no file is replaced unless all can be is checked below, failing the last one)


def test_train_on_full_disk(tmp_path, full_disk):
    disk, _ = full_disk
    from tests.factories.synth import write_png_cohort

    write_png_cohort(tmp_path / "c", n_patients=8, images_per_patient=1, size=64)
    out = disk / "train"
    o = run_cli(
        [
            "train",
            "--manifest",
            tmp_path / "c" / "manifest.csv",
            "--out",
            out,
            "--init",
            "none",
            "--epochs",
            "1",
            "--image-size",
            "64",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--device",
            "cpu",
        ],
        timeout=600,
    )
    _check_failure(o, out)


def test_multi_file_outputs_are_a_unit(tmp_path, monkeypatch):
    """The third of three files fails (ENOSPC): no file is replaced, no temporary file is left."""
    import errno
    import tempfile

    import pytest

    from cxr_cad.core.atomic import atomic_write_many
    from cxr_cad.errors import OutputError

    names = ["manifest.csv", "rejected.csv", "ingest.json"]
    for n in names:
        (tmp_path / n).write_text("old")
    real, calls = tempfile.mkstemp, []

    def mkstemp(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(OutputError, match=f"No space left.*in {tmp_path}|in {tmp_path}.*No space left"):
        atomic_write_many({tmp_path / n: "new" for n in names})
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    assert all((tmp_path / n).read_text() == "old" for n in names)


def test_predict_outputs_fill_the_disk_mid_run(tmp_path, monkeypatch):
    """A disk that fills while predictions.csv/rejected.csv are merged or a journal is appended:
    OutputError naming the folder, the old tables untouched, no temporary file left."""
    import errno
    import json

    import pytest

    from cxr_cad.errors import OutputError
    from cxr_cad.inference import outputs as writer

    out = tmp_path / "out"
    (out / writer.STATE_DIR).mkdir(parents=True)
    rec = {"index": 0, "kind": "rejected", "path": "a", "reason": "UNREADABLE", "detail": "x"}
    (out / writer.STATE_DIR / "part-rank0.jsonl").write_text(json.dumps(rec) + "\n")
    (out / writer.PREDICTIONS).write_text("old")
    (out / writer.REJECTED).write_text("old")
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.os, "fsync", full)
    with pytest.raises(OutputError, match="No space left.*free space"):
        writer.merge_outputs(out, 1, with_label=False)
    assert (out / writer.PREDICTIONS).read_text() == "old" and (out / writer.REJECTED).read_text() == "old"
    assert not [n for n in os.listdir(out) if ".tmp" in n]
    with writer.Journal(out) as journal, pytest.raises(OutputError, match=str(out)):
        journal.append([{**rec, "index": 1}])
    monkeypatch.setattr(writer.os, "fsync", real)
    assert len(writer.merge_outputs(out, 1, with_label=False)) == 1

"""Issue 25.1: `cxr-cad train` cannot keep or save a broken model (cxr_cad.training.guards).

Each case exited 0 before the guards: a 3-patient and a 4-image manifest ("best epoch: None;
validation AUC n/a; threshold 0.5000 (fixed)"), `--optimizer adamw --lr 10` (a bundle with
validation AUC 0.5 and threshold 0.0000), and a full disk reported a temporary folder instead
of the run folder the user gave.
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

from cxr_cad.cli import main
from tests.factories.synth import write_png_cohort

TRAIN = ["--init", "none", "--epochs", "2", "--image-size", "64", "--batch-size", "4", "--workers", "0"]
TRAIN += ["--device", "cpu"]


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    return [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("INFO ", "WARNING ", "DEBUG "))]


def _train(tmp_path, n_patients: int, images: int, *extra: str, out: str = "run") -> int:
    root = tmp_path / "c"
    if not root.exists():
        write_png_cohort(root, n_patients=n_patients, images_per_patient=images, size=64)
    return main(["train", "--manifest", str(root / "manifest.csv"), "--out", str(tmp_path / out), *TRAIN, *extra])


def test_three_patients_are_refused_naming_the_counts(tmp_path, capsys):
    assert _train(tmp_path, 3, 1) == 2
    text = " ".join(_errors(capsys))
    assert "NORMAL 1, PNEUMONIA 1 image(s) per class" in text and "at least 2 images of every class" in text
    assert "NORMAL 0, PNEUMONIA 1 patient(s)" in text and "at least 1 patient(s) of every class" in text
    assert "--force" in text
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_four_images_are_refused(tmp_path, capsys):
    assert _train(tmp_path, 4, 1) == 2
    text = " ".join(_errors(capsys))
    assert "validation side" in text and "NORMAL 1, PNEUMONIA 0 patient(s)" in text
    assert not (tmp_path / "run").exists()
    # --force keeps today's behaviour for experiments, and says so in the bundle and its card
    assert _train(tmp_path, 4, 1, "--force", "--epochs", "1") == 0
    card = (tmp_path / "run" / "model_card.md").read_text()
    assert "forced: cohort: the validation side" in card
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert any(f.startswith("cohort: ") for f in result["forced"])


def test_a_diverging_run_exits_1_without_a_bundle_and_says_why(tmp_path, capsys):
    # 28 patients: the validation split has 6 images per class, enough for the chance guard
    rc = _train(tmp_path, 28, 2, "--optimizer", "adamw", "--lr", "10")
    assert rc == 1
    lines = _errors(capsys)
    assert len(lines) == 1 and str(tmp_path / "run") in lines[0], lines
    assert "no better than chance" in lines[0] or "non-finite" in lines[0]
    assert not (tmp_path / "run" / "model.pt").exists() and not (tmp_path / "run" / "result.json").exists()
    failed = json.loads((tmp_path / "run" / "failed.json").read_text())
    assert failed["bundle_written"] is False and failed["reason"] in lines[0] and failed["epochs"]
    # the same command again fails the same way (the checkpoint resumes, the guard looks at every epoch)
    assert _train(tmp_path, 28, 2, "--optimizer", "adamw", "--lr", "10") == 1
    capsys.readouterr()
    # --force finishes the refused run folder; the bundle and the card record what was forced
    assert _train(tmp_path, 28, 2, "--optimizer", "adamw", "--lr", "10", "--force") == 0
    assert not (tmp_path / "run" / "failed.json").exists()
    from cxr_cad.model import load_bundle

    training = load_bundle(tmp_path / "run" / "model.pt").meta["extra"]["training"]
    assert training["forced"] and training["forced"][0].startswith("training: ")
    assert "forced: training: " in (tmp_path / "run" / "model_card.md").read_text()


def test_a_disk_that_fills_in_the_cache_names_the_run_folder(tmp_path, capsys, monkeypatch):
    """MONAI writes each cache file into a system temporary folder and moves it: the error named
    that folder (`no space left to write in /tmp/tmpXXXX`), never the user's run folder."""

    def full(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    monkeypatch.setattr(shutil, "move", full)
    assert _train(tmp_path, 8, 1) == 1
    lines = _errors(capsys)
    assert len(lines) == 1, lines
    assert f"the run folder {tmp_path / 'run'}" in lines[0] and "No space left" in lines[0]
    assert "/tmp/tmp" not in lines[0].replace(str(tmp_path), "")


def test_a_real_full_disk_names_the_run_folder(tmp_path, full_disk):
    """The same on a 1 MiB tmpfs with 60 KiB left: the run files fit, the image cache does not."""
    from tests.hostile.runner import run_cli

    disk, filler = full_disk
    os.truncate(filler, os.path.getsize(filler) - 60 * 1024)
    write_png_cohort(tmp_path / "c", n_patients=8, images_per_patient=1, size=64)
    out = disk / "train"
    o = run_cli(["train", "--manifest", tmp_path / "c" / "manifest.csv", "--out", out, *TRAIN], timeout=600)
    assert o.rc == 1 and not o.has_traceback, o.stderr
    assert f"the run folder {out}" in o.last_line, o.stderr
    assert not (out / "model.pt").exists()


@pytest.mark.parametrize("folds", [3])
def test_crossval_refuses_folds_too_small_before_training(tmp_path, capsys, folds):
    write_png_cohort(tmp_path / "c", n_patients=6, images_per_patient=1, size=64)
    argv = ["crossval", "--manifest", str(tmp_path / "c" / "manifest.csv"), "--out", str(tmp_path / "cv")]
    assert main([*argv, "--folds", str(folds), "--workers", "0", "--device", "cpu"]) == 2
    text = " ".join(_errors(capsys))
    assert "fold 0" in text and "patient(s) of every class" in text and "--force" in text
    assert not (tmp_path / "cv").exists()

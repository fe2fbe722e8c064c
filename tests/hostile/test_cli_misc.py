"""Classes 6 and 7 (the parts owned here): silent inconsistencies refused with exit 2, file modes
that follow the umask, -q/-v after the command name, line-based progress off a terminal."""

from __future__ import annotations

import io
import os
import stat
import sys

import pandas as pd
import pytest

from cxr_cad.cli import build_parser, main
from cxr_cad.core import progress as progress_mod
from tests.hostile import inputs as H

TRAIN = ["--epochs", "1", "--image-size", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu"]


def _errors(capsys) -> list[str]:
    return [
        ln
        for ln in capsys.readouterr().err.splitlines()
        if ln.strip() and not ln.startswith(("INFO", "WARNING", "DEBUG"))
    ]


def test_out_equal_to_the_input_is_refused(tmp_path, capsys):
    H.write_pngs(tmp_path / "imgs", n=2)
    assert main(["ingest", str(tmp_path / "imgs"), "--out", str(tmp_path / "imgs")]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "output folder" in err[0]
    assert not (tmp_path / "imgs" / "manifest.csv").exists()
    # an output folder inside the input is still fine (it is skipped)
    assert main(["ingest", str(tmp_path / "imgs"), "--out", str(tmp_path / "imgs" / "out")]) == 0


def test_patient_id_pattern_needs_a_group(tmp_path, capsys):
    from tests.factories.synth import write_png_cohort

    write_png_cohort(tmp_path / "c", n_patients=4, images_per_patient=1, size=32)
    assert main(["ingest", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--patient-id-pattern", "P"]) == 2
    assert "capture group" in _errors(capsys)[0]
    assert main(["ingest", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--patient-id-pattern", r"^(P\d+)-"]) == 0
    assert pd.read_csv(tmp_path / "o" / "manifest.csv")["patient_id"].nunique() == 4


def test_one_class_training_is_refused(tmp_path, capsys):
    from tests.factories.synth import write_png_cohort

    write_png_cohort(tmp_path / "c", n_patients=8, images_per_patient=1, size=64)
    df = pd.read_csv(tmp_path / "c" / "manifest.csv")
    df["label"] = "NORMAL"
    df.to_csv(tmp_path / "c" / "one.csv", index=False)
    rc = main(
        [
            "train",
            "--manifest",
            str(tmp_path / "c" / "one.csv"),
            "--out",
            str(tmp_path / "o"),
            "--init",
            "none",
            "--classes",
            "NORMAL,PNEUMONIA",
            "--positive-class",
            "PNEUMONIA",
            *TRAIN,
        ]
    )
    assert rc == 2
    assert "PNEUMONIA" in " ".join(_errors(capsys))
    assert not (tmp_path / "o" / "model.pt").exists()


def test_init_typo_exits_2(tmp_path, capsys):
    from tests.factories.synth import write_png_cohort

    write_png_cohort(tmp_path / "c", n_patients=4, images_per_patient=1, size=32)
    rc = main(
        [
            "train",
            "--manifest",
            str(tmp_path / "c" / "manifest.csv"),
            "--out",
            str(tmp_path / "o"),
            "--init",
            "imagenett",
            *TRAIN,
        ]
    )
    assert rc == 2
    assert "imagenett" in _errors(capsys)[-1]


@pytest.mark.parametrize(
    "argv,quiet,verbose",
    [
        (["-q", "ingest", "x", "--out", "y"], True, 0),
        (["ingest", "x", "--out", "y", "-q"], True, 0),
        (["ingest", "x", "-vv", "--out", "y"], False, 2),
        (["-v", "ingest", "x", "--out", "y"], False, 1),
        (["ingest", "x", "--out", "y"], False, 0),
    ],
)
def test_quiet_and_verbose_in_both_places(argv, quiet, verbose):
    args = build_parser().parse_args(argv)
    assert (args.quiet, args.verbose) == (quiet, verbose)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(tmp_path, umask):
    import pandas as pd
    import torch

    from cxr_cad.core.atomic import atomic_write, atomic_write_many, atomic_write_text
    from cxr_cad.manifest import write_table

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "run.json", "a")
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "report.html")
        atomic_write_many({tmp_path / "m.csv": "x", tmp_path / "r.csv": "y"})
        atomic_write(tmp_path / "checkpoint.pt", lambda fh: torch.save({"x": torch.zeros(1)}, fh))
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("z")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for name in ("run.json", "report.html", "m.csv", "r.csv", "checkpoint.pt", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name


def test_progress_off_a_terminal_prints_few_whole_lines(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    monkeypatch.setattr(progress_mod, "_enabled", True)
    for _ in progress_mod.progress(range(5000), desc="work", unit="img"):
        pass
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue()
    assert 1 <= len(lines) <= 3, lines
    assert "5000/5000" in lines[-1]

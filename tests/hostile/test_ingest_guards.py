"""Issues 20 and 25, the measured cases: patient identity of public-collection file names,
ingest that cannot silently succeed on nothing, the accession number as a label key, and
progress off a terminal without control codes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from cxr_cad.cli import main
from cxr_cad.core.progress import LOG_INTERVAL_S
from tests.manifest.test_scan import write_png

TRAIN = ["--epochs", "1", "--image-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu"]


def _nih(root: Path, patients: int = 4, images: int = 3, seed: int = 0) -> None:
    """ChestX-ray14 names: ``PPPPPPPP_SSS.png``, several images per patient."""
    for p in range(patients):
        for k in range(images):
            write_png(root / f"{129 + p:08d}_{k:03d}.png", seed=seed + 10 * p + k)


def _ingest(tmp_path: Path, src: Path, *extra: str) -> tuple[int, dict | None]:
    out = tmp_path / "out"
    rc = main(["ingest", str(src), "--out", str(out), "--workers", "1", *extra])
    info = json.loads((out / "ingest.json").read_text()) if (out / "ingest.json").exists() else None
    return rc, info


def test_nih_names_are_one_patient_each_not_one_per_file(tmp_path, capsys):
    _nih(tmp_path / "images")
    rc, info = _ingest(tmp_path, tmp_path / "images")
    assert rc == 0 and info is not None
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str)
    assert sorted(set(manifest["patient_id"])) == ["00000129", "00000130", "00000131", "00000132"]
    assert info["counts"]["patients"] == 4
    rule = info["patient_id_rule"]
    assert (rule["pattern_name"], rule["chosen"], rule["from_pattern"]) == ("nih", "detected", 12)
    assert rule["warning"] is None and rule["shipped_pattern_matches"]["nih"] == 12
    assert "(nih, detected) 12" in capsys.readouterr().out


@pytest.mark.parametrize(
    "layout,expected",
    [
        (
            [
                "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
                "CheXpert-v1.0-small/train/patient00001/study2/view1_frontal.jpg",
                "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
            ],
            ("chexpert", ["patient00001", "patient00001", "patient64541"]),
        ),
        (
            [
                "files/p10/p10000032/s50414267/02aa804e-bde0afdd.jpg",
                "files/p10/p10000032/s53189527/2a2277a9-b0ded155.jpg",
                "files/p11/p11000011/s51029426/4bd1a0d9-31c4a0b2.jpg",
            ],
            ("mimic", ["10000032", "10000032", "11000011"]),
        ),
        (
            ["NORMAL/IM-0115-0001.jpeg", "NORMAL/NORMAL2-IM-1427-0001.jpeg", "PNEUMONIA/person1000_bacteria_2931.jpeg"],
            ("kermany", ["IM-0115", "NORMAL2-IM-1427", "person1000"]),
        ),
    ],
)
def test_the_collection_pattern_is_detected_from_paths(tmp_path, layout, expected):
    for i, rel in enumerate(layout):
        write_png(tmp_path / "src" / rel, seed=i)
    rc, info = _ingest(tmp_path, tmp_path / "src")
    assert rc == 0 and info is not None
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str).sort_values("path")
    order = sorted(range(len(layout)), key=lambda i: str(Path("../src") / layout[i]))
    assert (info["patient_id_rule"]["pattern_name"], manifest["patient_id"].tolist()) == (
        expected[0],
        [expected[1][i] for i in order],
    )
    assert info["patient_id_rule"]["warning"] is None
    # the same names given by name: the same ids
    rc, _ = _ingest(tmp_path, tmp_path / "src", "--patient-id-pattern", expected[0])
    assert rc == 0


def test_names_no_pattern_matches_warn_on_screen_and_in_ingest_json(tmp_path, capsys):
    for i in range(5):
        write_png(tmp_path / "src" / f"scan_{i:03d}.png", seed=i)
    rc, info = _ingest(tmp_path, tmp_path / "src")
    assert rc == 0 and info is not None
    rule = info["patient_id_rule"]
    assert rule["chosen"] == "none matched" and rule["from_file_stem"] == 5
    assert "0 of 5" in rule["warning"] and "Shipped patterns that match: none" in rule["warning"]
    captured = capsys.readouterr()
    assert "WARNING: patient ids:" in captured.out and "0 of 5" in captured.err  # summary and log
    # one image per patient on purpose: 'stem' says so, and the warning goes
    rc, info = _ingest(tmp_path, tmp_path / "src", "--patient-id-pattern", "stem")
    assert rc == 0 and info is not None and info["patient_id_rule"]["warning"] is None
    assert info["counts"]["patients"] == 5


def test_a_pattern_matching_under_90_percent_names_the_ones_that_match(tmp_path, capsys):
    _nih(tmp_path / "src", patients=3, images=3)  # 9 NIH names
    write_png(tmp_path / "src" / "site_b_0001.png", seed=99)  # and one other: nih matches 9 of 10
    rc, info = _ingest(tmp_path, tmp_path / "src", "--patient-id-pattern", r"^(\d{8})_00[01]")
    assert rc == 0 and info is not None
    rule = info["patient_id_rule"]
    assert (rule["chosen"], rule["from_pattern"], rule["from_file_stem"]) == ("given", 6, 4)
    assert rule["shipped_pattern_matches"]["nih"] == 9
    assert "6 of 10" in rule["warning"] and "nih (9 of 10)" in rule["warning"]
    assert "nih (9 of 10)" in capsys.readouterr().out


def test_a_given_pattern_that_matches_no_name_is_exit_2(tmp_path, capsys):
    _nih(tmp_path / "src")
    rc, info = _ingest(tmp_path, tmp_path / "src", "--patient-id-pattern", r"^(person\d+)_")
    assert rc == 2 and info is None
    err = capsys.readouterr().err
    assert "matches none of the 12 PNG/JPEG file names" in err and "nih (12 of 12)" in err
    assert not (tmp_path / "out" / "manifest.csv").exists()
    rc, _ = _ingest(tmp_path, tmp_path / "src", "--patient-id-pattern", "kermany")  # a name, not a regex
    assert rc == 2 and "nih (12 of 12)" in capsys.readouterr().err


def test_ingest_of_an_empty_folder_is_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, info = _ingest(tmp_path, tmp_path / "empty")
    assert rc == 2 and info is None
    err = capsys.readouterr().err
    assert str(tmp_path / "empty") in err and "no file found" in err
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_ingest_with_no_accepted_image_is_exit_2_and_lists_the_reasons(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    for i in range(3):
        (tmp_path / "src" / f"notes{i}.txt").write_text("not an image")
    rc, info = _ingest(tmp_path, tmp_path / "src")
    assert rc == 2
    err = capsys.readouterr().err
    assert "no image was accepted" in err and str(tmp_path / "src") in err and "NOT_DICOM 3" in err
    assert "rejected.csv" in err
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv", dtype=str)
    assert len(rejected) == 3 and set(rejected["reason"]) == {"NOT_DICOM"}  # each file and why
    assert info is not None and info["counts"]["accepted"] == 0


def _accession_cohort(root: Path) -> list[dict]:
    from tests.factories.dicom import write_dicom

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(4):  # accession A0 = img0 + img1 (one study), A1 = img2 + img3
        acc = f"ACCX{i // 2:04d}"
        write_dicom(root / f"img{i}.dcm", patient_id=f"PAT{i}", extra={"AccessionNumber": acc})
        rows.append({"name": f"img{i}.dcm", "accession_number": acc})
    return rows


@pytest.mark.parametrize("given", [True, False])
def test_labels_keyed_by_accession_number(tmp_path, capsys, given):
    _accession_cohort(tmp_path / "in")
    pd.DataFrame(
        {"accession_number": ["ACCX0000", "ACCX0001", "ACCX0009"], "label": ["NORMAL", "PNEUMONIA", "NORMAL"]}
    ).to_csv(tmp_path / "labels.csv", index=False)
    key = ["--label-key", "accession_number"] if given else []
    rc, info = _ingest(
        tmp_path, tmp_path / "in", "--labels", str(tmp_path / "labels.csv"), "--classes", "NORMAL,PNEUMONIA", *key
    )
    assert rc == 0, capsys.readouterr().err
    assert info is not None
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str)
    got = dict(zip(manifest["path"].map(lambda p: p.rsplit("/", 1)[-1]), manifest["label"]))
    assert got == {"img0.dcm": "NORMAL", "img1.dcm": "NORMAL", "img2.dcm": "PNEUMONIA", "img3.dcm": "PNEUMONIA"}
    assert manifest["accession_number"].tolist() == ["ACCX0000", "ACCX0000", "ACCX0001", "ACCX0001"]
    assert info["labels"]["key"] == "accession_number" and info["labels"]["key_detected"] is (not given)
    assert info["labels"]["unmatched_label_rows"] == 1
    assert "ACCX" not in capsys.readouterr().out  # the summary names no identifier


def test_accession_number_labels_on_png_images_say_why_nothing_matches(tmp_path, capsys):
    write_png(tmp_path / "in" / "a.png", seed=1)
    pd.DataFrame({"accession_number": ["ACCX0000"], "label": ["NORMAL"]}).to_csv(tmp_path / "l.csv", index=False)
    rc, _ = _ingest(tmp_path, tmp_path / "in", "--labels", str(tmp_path / "l.csv"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "(0008,0050) Accession Number" in err and "PNG/JPEG images have none" in err


def test_accession_numbers_never_reach_a_report(tmp_path):
    from cxr_cad.report import ReportOptions, write_report
    from tests.report.test_report import MODEL_INFO, synthetic_predictions

    df = synthetic_predictions(60, seed=6)
    df["accession_number"] = [f"ACCX{i:05d}" for i in range(len(df))]
    write_report(df, tmp_path, model_info=MODEL_INFO, options=ReportOptions(n_bootstrap=100, seed=1), pdf=False)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 5
    assert [p.name for p in files if "ACCX" in p.read_bytes().decode("latin-1")] == []


def test_training_log_off_a_terminal_holds_no_control_code(tmp_path, capsys, monkeypatch):
    from cxr_cad.core import progress as progress_mod
    from tests.factories.synth import write_png_cohort

    monkeypatch.setattr(progress_mod, "_enabled", True)  # the test suite turns bars off

    write_png_cohort(tmp_path / "c", n_patients=8, images_per_patient=1, size=32)
    capsys.readouterr()
    t0 = time.monotonic()
    rc = main(
        [
            "train",
            "--manifest",
            str(tmp_path / "c" / "manifest.csv"),
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
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err  # captured: not a terminal
    assert rc == 0, err
    assert "\x1b" not in err and "\r" not in err  # the old log held ESC[A from the nested batch bars
    bars = [ln for ln in err.splitlines() if ln.startswith(("epochs:", "train:", "val:"))]
    assert bars and "1/1" in [ln for ln in bars if ln.startswith("epochs:")][-1], bars
    for desc in ("epochs:", "train:", "val:"):  # at most one line per 10 s per bar, plus a final one
        assert sum(ln.startswith(desc) for ln in bars) <= seconds // LOG_INTERVAL_S + 1, bars


def test_the_api_refuses_an_empty_table_and_an_evaluate_folder_without_images(tmp_path):
    from cxr_cad import api
    from cxr_cad.api._cohort import labelled_cohort
    from cxr_cad.config import AcceptPolicy
    from cxr_cad.core.columns import MANIFEST_COLUMNS
    from cxr_cad.errors import UsageError

    with pytest.raises(UsageError, match="manifest table has no rows"):
        api.run_ingest(pd.DataFrame(columns=MANIFEST_COLUMNS))
    (tmp_path / "cohort" / "NORMAL").mkdir(parents=True)
    (tmp_path / "cohort" / "NORMAL" / "a.txt").write_text("no image")
    with pytest.raises(UsageError, match=r"no image of cohort folder .* \(NOT_DICOM 1\)"):
        labelled_cohort(
            manifest=None,
            folder=str(tmp_path / "cohort"),
            classes=["NORMAL", "PNEUMONIA"],
            work=tmp_path,
            policy=AcceptPolicy(),
        )

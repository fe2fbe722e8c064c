"""`cxr-cad ingest` end to end: outputs, labels, exit codes, no patient names anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from cxr_cad.cli import main
from cxr_cad.manifest import read_manifest
from tests.manifest.test_scan import PATIENT_NAME, make_mixed_folder, write_dicom, write_png


def _read(out: Path):
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    rejected = pd.read_csv(out / "rejected.csv", dtype=str, keep_default_na=False)
    info = json.loads((out / "ingest.json").read_text())
    return manifest, rejected, info


def test_ingest_mixed_folder(tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    expected = make_mixed_folder(root)
    out = tmp_path / "out"
    assert main(["ingest", str(root), "--out", str(out), "--workers", "1"]) == 0
    manifest, rejected, info = _read(out)
    listed = [os.path.normpath(out / p) for p in manifest["path"]] + rejected["path"].tolist()
    assert sorted(os.path.relpath(p, root) for p in listed) == sorted(expected)  # each file exactly once
    assert all(not os.path.isabs(p) and p.startswith("../in/") for p in manifest["path"])
    assert set(rejected["reason"]) >= {
        "NOT_DICOM",
        "EMPTY_FILE",
        "NOT_AN_IMAGE_SOP_CLASS",
        "MULTI_FRAME",
        "LATERAL_VIEW",
        "UNSUPPORTED_MODALITY",
        "DUPLICATE_SOP_INSTANCE",
        "DUPLICATE_CONTENT",
        "NO_PIXEL_DATA",
    }
    assert (rejected["detail"] != "").all()
    assert info["counts"]["files"] == len(expected)
    assert info["counts"]["accepted"] == len(manifest) and info["counts"]["rejected"] == len(rejected)
    assert info["policy"] == {
        "modalities": ["CR", "DX", "DR"],
        "reject_lateral": True,
        "apply_voi": True,
        "verify_pixels": False,
    }
    assert info["classes"] is None and info["positive_class"] is None
    back = read_manifest(out / "manifest.csv")  # the manifest validates and resolves
    assert all(os.path.isfile(p) for p in back["path"])
    assert info["manifest_hash"] and len(info["manifest_hash"]) == 64
    printed = capsys.readouterr().out
    assert "accepted" in printed and "DUPLICATE_SOP_INSTANCE" in printed
    # no patient name in any output (files or terminal)
    for f in out.iterdir():
        text = f.read_text()
        for part in PATIENT_NAME.split("^"):
            assert part not in text, f
    assert "DOE" not in printed and "JANE" not in printed


def _kermany(root: Path) -> None:
    for split in ("train", "test"):
        write_png(root / split / "NORMAL" / "IM-0115-0001.jpeg", seed=hash(split) % 100)
        write_png(root / split / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg", seed=hash(split) % 100 + 1)
        write_png(root / split / "PNEUMONIA" / "person1000_bacteria_2931.jpeg", seed=hash(split) % 100 + 2)
        write_png(root / split / "PNEUMONIA" / "person1000_bacteria_2932.jpeg", seed=hash(split) % 100 + 3)
        write_png(root / split / "PNEUMONIA" / "person1_virus_6.jpeg", seed=hash(split) % 100 + 4)


def test_ingest_kermany_layout_labels_from_folders(tmp_path, capsys):
    _kermany(tmp_path / "chest_xray")
    out = tmp_path / "kermany_train"
    assert (
        main(
            [
                "ingest",
                str(tmp_path / "chest_xray" / "train"),
                "--out",
                str(out),
                "--labels-from-folders",
                "--classes",
                "NORMAL,PNEUMONIA",
                "--positive-class",
                "PNEUMONIA",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    manifest, rejected, info = _read(out)
    assert rejected.empty
    got = dict(zip(manifest["path"].map(lambda p: p.split("/")[-1]), zip(manifest["label"], manifest["patient_id"])))
    assert got == {
        "IM-0115-0001.jpeg": ("NORMAL", "IM-0115"),
        "NORMAL2-IM-1427-0001.jpeg": ("NORMAL", "NORMAL2-IM-1427"),
        "person1000_bacteria_2931.jpeg": ("PNEUMONIA", "person1000"),
        "person1000_bacteria_2932.jpeg": ("PNEUMONIA", "person1000"),
        "person1_virus_6.jpeg": ("PNEUMONIA", "person1"),
    }
    assert info["classes"] == ["NORMAL", "PNEUMONIA"] and info["positive_class"] == "PNEUMONIA"
    assert info["labels"]["source"] == "folders"
    assert info["patient_id_rule"]["from_pattern"] == 5 and info["patient_id_rule"]["default_pattern"]
    assert info["counts"]["labels_by_class"] == {"PNEUMONIA": 3, "NORMAL": 2}
    assert info["counts"]["patients"] == 4
    printed = capsys.readouterr().out
    assert "positive class: PNEUMONIA" in printed
    # the whole tree with --classes: nearest class folder wins over train/test
    out2 = tmp_path / "all"
    assert (
        main(
            [
                "ingest",
                str(tmp_path / "chest_xray"),
                "--out",
                str(out2),
                "--labels-from-folders",
                "--classes",
                "NORMAL,PNEUMONIA",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert sorted(set(_read(out2)[0]["label"])) == ["NORMAL", "PNEUMONIA"]


def test_ingest_folder_labels_outside_classes_exit_2(tmp_path, capsys):
    _kermany(tmp_path / "chest_xray")
    write_png(tmp_path / "chest_xray" / "train" / "COVID" / "x.png", seed=50)
    code = main(
        [
            "ingest",
            str(tmp_path / "chest_xray" / "train"),
            "--out",
            str(tmp_path / "o"),
            "--labels-from-folders",
            "--classes",
            "NORMAL,PNEUMONIA",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "'COVID'" in err and "--classes" in err
    assert not (tmp_path / "o" / "manifest.csv").exists()


def _dicom_cohort(root: Path) -> list[dict]:
    rows = []
    for i in range(4):
        study = f"1.2.826.0.1.{i}"
        p = write_dicom(
            root / f"img{i}.dcm", patient_id=f"P{i // 2}", study_uid=study, seed=i, sop_uid=f"1.2.826.0.2.{i}"
        )
        rows.append(
            {"path": p, "sop_instance_uid": f"1.2.826.0.2.{i}", "study_instance_uid": study, "patient_id": f"P{i // 2}"}
        )
    return rows


@pytest.mark.parametrize("key", ["sop_instance_uid", "study_instance_uid", "patient_id", "path"])
def test_ingest_labels_csv_each_key(tmp_path, capsys, key):
    rows = _dicom_cohort(tmp_path / "in")
    values = [str(os.path.relpath(r["path"], tmp_path)) if key == "path" else r[key] for r in rows]
    labels = pd.DataFrame(
        {key: values[:1] + values[2:3] + ["no-such-key"], "label": ["NORMAL", "PNEUMONIA", "NORMAL"]}
    ).drop_duplicates(key)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "out"
    assert (
        main(
            [
                "ingest",
                str(tmp_path / "in"),
                "--out",
                str(out),
                "--labels",
                str(tmp_path / "labels.csv"),
                "--classes",
                "NORMAL,PNEUMONIA",
                "--positive-class",
                "PNEUMONIA",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    manifest, _, info = _read(out)
    by_name = dict(zip(manifest["path"].map(lambda p: p.split("/")[-1]), manifest["label"]))
    grouped = key in ("patient_id",)  # patient P0 = img0 + img1, P1 = img2 + img3
    assert by_name == {
        "img0.dcm": "NORMAL",
        "img1.dcm": "NORMAL" if grouped else "",
        "img2.dcm": "PNEUMONIA",
        "img3.dcm": "PNEUMONIA" if grouped else "",
    }
    assert info["labels"]["key"] == key and info["labels"]["unmatched_label_rows"] == 1
    unmatched = pd.read_csv(out / "unmatched_labels.csv", dtype=str)
    assert unmatched[key].tolist() == ["no-such-key"] and unmatched["line"].tolist() == ["4"]
    printed = capsys.readouterr().out
    assert f"key {key} (detected)" in printed and "1 unmatched" in printed and "unmatched CSV lines: 4" in printed


def test_ingest_usage_errors_exit_2(tmp_path, capsys):
    write_png(tmp_path / "in" / "a.png")
    src, out = str(tmp_path / "in"), str(tmp_path / "out")
    (tmp_path / "nokey.csv").write_text("id,label\n1,NORMAL\n")
    (tmp_path / "conflict.csv").write_text("patient_id,label\na,NORMAL\na,PNEUMONIA\n")
    (tmp_path / "unknown.csv").write_text("patient_id,label\na,COVID\n")
    (tmp_path / "afile").write_text("x")
    cases = [
        (["ingest", str(tmp_path / "missing"), "--out", out], "missing"),
        (["ingest", src, "--out", out, "--labels", str(tmp_path / "nokey.csv")], "none of the key columns"),
        (["ingest", src, "--out", out, "--labels", str(tmp_path / "conflict.csv")], "different labels"),
        (
            ["ingest", src, "--out", out, "--labels", str(tmp_path / "unknown.csv"), "--classes", "NORMAL,PNEUMONIA"],
            "'COVID'",
        ),
        (["ingest", src, "--out", out, "--classes", "A,B", "--positive-class", "C"], "--positive-class"),
        (["ingest", src, "--out", out, "--patient-id-pattern", "("], "regular expression"),
        (["ingest", src, "--out", out, "--labels", str(tmp_path / "nope.csv")], "not found"),
        (["ingest", src, "--out", out, "--labels-from-folders", "--labels", str(tmp_path / "unknown.csv")], ""),
        (["ingest", src, "--out", out, "--workers", "0"], "--workers"),
        (["ingest", src, "--out", out, "--labels-from-folders", "--positive-class", "PNEUMONIA"], "positive-class"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        assert needle in capsys.readouterr().err, argv
    # an --out below a file is refused before the scan (exit 2, cli.options)
    assert main(["ingest", src, "--out", str(tmp_path / "afile" / "sub")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_ingest_options_recorded_and_modalities_any(tmp_path):
    write_dicom(tmp_path / "in" / "ct.dcm", modality="CT")
    write_dicom(tmp_path / "in" / "lat.dcm", view="LL")
    out = tmp_path / "out"
    assert (
        main(
            [
                "ingest",
                str(tmp_path / "in"),
                "--out",
                str(out),
                "--modalities",
                "any",
                "--allow-lateral",
                "--no-voi",
                "--verify-pixels",
                "--absolute-paths",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    manifest, rejected, info = _read(out)
    assert len(manifest) == 2 and rejected.empty
    assert all(os.path.isabs(p) for p in manifest["path"])
    assert info["policy"] == {"modalities": "any", "reject_lateral": False, "apply_voi": False, "verify_pixels": True}


def test_ingest_out_inside_source_is_not_scanned(tmp_path):
    write_png(tmp_path / "a.png")
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "manifests"), "--workers", "1"]) == 0
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "manifests"), "--workers", "1"]) == 0
    manifest, rejected, info = _read(tmp_path / "manifests")
    assert manifest["path"].tolist() == ["../a.png"] and rejected.empty and info["counts"]["files"] == 1


def test_unmatched_label_rows_of_rejected_files_say_so(tmp_path):
    write_png(tmp_path / "in" / "NORMAL" / "a.png", seed=1)
    (tmp_path / "in" / "NORMAL" / "notes.txt").write_text("junk")
    pd.DataFrame(
        {"path": ["in/NORMAL/a.png", "in/NORMAL/notes.txt", "in/NORMAL/gone.png"], "label": ["NORMAL"] * 3}
    ).to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "out"
    assert (
        main(
            [
                "ingest",
                str(tmp_path / "in"),
                "--out",
                str(out),
                "--labels",
                str(tmp_path / "labels.csv"),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    unmatched = pd.read_csv(out / "unmatched_labels.csv", dtype=str)
    assert unmatched["why"].tolist() == ["file rejected: NOT_DICOM", "no image with this path"]
    assert _read(out)[0]["label"].tolist() == ["NORMAL"]


def test_label_key_needs_a_labels_csv(tmp_path, capsys):
    write_png(tmp_path / "in" / "NORMAL" / "a.png")
    argv = ["ingest", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--labels-from-folders"]
    assert main([*argv, "--label-key", "path"]) == 2
    assert "--label-key" in capsys.readouterr().err

"""cxr_cad.manifest: schema, validation, atomic writes, label joins, folds, hash."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from cxr_cad.errors import ManifestError
from cxr_cad.manifest import (
    MANIFEST_COLUMNS,
    age_in_years,
    grouped_split,
    join_labels,
    labels_from_folders,
    manifest_hash,
    patient_folds,
    read_labels,
    read_manifest,
    resolve_paths,
    validate_manifest,
    write_manifest,
)


def _cohort(n_patients=30, per_patient=(1, 4), pos=0.4, seed=0) -> pd.DataFrame:
    """A random cohort: patients with 1-3 images, one label per patient."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "PNEUMONIA" if rng.random() < pos else "NORMAL"
        for k in range(rng.integers(*per_patient)):
            rows.append(
                {
                    "path": f"/data/{label}/p{p}-{k}.png",
                    "sop_instance_uid": f"1.2.{p}.{k}",
                    "patient_id": f"P{p:03d}",
                    "study_instance_uid": f"1.3.{p}",
                    "label": label,
                    "sha256": f"{p:04d}{k:04d}",
                }
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- read / write / validate


def test_write_then_read_round_trip_with_relative_paths(tmp_path):
    data = tmp_path / "data"
    (data / "NORMAL").mkdir(parents=True)
    files = []
    for i in range(3):
        f = data / "NORMAL" / f"a{i}.png"
        f.write_bytes(b"x")
        files.append(str(f))
    df = pd.DataFrame(
        {
            "path": files,
            "sop_instance_uid": ["1", "2", "3"],
            "patient_id": ["007", "007", "8"],
            "label": ["NORMAL"] * 3,
            "rows": [10, 11, None],
            "extra": ["e", "f", "g"],
        }
    )
    out = tmp_path / "manifests" / "m.csv"
    write_manifest(df, out)
    text = out.read_text()
    assert text.splitlines()[0].split(",")[: len(MANIFEST_COLUMNS)] == MANIFEST_COLUMNS
    assert "../data/NORMAL/a0.png" in text and str(tmp_path) not in text
    assert not [p for p in os.listdir(out.parent) if p.endswith(".tmp")]
    back = read_manifest(out, require_labels=True, classes=["NORMAL", "PNEUMONIA"])
    assert back["path"].tolist() == files
    assert back["patient_id"].tolist() == ["007", "007", "8"]  # ids stay text, leading zeros kept
    assert str(back["rows"].dtype) == "Int64" and back["rows"].isna().tolist() == [False, False, True]
    assert back["extra"].tolist() == ["e", "f", "g"]
    assert manifest_hash(back) == manifest_hash(df)
    # moving manifest and data together keeps it readable
    os.rename(tmp_path, tmp_path.parent / (tmp_path.name + "_moved"))
    moved = read_manifest(tmp_path.parent / (tmp_path.name + "_moved") / "manifests" / "m.csv")
    assert all(os.path.isfile(p) for p in moved["path"])


def test_relative_paths_only_below_a_shared_folder(tmp_path):
    from cxr_cad.manifest import relative_paths

    got = relative_paths([str(tmp_path / "d" / "a.png"), "/nonexistent_top_xyz/b.png", ""], tmp_path / "m")
    assert got == ["../d/a.png", "/nonexistent_top_xyz/b.png", ""]


def test_write_absolute_paths(tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(b"x")
    df = pd.DataFrame({"path": [str(f)], "sop_instance_uid": ["1"], "patient_id": ["p"]})
    write_manifest(df, tmp_path / "sub" / "m.csv", relative=False)
    assert str(f) in (tmp_path / "sub" / "m.csv").read_text()


def test_read_manifest_collects_every_problem(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"x")
    pd.DataFrame(
        {
            "path": ["ok.png", "missing.png", "", "ok.png"],
            "sop_instance_uid": ["1", "1", "3", "4"],
            "patient_id": ["a", "", "c", "d"],
            "label": ["NORMAL", "COVID", "", "NORMAL"],
            "rows": ["12", "x", "", "3"],
        }
    ).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError) as err:
        read_manifest(tmp_path / "m.csv", require_labels=True, classes=["NORMAL", "PNEUMONIA"])
    text = str(err.value)
    problems = err.value.problems
    assert len(problems) >= 7, problems
    for needle in (
        "not found",
        "empty path",
        "listed twice",
        "duplicate sop_instance_uid",
        "empty patient_id",
        "no label",
        "'COVID'",
        "'rows'",
    ):
        assert needle in text, needle
    assert str(tmp_path / "m.csv") in text


def test_read_manifest_missing_columns_and_file(tmp_path):
    pd.DataFrame({"path": ["a.png"], "label": ["NORMAL"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError, match="sop_instance_uid, patient_id"):
        read_manifest(tmp_path / "m.csv", check_files=False)
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")


def test_validate_is_quiet_on_good_table():
    assert validate_manifest(_cohort(), require_labels=True, classes=["NORMAL", "PNEUMONIA"]) == []


def test_resolve_paths_idempotent(tmp_path):
    df = pd.DataFrame({"path": ["a/b.png", "/abs/c.png", "../d.png"]})
    r = resolve_paths(df, tmp_path)
    assert r["path"].tolist() == [str(tmp_path / "a/b.png"), "/abs/c.png", str(tmp_path.parent / "d.png")]
    assert resolve_paths(r, "/elsewhere")["path"].tolist() == r["path"].tolist()
    assert df["path"].tolist()[0] == "a/b.png"  # input untouched


@pytest.mark.parametrize(
    "value,years",
    [
        ("045Y", 45.0),
        ("006M", 0.5),
        ("052W", 0.9966),
        ("010D", 0.0274),
        ("", None),
        ("45", 45.0),  # a number without a unit: years (one parser with the metrics, issue 13)
        (None, None),
        ("xxY", None),
    ],
)
def test_age_in_years(value, years):
    got = age_in_years(value)
    assert (got is None and years is None) or got == pytest.approx(years, abs=1e-3)


# ---------------------------------------------------------------- hash


def test_manifest_hash_order_independent_and_sensitive():
    df = _cohort()
    h = manifest_hash(df)
    assert h == manifest_hash(df.sample(frac=1, random_state=1).reset_index(drop=True))
    assert h == manifest_hash(df.assign(path="/elsewhere/x"))  # paths do not matter
    changed = df.copy()
    changed.loc[3, "label"] = "PNEUMONIA" if changed.loc[3, "label"] == "NORMAL" else "NORMAL"
    assert manifest_hash(changed) != h
    assert manifest_hash(df.iloc[1:]) != h
    assert len(h) == 64


# ---------------------------------------------------------------- folds


@pytest.mark.parametrize("seed", range(12))
def test_patient_folds_never_split_a_patient_random_cohorts(seed):
    rng = np.random.default_rng(seed)
    n_folds = int(rng.integers(2, 7))
    df = _cohort(
        n_patients=int(rng.integers(n_folds * 3, 80)),
        per_patient=(1, int(rng.integers(2, 6))),
        pos=float(rng.uniform(0.2, 0.8)),
        seed=seed,
    )
    folds = patient_folds(df, n_folds, seed=seed)
    assert folds.shape == (len(df),) and set(folds) == set(range(n_folds))
    assert (df.assign(f=folds).groupby("patient_id")["f"].nunique() == 1).all()
    # stratified: each fold's positive rate is near the cohort's (slow obvious check)
    rate = (df["label"] == "PNEUMONIA").mean()
    for k in range(n_folds):
        part = df[folds == k]
        assert abs((part["label"] == "PNEUMONIA").mean() - rate) < 0.35
    assert np.array_equal(folds, patient_folds(df, n_folds, seed=seed))  # deterministic


def test_patient_folds_seed_changes_assignment_and_errors():
    df = _cohort(n_patients=60)
    assert not np.array_equal(patient_folds(df, 5, seed=0), patient_folds(df, 5, seed=1))
    assert set(patient_folds(df, 3, label_col=None)) == {0, 1, 2}
    with pytest.raises(ManifestError, match="cannot fill"):
        patient_folds(df.iloc[:2], 5)
    with pytest.raises(ManifestError, match="at least 2"):
        patient_folds(df, 1)
    bad = df.copy()
    bad.loc[0, "label"] = ""
    bad.loc[1, "patient_id"] = ""
    with pytest.raises(ManifestError) as err:
        patient_folds(bad, 5)
    assert len(err.value.problems) == 2


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.35])
def test_grouped_split_random_cohorts(seed, fraction):
    df = _cohort(n_patients=120, seed=seed)
    train, val = grouped_split(df, fraction, seed=seed)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(df)
    assert set(df.patient_id.iloc[train]).isdisjoint(df.patient_id.iloc[val])
    assert abs(len(val) / len(df) - fraction) < 0.05
    for cls in ("NORMAL", "PNEUMONIA"):
        n_cls = (df.label == cls).sum()
        assert abs((df.label.iloc[val] == cls).sum() - fraction * n_cls) <= 3
    t2, v2 = grouped_split(df, fraction, seed=seed)
    assert np.array_equal(val, v2)


def test_grouped_split_small_and_bad():
    df = _cohort(n_patients=2, per_patient=(1, 2))
    train, val = grouped_split(df, 0.01)
    assert len(train) and len(val)
    with pytest.raises(ManifestError):
        grouped_split(df, 1.0)
    with pytest.raises(ManifestError):
        grouped_split(df.iloc[:1], 0.5)


# ---------------------------------------------------------------- labels


def _manifest_for_labels():
    return pd.DataFrame(
        {
            "path": ["/d/NORMAL/a.png", "/d/PNEUMONIA/b.png", "/d/PNEUMONIA/sub/c.png", "/e/NORMAL/a.png"],
            "sop_instance_uid": ["s1", "s2", "s3", "s4"],
            "study_instance_uid": ["t1", "t2", "t2", "t4"],
            "patient_id": ["p1", "p2", "p2", "p4"],
            "label": ["", "", "", ""],
        }
    )


@pytest.mark.parametrize(
    "key,values,expected",
    [
        ("sop_instance_uid", ["s1", "s3", "zz"], ["NORMAL", "", "PNEUMONIA", ""]),
        ("study_instance_uid", ["t1", "t2", "zz"], ["NORMAL", "PNEUMONIA", "PNEUMONIA", ""]),
        ("patient_id", ["p1", "p2", "zz"], ["NORMAL", "PNEUMONIA", "PNEUMONIA", ""]),
        ("path", ["/d/NORMAL/a.png", "sub/c.png", "nothere.png"], ["NORMAL", "", "PNEUMONIA", ""]),
    ],
)
def test_join_labels_each_key_reports_unmatched(key, values, expected):
    labels = pd.DataFrame({key: values, "label": ["NORMAL", "PNEUMONIA", "NORMAL"]})
    out, report = join_labels(_manifest_for_labels(), labels, base_dir="/nowhere")
    assert report.key == key and report.key_detected
    assert out["label"].tolist() == expected
    assert report.unmatched[key].tolist() == [values[2]]
    assert report.unmatched["line"].tolist() == [4]
    assert report.matched_label_rows == 2 and report.label_rows == 3
    assert report.images_unlabelled == expected.count("")


def test_join_labels_ambiguous_path_suffix_is_unmatched():
    labels = pd.DataFrame({"path": ["NORMAL/a.png"], "label": ["NORMAL"]})
    out, report = join_labels(_manifest_for_labels(), labels, base_dir="/nowhere")
    assert out["label"].tolist() == ["", "", "", ""]
    assert "matches 2 images" in report.unmatched["why"].iloc[0]


def test_join_labels_key_priority_and_explicit_key():
    labels = pd.DataFrame({"patient_id": ["p1"], "sop_instance_uid": ["s4"], "label": ["NORMAL"]})
    _, report = join_labels(_manifest_for_labels(), labels)
    assert report.key == "sop_instance_uid"
    out, report = join_labels(_manifest_for_labels(), labels, key="patient_id")
    assert report.key == "patient_id" and not report.key_detected and out["label"].iloc[0] == "NORMAL"


def test_read_labels_problems(tmp_path):
    with pytest.raises(ManifestError, match="none of the key columns"):
        read_labels(pd.DataFrame({"id": ["1"], "label": ["A"]}))
    with pytest.raises(ManifestError, match="no 'label' column"):
        read_labels(pd.DataFrame({"patient_id": ["1"], "diagnosis": ["A"]}))
    conflict = pd.DataFrame({"patient_id": ["1", "1", "2", "2"], "label": ["A", "B", "A", "A"]})
    with pytest.raises(ManifestError, match=r"lines 2, 3 give one patient_id different labels \(A, B\)"):
        read_labels(conflict)
    with pytest.raises(ManifestError, match="'C' are not in --classes"):
        read_labels(pd.DataFrame({"patient_id": ["1"], "label": ["C"]}), classes=["A", "B"])
    table, key, _ = read_labels(pd.DataFrame({"patient_id": ["2", "2"], "label": ["A", "A"]}))
    assert len(table) == 1 and key == "patient_id"
    with pytest.raises(ManifestError, match="not found"):
        read_labels(tmp_path / "nope.csv")


def test_labels_from_folders():
    m = _manifest_for_labels()
    assert labels_from_folders(m)["label"].tolist() == ["NORMAL", "PNEUMONIA", "sub", "NORMAL"]
    got = labels_from_folders(m, classes=["NORMAL", "PNEUMONIA"])["label"].tolist()
    assert got == ["NORMAL", "PNEUMONIA", "PNEUMONIA", "NORMAL"]
    assert labels_from_folders(pd.DataFrame({"path": ["/x.png"]}))["label"].tolist() == [""]


def test_labels_csv_with_excel_bom(tmp_path):
    (tmp_path / "l.csv").write_bytes("\ufeffpatient_id,label\np1,NORMAL\n".encode("utf-8"))
    table, key, detected = read_labels(tmp_path / "l.csv")
    assert key == "patient_id" and table["label"].tolist() == ["NORMAL"]


def test_write_table_creates_the_folder_and_reports_unwritable_ones(tmp_path):
    """Tables go through cxr_cad.infra's atomic writer; the folder is created as before, and a
    file where the folder should be is an OutputError naming it (nothing left behind)."""
    from cxr_cad.errors import OutputError
    from cxr_cad.manifest import write_table

    dest = tmp_path / "a" / "b" / "t.csv"
    write_table(pd.DataFrame({"x": [1, 2]}), dest)
    assert dest.read_text() == "x\n1\n2\n"
    assert [p.name for p in dest.parent.iterdir()] == ["t.csv"]  # no temporary file left
    (tmp_path / "blocked").write_text("a file, not a folder")
    with pytest.raises(OutputError, match="t.csv in .*blocked"):
        write_table(pd.DataFrame({"x": [1]}), tmp_path / "blocked" / "t.csv")

"""cxr_cad.manifest.patients: the shipped patient-id patterns, their detection and the warnings."""

from __future__ import annotations

import pytest

from cxr_cad.errors import ConfigError, UsageError
from cxr_cad.manifest.patients import (
    PATIENT_PATTERNS,
    assign_patient_ids,
    check_given_pattern,
    pattern_counts,
    resolve_patient_pattern,
)

NIH = [f"/data/images_001/images/{p:08d}_{k:03d}.png" for p in (1, 2) for k in range(3)]
CHEXPERT = [
    "/d/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
    "/d/CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg",
    "/d/CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
]
MIMIC = ["/m/files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"]
KERMANY = ["/k/NORMAL/IM-0115-0001.jpeg", "/k/PNEUMONIA/person1_virus_6.jpeg", "/k/NORMAL/NORMAL2-IM-1427-0001.jpeg"]


@pytest.mark.parametrize(
    "paths,name,ids",
    [
        (NIH, "nih", ["00000001"] * 3 + ["00000002"] * 3),
        (CHEXPERT, "chexpert", ["patient00001", "patient00001", "patient64541"]),
        (MIMIC, "mimic", ["10000032"]),
        (KERMANY, "kermany", ["IM-0115", "person1", "NORMAL2-IM-1427"]),
    ],
)
def test_each_collection_is_detected_and_gives_its_ids(paths, name, ids):
    got, rule = assign_patient_ids(paths, None)
    assert got == ids
    assert (rule["pattern_name"], rule["chosen"], rule["from_pattern"], rule["warning"]) == (
        name,
        "detected",
        len(paths),
        None,
    )
    assert rule["shipped_pattern_matches"][name] == len(paths)
    assert sum(rule["shipped_pattern_matches"].values()) == len(paths)  # no other pattern matches them


def test_upper_case_extensions_and_other_folders_match():
    assert pattern_counts(["/x/00000003_001.PNG", "/y/patient7/study2/view1_Frontal.JPG"]) == {
        "kermany": 0,
        "nih": 1,
        "chexpert": 1,
        "mimic": 0,
    }
    assert pattern_counts(["/x/00000003_001.png.bak", "/y/study2/view1_frontal.jpg"])["nih"] == 0


def test_the_pattern_matching_most_names_wins_and_the_rest_is_warned_about():
    paths = NIH[:5] + KERMANY[:2]  # nih 5 of 7, kermany 2 of 7
    ids, rule = assign_patient_ids(paths, None)
    assert rule["pattern_name"] == "nih" and rule["from_pattern"] == 5 and rule["from_file_stem"] == 2
    assert ids[5:] == ["IM-0115-0001", "person1_virus_6"]  # stems
    assert rule["matched_fraction"] == round(5 / 7, 4)
    assert "5 of 7" in rule["warning"] and "kermany (2 of 7)" in rule["warning"]


def test_a_regex_with_a_slash_is_searched_in_the_path():
    given = resolve_patient_pattern(r"/(site\d+_pt\d+)/")
    assert given is not None and given.on_path
    ids, rule = assign_patient_ids(["/a/site1_pt9/x.png", "/a/site1_pt9/y.png"], given)
    assert ids == ["site1_pt9", "site1_pt9"] and rule["chosen"] == "given" and rule["warning"] is None
    assert not resolve_patient_pattern(r"^(P\d+)-").on_path  # type: ignore[union-attr]


def test_names_auto_stem_and_bad_patterns():
    assert resolve_patient_pattern(None) is None and resolve_patient_pattern("auto") is None
    assert resolve_patient_pattern("NIH") is PATIENT_PATTERNS["nih"]
    ids, rule = assign_patient_ids(NIH[:2], resolve_patient_pattern("stem"))
    assert ids == ["00000001_000", "00000001_001"] and rule["warning"] is None and rule["pattern_name"] == "stem"
    with pytest.raises(ConfigError, match="no capture group"):
        resolve_patient_pattern(r"P\d+")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        resolve_patient_pattern("(")


def test_a_given_pattern_matching_nothing_names_the_ones_that_do():
    with pytest.raises(UsageError, match=r"matches none of the 6 .*nih \(6 of 6\)"):
        check_given_pattern(resolve_patient_pattern("chexpert"), NIH)
    with pytest.raises(UsageError, match="shipped patterns that match: none"):
        assign_patient_ids(["/a/scan1.png"], resolve_patient_pattern(r"^(P\d+)-"))
    check_given_pattern(resolve_patient_pattern("nih"), [])  # no PNG/JPEG: nothing to match


def test_no_png_jpeg_no_rule_warning():
    ids, rule = assign_patient_ids([], None)
    assert ids == [] and rule["warning"] is None and rule["raster_images"] == 0

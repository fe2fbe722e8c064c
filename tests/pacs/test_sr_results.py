"""The SR of one result: findings in both predictions shapes, the dataset-shift verdict, the
"not validated" qualifier and the Predecessor Documents Sequence, read back with highdicom and
checked with dciodvfy (issue 23, defects 5 and 6)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from cxr_cad.pacs.findings import Finding, ShiftVerdict, finding_code, row_findings
from cxr_cad.pacs.sr import (
    AlgorithmInfo,
    build_sr,
    evidence_header,
    predecessor_reference,
    read_sr,
    read_sr_report,
    result_digest,
)
from tests.factories.dicom import write_dicom

INFO = AlgorithmInfo("9.9", "ab" * 32, "PNEUMONIA", 0.5, generate_uid())


def _header(tmp_path: Path) -> pydicom.Dataset:
    rng = np.random.default_rng(0)
    path = write_dicom(tmp_path / "src.dcm", rng.integers(0, 4000, (64, 64)).astype(np.uint16), bits_stored=12)
    return evidence_header(pydicom.dcmread(path, stop_before_pixels=True))


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_row_findings_reads_the_binary_and_the_multilabel_shape():
    binary = {"probability": "0.7", "decision": "PNEUMONIA", "threshold": "0.6"}
    assert list(row_findings(binary, "PNEUMONIA", 0.5)) == [Finding("PNEUMONIA", 0.7, 0.6, True)]
    assert list(row_findings({"probability": "0.7", "decision": "NORMAL"}, "PNEUMONIA", 0.5))[0].positive is False
    multi = {
        "probability_Atelectasis": "0.8",
        "decision_Atelectasis": "1",
        "probability_Effusion": "0.3",
        "decision_Effusion": "0",
        "probability_Mass": "0.45",  # no decision column: probability >= threshold_Mass
        "threshold_Mass": "0.4",
        "probability_Hernia": "",  # not scored: skipped
        "threshold": "0.5",
    }
    got = list(row_findings(multi, "unused", 0.9, {"Effusion": 0.2}))
    assert got == [
        Finding("Atelectasis", 0.8, 0.5, True),
        Finding("Effusion", 0.3, 0.2, False),
        Finding("Mass", 0.45, 0.4, True),
    ]
    assert finding_code("Effusion").value == "60046008" and finding_code("Effusion").scheme_designator == "SCT"
    assert finding_code("Pleural_Thickening").scheme_designator == "99CXRCAD"


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_multilabel_sr_with_shift_and_predecessor_reads_back_and_validates(tmp_path):
    header = _header(tmp_path)
    row = {
        "probability_Atelectasis": "0.81",
        "decision_Atelectasis": "1",
        "probability_Pleural_Thickening": "0.12",
        "decision_Pleural_Thickening": "0",
        "threshold": "0.4",
        "shift_score": "1.7",
        "shift_flag": "1",
    }
    cohort = {"flagged": True, "n_images": 12, "n_flagged": 7, "fraction_flagged": 7 / 12}
    shift = ShiftVerdict.from_row(row, cohort)
    series, old = generate_uid(), generate_uid()
    sr = build_sr(
        header,
        INFO.findings(row),
        INFO,
        series_instance_uid=series,
        sop_instance_uid=generate_uid(),
        shift=shift,
        predecessors=[predecessor_reference(header.StudyInstanceUID, series, old)],
    )
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []
    back = read_sr_report(pydicom.dcmread(path))
    assert [(f.finding, f.probability, f.threshold, f.present) for f in back.findings] == [
        ("Atelectasis", 0.81, 0.4, True),
        ("Pleural Thickening", 0.12, 0.4, False),
    ]
    assert back.image_shifted is True and back.cohort_shifted is True and back.not_validated is True
    assert back.predecessors == [old]
    assert all(f.source_sop_instance_uid == header.SOPInstanceUID for f in back.findings)


def test_binary_sr_without_shift_says_so_and_is_not_flagged(tmp_path):
    header = _header(tmp_path)
    row = {"probability": "0.2", "decision": "NORMAL", "threshold": "0.5", "shift_score": "0.4", "shift_flag": "0"}
    sr = build_sr(
        header,
        INFO.findings(row),
        INFO,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        shift=ShiftVerdict.from_row(row, {"flagged": False, "n_images": 40, "fraction_flagged": 0.0}),
    )
    back = read_sr_report(sr)
    assert back.image_shifted is False and back.cohort_shifted is False and back.not_validated is False
    assert back.predecessors == [] and "PredecessorDocumentsSequence" not in sr
    assert read_sr(sr).present is False and read_sr(sr).probability == 0.2


def test_result_digest_changes_with_what_the_result_says():
    f = [Finding("PNEUMONIA", 0.7, 0.5, True)]
    same = result_digest(f, ShiftVerdict(0.3, False, None))
    assert same == result_digest(list(f), ShiftVerdict(0.3, False, None))
    assert same != result_digest([Finding("PNEUMONIA", 0.7, 0.8, False)], ShiftVerdict(0.3, False, None))
    assert same != result_digest(f, ShiftVerdict(1.3, True, None))

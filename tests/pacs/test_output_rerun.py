"""Results that behave like clinical results, against a real Orthanc (issue 23, defects 1 and 5):
a rerun with new output options produces them for instances scored earlier; a rerun that says
the same writes the same UIDs (nothing piles up); a result that says something else is a new
revision whose SR lists the earlier one in its Predecessor Documents Sequence."""

from __future__ import annotations

import csv
import json

import pydicom
import pytest

from cxr_cad.cli import main
from tests.factories.orthanc import skip_reason
from tests.inference.test_predict import bundle_path, read_csv  # noqa: F401 - session fixture
from tests.pacs.test_pacs_dicomweb import archive, auth_env, orthanc  # noqa: F401 - fixtures

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


def _predict(orthanc, bundle, out, *extra) -> int:  # noqa: F811
    base = f"dicomweb:{orthanc.dicomweb}"
    return main(["predict", base, "--model", str(bundle), "--out", str(out), "--workers", "0", *map(str, extra)])


def _srs_in_archive(orthanc) -> set[str]:
    found = set()
    for study in orthanc.rest("/studies"):
        for inst in orthanc.rest(f"/studies/{study}/instances"):
            if (
                inst["MainDicomTags"].get("SOPInstanceUID")
                and orthanc.rest(f"/instances/{inst['ID']}/tags?simplify")["Modality"] == "SR"
                and "cxr_cad" in str(orthanc.rest(f"/instances/{inst['ID']}/tags?simplify").get("Manufacturer"))
            ):
                found.add(inst["MainDicomTags"]["SOPInstanceUID"])
    return found


def _objects(folder) -> dict[str, dict]:
    with open(folder / "objects.csv", newline="", encoding="utf-8") as fh:
        return {r["source_sop_instance_uid"]: r for r in csv.DictReader(fh)}


def test_rerun_with_new_outputs_produces_them_and_replaces_instead_of_piling_up(
    orthanc,  # noqa: F811
    archive,  # noqa: F811
    auth_env,  # noqa: F811
    bundle_path,  # noqa: F811
    tmp_path,
    capsys,
):
    stow = f"dicomweb:{orthanc.dicomweb}"
    out = tmp_path / "out"
    before = _srs_in_archive(orthanc)  # the archive's own SR (write_cohort's junk)
    assert _predict(orthanc, bundle_path, out) == 0
    scored = {r["sop_instance_uid"]: r for r in read_csv(out / "predictions.csv")}
    assert len(scored) == len(archive["images"])
    capsys.readouterr()

    # defect 1: the finished run, rerun with outputs, writes and sends them for every scored instance
    d1 = tmp_path / "d1"
    assert _predict(orthanc, bundle_path, out, "--dicom-out", d1, "--secondary-capture", "--stow", stow) == 0
    line = capsys.readouterr().out
    n = len(scored)
    assert f"{n} SR, {n} Secondary Capture written, {n} sent with STOW-RS" in line, line
    first = _objects(d1)
    assert set(first) == set(scored) and all(r["stow"] == "sent" and r["revision"] == "1" for r in first.values())
    history = json.loads((out / ".dicomweb" / "outputs.json").read_text())
    assert [h["dicom_out"] for h in history] == [None, str(d1)] and history[1]["secondary_capture"] is True
    assert "cxrtest" not in json.dumps(history)  # no credentials in the run state
    srs = _srs_in_archive(orthanc) - before
    assert {r["sr_sop_instance_uid"] for r in first.values()} == srs

    # the same again into a new folder, plus FHIR: the same UIDs, nothing new in the archive
    d2, fhir = tmp_path / "d2", tmp_path / "fhir"
    assert _predict(orthanc, bundle_path, out, "--dicom-out", d2, "--stow", stow, "--fhir-out", fhir) == 0
    n_studies = len({r["study_instance_uid"] for r in scored.values()})
    assert f"FHIR: {n_studies} DiagnosticReport(s)" in capsys.readouterr().out
    second = _objects(d2)
    assert {s: r["sr_sop_instance_uid"] for s, r in second.items()} == {
        s: r["sr_sop_instance_uid"] for s, r in first.items()
    }
    assert _srs_in_archive(orthanc) - before == srs
    assert len(list(fhir.glob("[0-9]*.json"))) == n_studies  # one Bundle per study

    # a result that says something else (another threshold): revision 2, its predecessor named
    d3 = tmp_path / "d3"
    assert (
        _predict(orthanc, bundle_path, tmp_path / "out2", "--threshold", "0.01", "--dicom-out", d3, "--stow", stow) == 0
    )
    third = _objects(d3)
    from cxr_cad.pacs.sr import read_sr_report

    for sop, rec in third.items():
        assert rec["revision"] == "2" and rec["predecessor_sop_instance_uid"] == first[sop]["sr_sop_instance_uid"]
        back = read_sr_report(pydicom.dcmread(d3 / rec["sr_file"]))
        assert back.predecessors == [first[sop]["sr_sop_instance_uid"]] and back.findings[0].threshold == 0.01
    assert _srs_in_archive(orthanc) - before == srs | {r["sr_sop_instance_uid"] for r in third.values()}
    assert len(_srs_in_archive(orthanc) - before) == 2 * n

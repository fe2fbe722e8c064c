"""DIMSE query/retrieve against a real Orthanc's DICOM port: C-FIND selects, C-GET or C-MOVE (to our
own storage SCP) fetches; the same journal, resume, reason codes and numbers as DICOMweb. Wildcards
reach the archive as wildcards over QIDO-RS and C-FIND. A password in --stow is refused before the
archive is asked anything. Every association, query and retrieve is in audit.jsonl, with no patient
name or ID."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest

from cxr_cad.cli import main
from tests.factories.orthanc import PASSWORD, USER, free_port, skip_reason, start_orthanc
from tests.inference.test_predict import bundle_path, read_csv  # noqa: F401 - session fixture
from tests.pacs.test_pacs_dicomweb import write_cohort

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))
REPO = Path(__file__).resolve().parents[2]
MOVE_AET = "CXRMOVE"


@pytest.fixture(scope="module")
def move_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, move_port):
    """Orthanc knowing our C-MOVE destination (DicomModalities), holding a cohort and a real radiograph."""
    root = tmp_path_factory.mktemp("orthanc-dimse")
    server = start_orthanc(
        root, modalities={"cxr": ["CXRCAD", "127.0.0.1", 1], "cxrmove": [MOVE_AET, "127.0.0.1", move_port]}
    )
    files = write_cohort(root / "src", n=6)
    real = root / "src" / "real.dcm"
    shutil.copy(REPO / "tests/data/siim_cr_chest_jpeg_baseline.dcm", real)
    files["images"].append(real)
    for path in files["images"] + files["junk"]:
        assert server.upload(path)["Status"] == "Success"
    server.files = files
    yield server
    server.stop()


def _dimse(server) -> str:
    return f"dimse://{server.aet}@127.0.0.1:{server.dicom_port}"


def _predict(source: str, out: Path, bundle: Path, *extra: str) -> int:
    return main(
        ["predict", source, "--model", str(bundle), "--out", str(out), "--workers", "0", "--fetch-chunk", "3", *extra]
    )


def _sops(paths) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def test_predict_over_dimse_c_get_scores_like_a_folder_audits_and_resumes(
    pacs, bundle_path, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("CXR_CAD_DIMSE_RETRIES", "0")
    out = tmp_path / "out"
    assert _predict(_dimse(pacs), out, bundle_path) == 0
    captured = capsys.readouterr()
    preds, rejs = read_csv(out / "predictions.csv"), read_csv(out / "rejected.csv")
    every = _sops(pacs.files["images"] + pacs.files["junk"])
    assert sorted(r["sop_instance_uid"] for r in preds + rejs) == sorted(every)
    assert {r["reason"] for r in rejs} == {"NOT_AN_IMAGE_SOP_CLASS", "LATERAL_VIEW", "CONSTANT_IMAGE"}
    assert all(r["path"].startswith(_dimse(pacs) + "/studies/") for r in preds + rejs)
    # the same numbers as the same files scored from a folder (the JPEG came as it is stored)
    local = tmp_path / "local"
    local.mkdir()
    for p in every.values():
        shutil.copy(p, local / p.name)
    assert main(["-q", "predict", str(local), "--model", str(bundle_path), "--out", str(tmp_path / "ref")]) == 0
    ref = {r["sop_instance_uid"]: r["probability"] for r in read_csv(tmp_path / "ref" / "predictions.csv")}
    got = {r["sop_instance_uid"]: float(r["probability"]) for r in preds}
    assert got.keys() == ref.keys()
    # equal up to fp32 batch-composition noise (DIMSE scores in fetch chunks, the folder in one run)
    assert all(abs(got[k] - float(ref[k])) <= 1e-5 for k in got), (got, ref)
    # journal: one timestamped record per instance; audit: association, query, retrieve, no patient identity
    journal = [json.loads(x) for x in (out / ".dimse" / "journal.jsonl").read_text().splitlines()]
    assert len(journal) == len(every) and all(r["time"].endswith("Z") and "T" in r["time"] for r in journal)
    audit = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    events = {r["event"] for r in audit}
    assert {"association", "query", "retrieve"} <= events
    query = next(r for r in audit if r["event"] == "query")
    assert query["protocol"] == "DIMSE" and query["n_matches"] == len(every) and query["outcome"] == "success"
    retrieves = [r for r in audit if r["event"] == "retrieve"]
    assert sum(r["n_received"] for r in retrieves) == len(every) and all(r["protocol"] == "C-GET" for r in retrieves)
    assert all(r["time"].endswith("Z") for r in audit)
    text = (out / "audit.jsonl").read_text() + captured.err + captured.out
    assert "ZZSECRET" not in text.upper() and '"P0"' not in text
    # a rerun resumes: nothing fetched again, the same tables
    summary_before = (out / "predictions.csv").read_text()
    assert _predict(_dimse(pacs), out, bundle_path) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_done_before"] == len(every) and summary["n_processed"] == 0
    assert (out / "predictions.csv").read_text() == summary_before


def test_predict_over_dimse_c_move_to_our_scp_and_query_levels(pacs, bundle_path, move_port, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_CAD_DIMSE_RETRIES", "0")
    dx = _sops(p for p in pacs.files["images"] if pydicom.dcmread(p, stop_before_pixels=True).Modality == "DX")
    out = tmp_path / "move"
    # Modality is a SERIES-level key, PatientID a STUDY-level one with a wildcard
    args = ["--query", "Modality=DX", "--query", "PatientID=P*", "--move-to", f"{MOVE_AET}@{move_port}"]
    assert _predict(_dimse(pacs), out, bundle_path, *args) == 0
    preds = read_csv(out / "predictions.csv")
    assert sorted(r["sop_instance_uid"] for r in preds) == sorted(dx) and preds
    assert read_csv(out / "rejected.csv") == []
    audit = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    assert {r["protocol"] for r in audit if r["event"] == "retrieve"} == {"C-MOVE"}
    assert next(r for r in audit if r["event"] == "query")["keys"] == ["Modality", "PatientID"]
    # a C-MOVE destination the archive does not know: every instance accounted for with a reason, exit 0
    bad = tmp_path / "bad"
    assert _predict(_dimse(pacs), bad, bundle_path, "--query", "Modality=DX", "--move-to", f"NOBODY@{free_port()}") == 0
    rejs = read_csv(bad / "rejected.csv")
    assert sorted(r["sop_instance_uid"] for r in rejs) == sorted(dx)
    assert {r["reason"] for r in rejs} <= {"FETCH_FAILED", "NOT_FOUND_IN_ARCHIVE"}


def test_wildcards_reach_the_archive_over_qido_rs_and_c_find(pacs, monkeypatch):
    from cxr_cad.pacs.client import make_client
    from cxr_cad.pacs.dimse import DimseNode, DimseOptions, DimseSource
    from cxr_cad.pacs.source import DicomwebSource

    monkeypatch.setenv("CXR_CAD_DICOMWEB_USER", USER)
    monkeypatch.setenv("CXR_CAD_DICOMWEB_PASSWORD", PASSWORD)
    web = DicomwebSource(make_client(f"dicomweb:{pacs.dicomweb}"), pacs.dicomweb)
    dimse = DimseSource(DimseNode(pacs.aet, "127.0.0.1", pacs.dicom_port), DimseOptions(retries=0))
    headers = {s: pydicom.dcmread(p, stop_before_pixels=True) for s, p in _sops(pacs.files["images"]).items()}
    p1 = {s for s, h in headers.items() if h.PatientID == "P1"}
    assert p1
    for query in ({"PatientID": "P*"}, {"PatientID": "P?"}, {"PatientID": "*1"}):
        want = {
            s for s, h in headers.items() if h.PatientID in (("P0", "P1") if query["PatientID"] != "*1" else ("P1",))
        }
        for source in (web, dimse):
            got = {i.sop_instance_uid for i in source.list(query)}
            assert want <= got, (source.kind, query)  # before the fix, QIDO-RS matched nothing
    assert {i.sop_instance_uid for i in web.list({"PatientID": "P1"})} >= p1  # no wildcard: exact match still works


def test_dimse_usage_and_network_errors(bundle_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXR_CAD_DIMSE_RETRIES", "0")
    assert _predict("dimse://NO-PORT@127.0.0.1", tmp_path / "a", bundle_path) == 2
    assert _predict("dimse://WAYTOOLONGAETITLE17@127.0.0.1:104", tmp_path / "b", bundle_path) == 2
    capsys.readouterr()
    # nobody listens there: exit 1, one line naming the archive
    assert _predict(f"dimse://PACS@127.0.0.1:{free_port()}", tmp_path / "c", bundle_path) == 1
    err = capsys.readouterr().err
    assert "C-FIND query of dimse://PACS@127.0.0.1" in err
    assert not (tmp_path / "c" / ".dimse").exists()  # no state for a run that never started
    # --move-to belongs to a dimse:// source
    assert _predict("dicomweb:http://127.0.0.1:1/dicom-web", tmp_path / "d", bundle_path, "--move-to", "X@1") == 2


def test_a_password_in_stow_is_refused_before_the_query_and_before_state(bundle_path, tmp_path, capsys):
    """Defect 11: the archive is not even up; a refused --stow must say so (exit 2), not query it (exit 1)."""
    out = tmp_path / "out"
    url = f"dicomweb:http://127.0.0.1:{free_port()}/dicom-web"
    args = [
        "--dicom-out",
        str(tmp_path / "dicom"),
        "--stow",
        f"dicomweb:http://{USER}:{PASSWORD}@127.0.0.1:1/dicom-web",
    ]
    assert _predict(url, out, bundle_path, *args) == 2
    err = capsys.readouterr().err
    assert "credentials" in err and PASSWORD not in err
    assert not (out / ".dicomweb").exists() and not (tmp_path / "dicom").exists()
    assert _predict(f"dimse://PACS@127.0.0.1:{free_port()}", tmp_path / "o2", bundle_path, *args) == 2
    assert not (tmp_path / "o2" / ".dimse").exists()

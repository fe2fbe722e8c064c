"""DICOMweb round trip against a real Orthanc: score over WADO-RS, SR/SC out, STOW-RS back, QIDO-RS finds them.

The archive is a private Orthanc (tests/factories/orthanc.py) on 127.0.0.1 with basic auth; the
tests skip, saying why, only where the Debian packages are missing.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxr_cad.cli import main
from tests.factories.orthanc import PASSWORD, USER, skip_reason, start_orthanc
from tests.inference.test_predict import bundle_path, cohort_pixels, read_csv  # noqa: F401 - session fixture

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))
SECRET_NAME = "ZZSECRET^PATIENTNAME"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture
def auth_env(monkeypatch):
    monkeypatch.setenv("CXR_CAD_DICOMWEB_USER", USER)
    monkeypatch.setenv("CXR_CAD_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.setenv("CXR_CAD_DICOMWEB_RETRIES", "1")


def write_cohort(root: Path, n: int = 8) -> dict[str, list[Path]]:
    """``n`` synthetic 12-bit CR/DX chest DICOMs in two studies, plus junk an archive accepts.

    Junk: an SR document (not an image), a lateral view, a constant image. All carry
    SECRET_NAME as (0010,0010) Patient's Name, to be looked for in the logs.
    """
    from pydicom.uid import generate_uid

    from tests.factories.dicom import write_dicom, write_sr

    root.mkdir(parents=True, exist_ok=True)
    studies = [generate_uid(), generate_uid()]
    images = []
    for k, (img, _label) in enumerate(cohort_pixels(n, seed=3)):
        images.append(
            write_dicom(
                root / f"img{k:02d}.dcm",
                img.astype(np.uint16) * 16,
                bits_stored=12,
                patient_id=f"P{k % 2}",
                patient_name=SECRET_NAME,
                study_instance_uid=studies[k % 2],
                modality="DX" if k % 4 == 0 else "CR",
            )
        )
    junk = [
        write_sr(root / "report_sr.dcm", patient_name=SECRET_NAME, study_instance_uid=studies[0]),
        write_dicom(
            root / "lateral.dcm",
            cohort_pixels(1, seed=9)[0][0].astype(np.uint16) * 16,
            bits_stored=12,
            view_position="LL",
            patient_name=SECRET_NAME,
            study_instance_uid=studies[1],
        ),
        write_dicom(
            root / "constant.dcm",
            np.full((64, 64), 700, np.uint16),
            bits_stored=12,
            patient_name=SECRET_NAME,
            study_instance_uid=studies[1],
        ),
    ]
    return {"images": images, "junk": junk}


@pytest.fixture
def archive(orthanc, tmp_path):
    """The archive holding write_cohort()'s files and one real radiograph from tests/data (nothing else)."""
    orthanc.clear()
    files = write_cohort(tmp_path / "src")
    real = tmp_path / "src" / "real.dcm"
    shutil.copy(REPO / "tests/data/siim_cr_chest_jpeg_baseline.dcm", real)
    files["images"].append(real)
    for path in files["images"] + files["junk"]:
        assert orthanc.upload(path)["Status"] == "Success"
    import requests  # a non-DICOM file is refused by the archive itself, so it is never listed

    bad = requests.post(orthanc.url + "/instances", data=b"not a dicom file", auth=(USER, PASSWORD), timeout=10)
    assert bad.status_code >= 400
    return files


def _by_sop(rows: list[dict]) -> dict[str, dict]:
    return {r["sop_instance_uid"]: r for r in rows}


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_score_over_dicomweb_write_sr_sc_stow_and_find_them(
    orthanc, archive, auth_env, bundle_path, tmp_path, capsys, caplog
):
    caplog.set_level(logging.INFO, logger="cxr_cad")
    out, dout = tmp_path / "out", tmp_path / "dicom"
    code = main(
        [
            "predict",
            f"dicomweb:{orthanc.dicomweb}",
            "--model",
            str(bundle_path),
            "--out",
            str(out),
            "--workers",
            "0",
            "--fetch-chunk",
            "4",
            "--dicom-out",
            str(dout),
            "--secondary-capture",
            "--stow",
            f"dicomweb:{orthanc.dicomweb}",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    preds, rejs = read_csv(out / "predictions.csv"), read_csv(out / "rejected.csv")
    # every archived instance exactly once, each with its reason
    headers = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in archive["images"] + archive["junk"]
    }
    assert sorted(r["sop_instance_uid"] for r in preds + rejs) == sorted(headers)
    assert {r["reason"] for r in rejs} == {"NOT_AN_IMAGE_SOP_CLASS", "LATERAL_VIEW", "CONSTANT_IMAGE"}
    assert all(r["path"].startswith(f"dicomweb:{orthanc.dicomweb}/studies/") for r in preds + rejs)
    # the same numbers as scoring the same files from a folder
    local = tmp_path / "local"
    local.mkdir()
    for p in archive["images"] + archive["junk"]:
        shutil.copy(p, local / p.name)
    assert (
        main(
            ["-q", "predict", str(local), "--model", str(bundle_path), "--out", str(tmp_path / "ref"), "--workers", "0"]
        )
        == 0
    )
    ref = _by_sop(read_csv(tmp_path / "ref" / "predictions.csv"))
    assert {s: r["probability"] for s, r in _by_sop(preds).items()} == {s: r["probability"] for s, r in ref.items()}
    # one SR and one SC per scored image; highdicom reads each SR back and it says what predictions.csv says
    from cxr_cad.pacs.sr import read_sr

    objects = _by_sop_source(read_csv(dout / "objects.csv"))
    assert sorted(objects) == sorted(_by_sop(preds))
    for sop, row in _by_sop(preds).items():
        obj = objects[sop]
        assert obj["stow"] == "sent" and obj["reason"] == ""
        sr = pydicom.dcmread(dout / obj["sr_file"])
        source = pydicom.dcmread(headers[sop], stop_before_pixels=True)
        found = read_sr(sr)
        assert found.probability == pytest.approx(float(row["probability"]), abs=0)
        assert found.present == (row["decision"] == "PNEUMONIA")
        assert found.threshold == float(row["threshold"]) and found.source_sop_instance_uid == sop
        assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
        assert sr.SeriesInstanceUID != source.SeriesInstanceUID
        sc = pydicom.dcmread(dout / obj["sc_file"])
        assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.BurnedInAnnotation == "YES"
        assert sc.pixel_array.shape[2] == 3
        # QIDO-RS finds the SR and the SC in the source's study
        found_uids = {i["00080018"]["Value"][0] for i in _qido(orthanc, source.StudyInstanceUID)}
        assert {sr.SOPInstanceUID, sc.SOPInstanceUID} <= found_uids
    # no patient name in anything the run printed or logged
    text = captured.out + captured.err + caplog.text + (out / "rejected.csv").read_text()
    assert "ZZSECRET" not in text.upper() and "PATIENTNAME" not in text.upper()


def _by_sop_source(rows):
    return {r["source_sop_instance_uid"]: r for r in rows}


def _qido(orthanc, study_uid: str) -> list[dict]:
    from cxr_cad.pacs.client import make_client

    return make_client(f"dicomweb:{orthanc.dicomweb}").search_for_instances(study_instance_uid=study_uid)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_every_sr_and_sc_passes_dciodvfy(orthanc, archive, auth_env, bundle_path, tmp_path):
    dout = tmp_path / "dicom"
    assert (
        main(
            [
                "-q",
                "predict",
                f"dicomweb:{orthanc.dicomweb}",
                "--model",
                str(bundle_path),
                "--out",
                str(tmp_path / "out"),
                "--workers",
                "0",
                "--dicom-out",
                str(dout),
                "--secondary-capture",
            ]
        )
        == 0
    )
    files = sorted(dout.rglob("*.dcm"))
    assert len(files) == 2 * len(archive["images"])
    for path in files:
        assert _dciodvfy_errors(path) == [], path.name


def test_query_selects_by_modality_and_study(orthanc, archive, auth_env, bundle_path, tmp_path):
    dx = [p for p in archive["images"] if pydicom.dcmread(p, stop_before_pixels=True).Modality == "DX"]
    assert (
        main(
            [
                "-q",
                "predict",
                f"dicomweb:{orthanc.dicomweb}",
                "--model",
                str(bundle_path),
                "--out",
                str(tmp_path / "dx"),
                "--workers",
                "0",
                "--query",
                "Modality=DX",
            ]
        )
        == 0
    )
    got = [r["sop_instance_uid"] for r in read_csv(tmp_path / "dx" / "predictions.csv")]
    assert sorted(got) == sorted(pydicom.dcmread(p).SOPInstanceUID for p in dx) and got
    study = pydicom.dcmread(archive["junk"][0]).StudyInstanceUID
    assert (
        main(
            [
                "-q",
                "predict",
                f"dicomweb:{orthanc.dicomweb}",
                "--model",
                str(bundle_path),
                "--out",
                str(tmp_path / "st"),
                "--workers",
                "0",
                "--query",
                f"StudyInstanceUID={study}",
            ]
        )
        == 0
    )
    rows = read_csv(tmp_path / "st" / "predictions.csv") + read_csv(tmp_path / "st" / "rejected.csv")
    assert rows and all(f"/studies/{study}/" in r["path"] for r in rows)


def test_instance_gone_from_archive_is_rejected_with_a_network_reason(
    orthanc, archive, auth_env, bundle_path, tmp_path, monkeypatch
):
    from cxr_cad.pacs import query

    real = query.list_instances

    def with_ghost(client, filters):
        return real(client, filters) + [query.RemoteInstance("1.2.3", "1.2.3.4", "1.2.3.4.5")]

    from cxr_cad.pacs import source

    # patched where it is looked up (pacs.source imports it by name), whatever the import order
    monkeypatch.setattr(source, "list_instances", with_ghost)
    assert (
        main(
            [
                "-q",
                "predict",
                f"dicomweb:{orthanc.dicomweb}",
                "--model",
                str(bundle_path),
                "--out",
                str(tmp_path / "o"),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    ghost = _by_sop(read_csv(tmp_path / "o" / "rejected.csv"))["1.2.3.4.5"]
    assert ghost["reason"] == "NOT_FOUND_IN_ARCHIVE" and "404" in ghost["detail"]


def test_credentials_come_from_env_or_netrc_and_never_from_the_url(
    orthanc, archive, bundle_path, tmp_path, monkeypatch, capsys
):
    for var in ("CXR_CAD_DICOMWEB_USER", "CXR_CAD_DICOMWEB_PASSWORD", "CXR_CAD_DICOMWEB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CXR_CAD_DICOMWEB_RETRIES", "0")
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    args = ["predict", "--model", str(bundle_path), "--workers", "0"]
    assert main([*args, f"dicomweb:{orthanc.dicomweb}", "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "401" in err and "CXR_CAD_DICOMWEB_USER" in err and PASSWORD not in err
    url_with_pw = orthanc.dicomweb.replace("http://", f"http://{USER}:{PASSWORD}@")
    assert main([*args, f"dicomweb:{url_with_pw}", "--out", str(tmp_path / "b")]) == 2
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert main(["-q", *args, f"dicomweb:{orthanc.dicomweb}", "--out", str(tmp_path / "c")]) == 0
    assert len(read_csv(tmp_path / "c" / "predictions.csv")) == len(archive["images"])


def test_kill_9_mid_run_then_resume_accounts_every_instance_once(orthanc, archive, auth_env, bundle_path, tmp_path):
    url = f"dicomweb:{orthanc.dicomweb}"
    args = [
        sys.executable,
        "-m",
        "cxr_cad",
        "-q",
        "predict",
        url,
        "--model",
        str(bundle_path),
        "--workers",
        "0",
        "--fetch-chunk",
        "2",
        "--batch-size",
        "1",
    ]
    env = dict(os.environ, CXR_CAD_PREDICT_BATCH_DELAY_S="0.4", PYTHONPATH=str(REPO))
    out = tmp_path / "out"
    proc = subprocess.Popen([*args, "--out", str(out)], env=env, start_new_session=True, stderr=subprocess.PIPE)
    journal = out / ".dicomweb" / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (journal.exists() and journal.read_bytes().count(b"\n") >= 3):
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = journal.read_bytes().count(b"\n")
    assert 3 <= n_before < len(archive["images"]) + len(archive["junk"])
    env.pop("CXR_CAD_PREDICT_BATCH_DELAY_S")
    done = subprocess.run([*args, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ref = subprocess.run([*args, "--out", str(tmp_path / "ref")], env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    for name in ("predictions.csv", "rejected.csv"):
        rows = read_csv(out / name)
        assert len({r["sop_instance_uid"] for r in rows}) == len(rows)
        assert rows == read_csv(tmp_path / "ref" / name)
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_done_before"] == n_before and summary["n_processed"] + n_before == summary["n_listed"]
    assert not (out / ".dicomweb" / "spool").exists()


def test_bad_query_and_url_are_usage_errors():
    from cxr_cad.errors import UsageError
    from cxr_cad.pacs.client import parse_url
    from cxr_cad.pacs.query import parse_query

    assert parse_query(["Modality=DX", "StudyDate=20240101-20240131"]) == {
        "Modality": "DX",
        "StudyDate": "20240101-20240131",
    }
    with pytest.raises(UsageError, match="NotAKeyword.*'x'"):
        parse_query(["NotAKeyword=1", "x"])
    with pytest.raises(UsageError, match="credentials"):
        parse_url("dicomweb:https://u:p@pacs/dicom-web")
    with pytest.raises(UsageError, match="not a DICOMweb URL"):
        parse_url("dicomweb:ftp://pacs")


def test_ingest_fetches_a_query_and_evaluate_writes_srs(orthanc, archive, auth_env, bundle_path, tmp_path):
    images = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in archive["images"] + archive["junk"]
    }
    cr = {s for s, p in images.items() if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CR"}
    lateral, constant = (pydicom.dcmread(p).SOPInstanceUID for p in archive["junk"][1:])
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sop_instance_uid", "label"])
        w.writerows([s, "PNEUMONIA" if k % 2 else "NORMAL"] for k, s in enumerate(sorted(images)))
    man = tmp_path / "manifest"
    assert (
        main(
            [
                "-q",
                "ingest",
                f"dicomweb:{orthanc.dicomweb}",
                "--query",
                "Modality=CR",
                "--fetch-to",
                str(tmp_path / "fetched"),
                "--out",
                str(man),
                "--labels",
                str(labels),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    rows = read_csv(man / "manifest.csv")
    assert {r["sop_instance_uid"] for r in rows} == cr - {lateral}  # ingest rejects the lateral view
    assert read_csv(man / "fetch_failed.csv") == []
    assert (
        main(
            [
                "-q",
                "evaluate",
                "--manifest",
                str(man / "manifest.csv"),
                "--model",
                str(bundle_path),
                "--out",
                str(tmp_path / "report"),
                "--workers",
                "0",
                "--no-pdf",
                "--gradcam-per-group",
                "0",
                "--dicom-out",
                str(tmp_path / "dicom"),
            ]
        )
        == 0
    )
    objects = read_csv(tmp_path / "dicom" / "objects.csv")
    assert {o["source_sop_instance_uid"] for o in objects} == cr - {lateral, constant}
    assert all(o["sr_file"] and o["reason"] == "" for o in objects)


def test_evaluate_scores_a_labelled_dicomweb_cohort_directly(orthanc, archive, auth_env, bundle_path, tmp_path):
    """evaluate dicomweb:URL --query --labels: every selected instance is scored or rejected, once."""
    images = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in archive["images"] + archive["junk"]
    }
    cr = sorted(s for s, p in images.items() if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CR")
    lateral, constant = (pydicom.dcmread(p).SOPInstanceUID for p in archive["junk"][1:])
    unlabelled = next(s for s in cr if s not in (lateral, constant))
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sop_instance_uid", "label"])
        w.writerows([s, "PNEUMONIA" if k % 2 else "NORMAL"] for k, s in enumerate(cr) if s != unlabelled)
    out = tmp_path / "report"
    assert (
        main(
            [
                "-q",
                "evaluate",
                f"dicomweb:{orthanc.dicomweb}",
                "--query",
                "Modality=CR",
                "--labels",
                str(labels),
                "--model",
                str(bundle_path),
                "--out",
                str(out),
                "--workers",
                "0",
                "--no-pdf",
                "--gradcam-per-group",
                "0",
                "--include-identifiers",
            ]
        )
        == 0
    )  # rejected.csv lists paths
    scored = {r["sop_instance_uid"] for r in read_csv(out / "predictions.csv")}
    rejected = read_csv(out / "rejected.csv")
    reasons = {Path(r["path"]).stem: r["reason"] for r in rejected}
    assert reasons == {lateral: "LATERAL_VIEW", constant: "CONSTANT_IMAGE", unlabelled: "NO_LABEL"}
    assert scored == set(cr) - set(reasons) and len(scored) + len(rejected) == len(cr)
    # a folder cohort does not take --labels, and a dicomweb: cohort needs them
    assert (
        main(
            [
                "-q",
                "evaluate",
                f"dicomweb:{orthanc.dicomweb}",
                "--model",
                str(bundle_path),
                "--out",
                str(tmp_path / "r2"),
            ]
        )
        == 2
    )

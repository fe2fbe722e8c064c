"""The DICOMweb orchestration (api.predict_dicomweb over pacs.source) without an archive: a fake
client lists local files and "fetches" them by copying, one instance failing with a network
reason. Every listed instance ends in exactly one table; a rerun resumes and tries the network
failure again. (The same run against a real Orthanc is in test_pacs_dicomweb.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom

from cxr_cad import api
from cxr_cad.api import _remote
from cxr_cad.pacs import source
from cxr_cad.pacs.query import RemoteInstance
from tests.inference.test_predict import bundle_path, read_csv  # noqa: F401 - session fixture
from tests.pacs.test_pacs_dicomweb import write_cohort


def test_predict_dicomweb_accounts_every_instance_and_resumes(bundle_path, tmp_path, monkeypatch):
    files = write_cohort(tmp_path / "src", n=4)
    by_uid = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files["images"] + files["junk"]
    }
    listed = sorted(RemoteInstance("1.2", "1.2.3", uid) for uid in by_uid)
    gone = listed[1].sop_instance_uid
    state = {"gone": True}

    def fake_fetch_many(client, instances, folder: Path, *, threads: int = 4):
        folder.mkdir(parents=True, exist_ok=True)
        files_, failed = {}, {}
        for inst in instances:
            if inst.sop_instance_uid == gone and state["gone"]:
                failed[inst.sop_instance_uid] = ("NETWORK_ERROR", "connection reset")
                continue
            files_[inst.sop_instance_uid] = Path(
                shutil.copy(by_uid[inst.sop_instance_uid], folder / f"{inst.sop_instance_uid}.dcm")
            )
        return files_, failed

    monkeypatch.setattr(_remote, "make_client", lambda url: object())
    monkeypatch.setattr(source, "list_instances", lambda client, q: list(listed))
    monkeypatch.setattr(source, "fetch_many", fake_fetch_many)
    out = tmp_path / "out"
    options = api.PredictOptions(workers=0, device="cpu")
    result = api.predict_dicomweb("dicomweb:http://archive/dicom-web", out, bundle_path, options, chunk_size=3)
    preds = {r["sop_instance_uid"]: r for r in read_csv(out / "predictions.csv")}
    rejs = {r["sop_instance_uid"]: r for r in read_csv(out / "rejected.csv")}
    assert set(preds) | set(rejs) == set(by_uid) and not set(preds) & set(rejs)
    assert rejs[gone]["reason"] == "NETWORK_ERROR" and result.reasons["NETWORK_ERROR"] == 1
    assert all(r["path"].startswith("dicomweb:http://archive/dicom-web/studies/1.2/") for r in preds.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_listed"] == len(by_uid) and summary["n_predicted"] == len(preds)

    state["gone"] = False  # the rerun fetches it
    again = api.predict_dicomweb("dicomweb:http://archive/dicom-web", out, bundle_path, options, chunk_size=3)
    assert again.n_done_before == len(by_uid) - 1 and again.n_processed == 1
    rejs = {r["sop_instance_uid"]: r for r in read_csv(out / "rejected.csv")}
    preds = {r["sop_instance_uid"]: r for r in read_csv(out / "predictions.csv")}
    assert gone not in rejs or rejs[gone]["reason"] != "NETWORK_ERROR"
    assert set(preds) | set(rejs) == set(by_uid)

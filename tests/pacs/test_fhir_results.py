"""FHIR output (issue 23, item 4): one transaction Bundle per study with a DiagnosticReport and an
Observation per image and finding, validated by the fhir.resources R4B models, POSTed to a
local HTTP endpoint (no FHIR server is packaged for offline use: see docs/conformance.md)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from cxr_cad.pacs.fhir import FhirOutOptions, FhirOutput
from cxr_cad.pacs.sr import AlgorithmInfo
from tests.factories.dicom import write_dicom

pytest.importorskip("fhir.resources")
INFO = AlgorithmInfo("9.9", "cd" * 32, "PNEUMONIA", 0.5, generate_uid())


def _images(tmp_path, n=3):
    study = generate_uid()
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        p = write_dicom(
            tmp_path / f"i{k}.dcm",
            rng.integers(0, 4000, (32, 32)).astype(np.uint16),
            bits_stored=12,
            study_instance_uid=study,
            patient_id="P7",
        )
        out.append((p, pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID))
    return study, out


class _Sink(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.end_headers()
        self.wfile.write(b'{"resourceType": "Bundle", "type": "transaction-response"}')

    def log_message(self, *args):
        pass


def test_fhir_bundle_per_study_validates_replaces_and_is_posted(tmp_path):
    from fhir.resources.R4B.bundle import Bundle

    study, images = _images(tmp_path)
    server = HTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/fhir"
        out = FhirOutput(FhirOutOptions(tmp_path / "fhir", url), INFO)
        rows = [
            {
                "sop_instance_uid": images[0][1],
                "probability": "0.9",
                "decision": "PNEUMONIA",
                "threshold": "0.5",
                "shift_score": "1.4",
                "shift_flag": "1",
            },
            {
                "sop_instance_uid": images[1][1],
                "probability_Atelectasis": "0.2",
                "decision_Atelectasis": "0",
                "probability_Effusion": "0.7",
                "decision_Effusion": "1",
                "threshold": "0.5",
            },
        ]
        out.write([(rows[0], str(images[0][0]), 1), (rows[1], str(images[1][0]), 2)])
        bundle = json.loads((tmp_path / "fhir" / f"{study}.json").read_text())
        Bundle.model_validate(bundle)  # R4B model: raises on anything invalid
        kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
        assert kinds == ["Device", "Observation", "Observation", "Observation", "DiagnosticReport"]
        assert all(e["request"]["method"] == "PUT" for e in bundle["entry"])
        obs = {e["resource"]["code"]["text"]: e["resource"] for e in bundle["entry"][1:4]}
        assert set(obs) == {"Pneumonia", "Atelectasis", "Pleural effusion"}
        pneu = obs["Pneumonia"]
        assert pneu["valueQuantity"]["value"] == 0.9 and pneu["interpretation"][0]["coding"][0]["code"] == "POS"
        assert pneu["code"]["coding"][0] == {
            "system": "http://snomed.info/sct",
            "code": "233604007",
            "display": "Pneumonia",
        }
        comps = {c["code"]["coding"][0]["code"]: c for c in pneu["component"]}
        assert comps["THRESHOLD"]["valueQuantity"]["value"] == 0.5 and comps["NOTVALID"]["valueBoolean"] is True
        assert obs["Atelectasis"]["interpretation"][0]["coding"][0]["code"] == "NEG"
        report = bundle["entry"][-1]["resource"]
        assert len(report["result"]) == 3 and report["status"] == "preliminary"
        assert "not validated" in report["conclusion"] and "NOT FOR DIAGNOSTIC USE" in report["conclusion"]
        device = bundle["entry"][0]["resource"]
        assert {"cd" * 32, "9.9"} <= {v["value"] for v in device["version"]}
        assert len(_Sink.received) == 1 and _Sink.received[0][0] == "/fhir"
        assert _Sink.received[0][1] == "application/fhir+json"
        # the third image arrives later: the same study's Bundle, same ids, one more Observation
        ids = {e["resource"]["id"] for e in bundle["entry"]}
        assert not out.needs(images[0][1]) and out.needs(images[2][1])
        third = {"sop_instance_uid": images[2][1], "probability": "0.1", "decision": "NORMAL", "threshold": "0.5"}
        out.write([(third, str(images[2][0]), 3)])
        again = json.loads((tmp_path / "fhir" / f"{study}.json").read_text())
        assert ids < {e["resource"]["id"] for e in again["entry"]} and len(again["entry"]) == 6
        assert len(_Sink.received) == 2
        lines = (tmp_path / "fhir" / "reports.csv").read_text().splitlines()
        assert len(lines) == 2 and lines[1].split(",")[2:4] == ["4", "sent"]  # one study, 4 Observations, sent
    finally:
        server.shutdown()


def test_a_failed_post_is_recorded_and_owed(tmp_path):
    study, images = _images(tmp_path, 1)
    out = FhirOutput(FhirOutOptions(tmp_path / "fhir", "http://127.0.0.1:9/fhir"), INFO)  # nothing listens on 9
    row = {"sop_instance_uid": images[0][1], "probability": "0.9", "decision": "PNEUMONIA", "threshold": "0.5"}
    out.write([(row, str(images[0][0]), 1)])
    assert "FHIR_POST_FAILED" in (tmp_path / "fhir" / "reports.csv").read_text()
    assert out.needs(images[0][1])  # a rerun sends it

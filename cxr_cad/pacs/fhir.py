"""``--fhir-out DIR`` [``--fhir-url URL``]: the results of a run as HL7 FHIR R4 resources.

Per study, one transaction Bundle ``DIR/<Study Instance UID>.json`` holding

* a **Device** (cxr_cad, its version and the model's SHA-256: the model identity),
* one **Observation** per image and finding (:func:`cxr_cad.pacs.findings.row_findings`: the
  binary model's positive class, or every finding of a multi-label model): code = the
  finding's SNOMED CT concept, ``valueQuantity`` = the probability (UCUM ``1``),
  ``interpretation`` POS/NEG, components: decision threshold, decision (Present/Absent),
  image dataset-shift flag and "model not validated for this population"; ``device`` = the
  Device; ``derivedFrom`` = the DICOM study (by its Study Instance UID) naming the image,
* a **DiagnosticReport** (status preliminary, category RAD) whose ``result`` lists them.

Every entry is a ``PUT`` to an id derived from the study / image, finding, model and version,
so POSTing the Bundle again (a rerun, an image of the study arriving later) replaces the
earlier resources instead of piling up (the server keeps their history). Each Bundle is
built and validated with the ``fhir.resources`` R4B models (the ``fhir`` extra; R4B is R4 for
these resources). ``--fhir-url`` POSTs it to a FHIR server's base URL (a bearer token from
``CXR_CAD_FHIR_TOKEN``, never from the command line); ``DIR/reports.csv`` says per study
what was written and sent. docs/conformance.md has the profile.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from cxr_cad.core.atomic import atomic_write_text
from cxr_cad.errors import MissingExtraError, OutputError
from cxr_cad.pacs.findings import LOCAL_SCHEME, Finding, ShiftVerdict, finding_code
from cxr_cad.pacs.sr import DISCLAIMER, MANUFACTURER, AlgorithmInfo

log = logging.getLogger(__name__)

REPORTS = "reports.csv"
STATE = ".instances.json"
SNOMED, UCUM = "http://snomed.info/sct", "http://unitsofmeasure.org"
LOCAL_SYSTEM = "urn:cxr_cad:concept"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
NS = uuid.UUID("6f1c0f6e-2f55-4a8e-9c51-5d0c2a8f4e11")  # namespace of every id written here
SHIFT_TEXT = "Model not validated for this population (dataset shift)"


@dataclass(frozen=True)
class FhirOutOptions:
    """``--fhir-out DIR`` [``--fhir-url URL``]."""

    out_dir: Path
    url: str | None = None


def _models():
    try:
        from fhir.resources.R4B.bundle import Bundle
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise MissingExtraError("--fhir-out needs the FHIR models: pip install 'cxr_cad[fhir]'") from exc
    return Bundle


def _id(*parts: object) -> str:
    return str(uuid.uuid5(NS, "|".join(str(p) for p in parts)))


def _coding(name: str) -> dict:
    c = finding_code(name)
    system = SNOMED if c.scheme_designator == "SCT" else LOCAL_SYSTEM
    return {"coding": [{"system": system, "code": c.value, "display": c.meaning}], "text": c.meaning}


def _local(code: str, text: str) -> dict:
    return {"coding": [{"system": LOCAL_SYSTEM, "code": code, "display": text}], "text": text}


def _study_ref(study: str, sop: str | None = None) -> dict:
    ref: dict[str, Any] = {
        "type": "ImagingStudy",
        "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"},
    }
    if sop:
        ref["display"] = f"image SOP Instance UID {sop}"
    return ref


def observation(
    obs_id: str, f: Finding, sop: str, study: str, device_id: str, subject: dict | None, shift: ShiftVerdict
) -> dict:
    """One Observation (a plain dict in FHIR JSON) for finding ``f`` of image ``sop``."""
    present = ("52101004", "Present") if f.positive else ("272519000", "Absent")
    components: list[dict] = [
        {
            "code": _local("THRESHOLD", "Decision threshold"),
            "valueQuantity": {"value": f.threshold, "unit": "1", "system": UCUM, "code": "1"},
        },
        {
            "code": _local("DECISION", "Decision at the threshold"),
            "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": present[0], "display": present[1]}]},
        },
    ]
    if shift.image_flagged is not None:
        components.append(
            {"code": _local("IMGSHIFT", "Image unlike training data"), "valueBoolean": shift.image_flagged}
        )
    if shift.cohort is not None:
        components.append(
            {"code": _local("COHSHIFT", "Cohort unlike training data"), "valueBoolean": bool(shift.cohort_flagged)}
        )
    if shift.known:
        components.append({"code": _local("NOTVALID", SHIFT_TEXT), "valueBoolean": shift.not_validated})
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id,
        "identifier": [{"system": "urn:cxr_cad:observation", "value": f"{sop}/{f.name}"}],
        "status": "preliminary",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}]}
        ],
        "code": _coding(f.name),
        "valueQuantity": {"value": f.probability, "unit": "probability", "system": UCUM, "code": "1"},
        "interpretation": [{"coding": [{"system": INTERPRETATION, "code": "POS" if f.positive else "NEG"}]}],
        "bodySite": {"coding": [{"system": SNOMED, "code": "39607008", "display": "Lung structure"}]},
        "device": {"reference": f"Device/{device_id}"},
        "derivedFrom": [_study_ref(study, sop)],
        "component": components,
        "note": [{"text": DISCLAIMER + (f". {SHIFT_TEXT}." if shift.not_validated else "")}],
    }
    if subject:
        obs["subject"] = subject
    return obs


def device(device_id: str, info: AlgorithmInfo) -> dict:
    return {
        "resourceType": "Device",
        "id": device_id,
        "manufacturer": MANUFACTURER,
        "deviceName": [{"name": "cxr_cad", "type": "model-name"}],
        "version": [
            {"type": {"text": "cxr_cad"}, "value": info.version},
            {"type": {"text": "model SHA-256"}, "value": info.model_sha256},
        ],
        "note": [{"text": DISCLAIMER}],
    }


class FhirOutput:
    """Writes (and POSTs) one FHIR transaction Bundle per study; :meth:`write` takes scored rows."""

    def __init__(self, options: FhirOutOptions, info: AlgorithmInfo):
        self.options, self.info = options, info
        self.out = Path(options.out_dir).absolute()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create --fhir-out folder {self.out}: {exc.strerror}") from exc
        self.bundle_model = _models()
        self.device_id = _id("device", info.model_sha256, info.version)
        state = self.out / STATE
        self.state: dict[str, dict] = json.loads(state.read_text()) if state.exists() else {}
        self.reports: dict[str, dict] = {}
        if (self.out / REPORTS).exists():
            with open(self.out / REPORTS, newline="", encoding="utf-8") as fh:
                self.reports = {r["study_instance_uid"]: r for r in csv.DictReader(fh)}

    def needs(self, sop: str) -> bool:
        s = self.state.get(sop)
        if s is None or s.get("model_sha256") != self.info.model_sha256:
            return True
        return bool(self.options.url) and self.reports.get(s["study"], {}).get("sent") != "sent"

    def write(self, items: Iterable[tuple[dict, str, int]], cohort: dict | None = None) -> None:
        """Add the rows' Observations to their studies' Bundles, write them (and POST them)."""
        touched: set[str] = set()
        for row, path, _number in items:
            sop = row["sop_instance_uid"]
            try:
                h = pydicom.dcmread(path, stop_before_pixels=True)
                study = str(h.StudyInstanceUID)
            except (InvalidDicomError, OSError, AttributeError):
                continue  # no DICOM study to report on (objects.csv of --dicom-out says NOT_DICOM_SOURCE)
            pid = str(h.get("PatientID", "") or "")
            subject = {"type": "Patient", "identifier": {"value": pid}} if pid else None
            shift = ShiftVerdict.from_row(row, cohort)
            obs = [
                observation(
                    _id("obs", sop, f.name, self.info.model_sha256, self.info.version),
                    f,
                    sop,
                    study,
                    self.device_id,
                    subject,
                    shift,
                )
                for f in self.info.findings(row)
            ]
            self.state[sop] = {"study": study, "model_sha256": self.info.model_sha256, "observations": obs}
            touched.add(study)
        for study in sorted(touched):
            self._study(study)
        atomic_write_text(self.out / STATE, json.dumps(self.state, sort_keys=True))
        self._save_reports()

    def build_bundle(self, study: str) -> dict:
        """The transaction Bundle of ``study`` (validated by the R4B models) as FHIR JSON."""
        obs = [o for s in self.state.values() if s["study"] == study for o in s["observations"]]
        subject = next((o["subject"] for o in obs if "subject" in o), None)
        positive = [o["code"]["text"] for o in obs if o["interpretation"][0]["coding"][0]["code"] == "POS"]
        not_valid = any(
            c.get("valueBoolean") for o in obs for c in o["component"] if c["code"]["coding"][0]["code"] == "NOTVALID"
        )
        conclusion = (
            f"cxr_cad {self.info.version}: "
            + (f"positive for {', '.join(sorted(set(positive)))}" if positive else "no positive finding")
            + f" in {len({o['identifier'][0]['value'].split('/')[0] for o in obs})} image(s). "
            + (SHIFT_TEXT + ". " if not_valid else "")
            + DISCLAIMER
        )
        report: dict[str, Any] = {
            "resourceType": "DiagnosticReport",
            "id": _id("report", study, self.info.model_sha256, self.info.version),
            "status": "preliminary",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
            "code": {
                "coding": [{"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}],
                "text": "cxr_cad chest radiograph classification (research)",
            },
            "issued": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "imagingStudy": [_study_ref(study)],
            "result": [{"reference": f"Observation/{o['id']}"} for o in obs],
            "conclusion": conclusion,
        }
        if subject:
            report["subject"] = subject
        resources = [device(self.device_id, self.info), *obs, report]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": f"urn:uuid:{r['id']}",
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in resources
            ],
        }
        return json.loads(self.bundle_model.model_validate(bundle).model_dump_json(exclude_none=True))

    def _study(self, study: str) -> None:
        bundle = self.build_bundle(study)
        name = f"{study}.json"
        atomic_write_text(self.out / name, json.dumps(bundle, indent=1, sort_keys=True))
        rec = {"study_instance_uid": study, "file": name, "observations": len(bundle["entry"]) - 2, "sent": ""}
        rec["reason"] = rec["detail"] = ""
        if self.options.url:
            self._post(bundle, rec)
        self.reports[study] = rec

    def _post(self, bundle: dict, rec: dict) -> None:
        import requests

        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        token = os.environ.get("CXR_CAD_FHIR_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        assert self.options.url is not None
        try:
            r = requests.post(self.options.url.rstrip("/"), data=json.dumps(bundle), headers=headers, timeout=60)
            ok, detail = r.status_code < 300, f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            ok, detail = False, type(exc).__name__
        rec["sent"] = "sent" if ok else "FHIR_POST_FAILED"
        if not ok:
            rec.update(reason="FHIR_POST_FAILED", detail=detail)
            log.warning("FHIR POST of a study's report failed (%s); rerun the same command to send it", detail)

    def _save_reports(self) -> None:
        buf = io.StringIO()
        cols = ["study_instance_uid", "file", "observations", "sent", "reason", "detail"]
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(self.reports[k] for k in sorted(self.reports))
        atomic_write_text(self.out / REPORTS, buf.getvalue())

    def summary_line(self) -> str:
        n = len(self.reports)
        sent = sum(r.get("sent") == "sent" for r in self.reports.values())
        return f"FHIR: {n} DiagnosticReport(s)" + (f", {sent} sent" if self.options.url else "") + f" -> {self.out}"


__all__ = ["LOCAL_SCHEME", "FhirOutOptions", "FhirOutput"]

"""The result of one image as a DICOM Structured Report (TID 1500 Measurement Report), with highdicom.

Content tree (every concept a coded term; built by highdicom's TID constructors, which
enforce the template, never tag by tag)::

    Imaging Measurement Report (DCM 126000), procedure: Plain chest X-ray (SCT 399208008)
      observation context: device observer "cxr_cad" (model name = version)
      Imaging Measurements > Measurement Group (TID 1501)
        tracking identifier, finding type Pneumonia (SCT 233604007), finding site Lung
        algorithm identification: name "cxr_cad", version, parameters = model SHA-256,
            decision threshold, "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"
        source image for measurement group: the scored image
        Probability (DCM 122157) = p, unit "no units" (UCUM 1), referencing the image
        Threshold Value (DCM 122411) = the decision threshold, unit UCUM 1
        qualitative evaluation: Pneumonia = Present (SCT 52101004) | Absent (SCT 272519000),
            i.e. p >= threshold

Patient and study attributes come from the source header (highdicom copies the Patient and
General Study modules of the evidence: name, ID, birth date, sex, Study Instance UID, date,
time, ID, accession number, referring physician); nothing else of it is copied. The SR goes
into a new series of the same study, described "RESEARCH - NOT FOR DIAGNOSTIC USE".
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxr_cad.errors import UsageError

if TYPE_CHECKING:
    from highdicom.sr import MeasurementReport

#: SNOMED CT concepts for the classes a bundle may call positive.
FINDING_CODES = {"PNEUMONIA": ("233604007", "Pneumonia")}
PRESENT = ("52101004", "Present")
ABSENT = ("272519000", "Absent")
DISCLAIMER = "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"
SERIES_DESCRIPTION = "cxr_cad RESEARCH - NOT FOR DIAGNOSTIC USE"
MANUFACTURER = "cxr_cad (research software)"


@dataclass(frozen=True)
class AlgorithmInfo:
    """Who made the result: cxr_cad's version, the model's SHA-256, the positive class, the threshold."""

    version: str
    model_sha256: str
    positive_class: str
    threshold: float
    device_uid: str

    def finding_code(self):
        """The SNOMED CT concept of the positive class (UsageError when none is known)."""
        code = FINDING_CODES.get(str(self.positive_class).upper())
        if code is None:
            raise UsageError(
                f"--dicom-out: no SNOMED CT code is known for the positive class "
                f"{self.positive_class!r} (known: {', '.join(FINDING_CODES)})"
            )
        return CodedConcept(code[0], "SCT", code[1])


def _measurement_report(source: Dataset, probability: float, info: AlgorithmInfo) -> MeasurementReport:
    """The TID 1500 Measurement Report of :func:`build_sr`: probability, threshold and the finding's
    presence or absence, for the image ``source``, observed by the cxr_cad device."""
    finding = info.finding_code()
    positive = probability >= info.threshold
    algorithm = hd.sr.AlgorithmIdentification(
        name="cxr_cad",
        version=info.version,
        parameters=[f"model SHA-256 {info.model_sha256}", f"decision threshold {info.threshold:g}", DISCLAIMER],
    )
    image = hd.sr.SourceImageForMeasurement.from_source_image(source)
    measurements = [
        hd.sr.Measurement(
            name=codes.DCM.Probability,
            value=float(probability),
            unit=codes.UCUM.NoUnits,
            algorithm_id=algorithm,
            referenced_images=[image],
        ),
        hd.sr.Measurement(
            name=codes.DCM.ThresholdValue, value=float(info.threshold), unit=codes.UCUM.NoUnits, algorithm_id=algorithm
        ),
    ]
    value = PRESENT if positive else ABSENT
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"cxr_cad {finding.meaning}"),
        finding_type=finding,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=finding, value=CodedConcept(value[0], "SCT", value[1]))
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=info.device_uid, name="cxr_cad", manufacturer_name=MANUFACTURER, model_name=f"cxr_cad {info.version}"
        ),
    )
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CodedConcept("399208008", "SCT", "Plain chest X-ray"),
        imaging_measurements=[group],
    )  # no Image Library: it needs (0018,1164) Imager Pixel Spacing


def build_sr(
    source: Dataset,
    probability: float,
    info: AlgorithmInfo,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 9901,
    instance_number: int = 1,
) -> Dataset:
    """A Comprehensive SR (TID 1500) for the score ``probability`` of the image ``source`` (header only is fine).

    Raises UsageError when the positive class has no known code; ValueError from highdicom
    when the source lacks (0008,0016) SOP Class UID / (0008,0018) SOP Instance UID.
    """
    report = _measurement_report(source, probability, info)
    with warnings.catch_warnings():
        # highdicom warns about an odd (0010,0010) Patient's Name and quotes it: keep it out of the logs
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        sr = hd.sr.ComprehensiveSR(
            evidence=[source],
            content=report[0],
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description=SERIES_DESCRIPTION,
        )
    drop_invalid_copied(sr)
    return sr


#: Type 2 attributes of the Patient and General Study modules: present in every SR/SC, empty when unknown.
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def evidence_header(source: Dataset) -> Dataset:
    """A copy of the source header with the missing type 2 patient/study attributes present and empty.

    highdicom copies them from the evidence and needs them to exist; a source without, e.g.,
    (0010,0030) Patient's Birth Date gets an empty one ("unknown"), as the standard asks.
    """
    ds = copy.copy(source)  # shallow: only top-level elements are added
    for key in TYPE2_COPIED:
        if key not in ds:
            setattr(ds, key, None)
    return ds


def drop_invalid_copied(ds: Dataset) -> list[str]:
    """Remove optional (type 3) attributes copied from the source whose value breaks their VR.

    Archives hold images with e.g. (0010,1010) Patient's Age "62" (AS needs "062Y"); copied as
    is, the SR would fail validation. Only (0010,1010) Patient's Age, (0010,1020) Patient's
    Size and (0010,1030) Patient's Weight are checked; returns the keywords removed.
    """
    removed = []
    age = ds.get("PatientAge")
    if age is not None and not re.fullmatch(r"\d{3}[DWMY]", str(age)):
        del ds.PatientAge
        removed.append("PatientAge")
    for key in ("PatientSize", "PatientWeight"):
        value = ds.get(key)
        if value is not None and (str(value) == "" or float(value) <= 0):
            delattr(ds, key)
            removed.append(key)
    return removed


@dataclass(frozen=True)
class SrFinding:
    """What an SR says, read back: probability, threshold, present/absent, the source SOP UID."""

    probability: float
    threshold: float
    present: bool
    source_sop_instance_uid: str
    algorithm_version: str


def read_sr(ds: Dataset) -> SrFinding:
    """Read back an SR written by :func:`build_sr` with highdicom's TID 1500 parser (for tests and tools)."""
    sr = ds if isinstance(ds, hd.sr.ComprehensiveSR) else hd.sr.ComprehensiveSR.from_dataset(ds)
    report = cast("hd.sr.MeasurementReport", sr.content)  # a TID 1500 report: what build_sr writes
    groups = report.get_image_measurement_groups()
    if len(groups) != 1:
        raise ValueError(f"expected one measurement group, found {len(groups)}")
    g = groups[0]
    prob = g.get_measurements(name=codes.DCM.Probability)[0]
    thr = g.get_measurements(name=codes.DCM.ThresholdValue)[0]
    ev = g.get_qualitative_evaluations()[0]
    present = ev.value == hd.sr.CodedConcept(PRESENT[0], "SCT", PRESENT[1])
    src = g.source_images[0].referenced_sop_instance_uid
    version = next(
        (
            str(item.TextValue)
            for item in hd.sr.utils.find_content_items(g[0], name=codes.DCM.AlgorithmVersion, recursive=True)
        ),
        "",
    )
    return SrFinding(float(prob.value), float(thr.value), bool(present), str(src), version)

"""The result of one image as a DICOM Structured Report (TID 1500 Measurement Report), with highdicom.

Content tree (every concept a coded term; built by highdicom's TID constructors, which
enforce the template, never tag by tag; docs/conformance.md)::

    Imaging Measurement Report (DCM 126000), procedure: Plain chest X-ray (SCT 399208008)
      observation context: device observer "cxr_cad" (model name = version)
      Imaging Measurements
        Measurement Group (TID 1501), one per finding (binary: the positive class; multi-label:
            every ``probability_<Finding>`` column)
          tracking identifier, finding type (SNOMED CT, FINDING_CODES), finding site Lung
          algorithm identification: name "cxr_cad", version, parameters = model SHA-256,
              decision threshold, result digest, "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"
          source image for measurement group: the scored image
          Probability (DCM 122157) = p, unit "no units" (UCUM 1), referencing the image
          Threshold Value (DCM 122411) = the decision threshold, unit UCUM 1
          qualitative evaluation: <finding> = Present (SCT 52101004) | Absent (SCT 272519000)
          [qualitative evaluation: Model validation status = Model not validated for this
              population, when the image or its cohort is flagged as shifted]
        Measurement Group "Dataset shift" (finding type 99CXRCAD SHIFT), when the model has a
            shift summary: Dataset shift score (unit 1); Image unlike training data = Yes | No;
            Cohort unlike training data = Yes | No (+ cohort size and fraction flagged)

A result that replaces an earlier one of the same source image and model lists it in the
Predecessor Documents Sequence (``predecessor``). Patient and study attributes come from the
source header (highdicom copies the Patient and General Study modules of the evidence);
nothing else of it is copied. The SR goes into a new series of the same study, described
"RESEARCH - NOT FOR DIAGNOSTIC USE".
"""

from __future__ import annotations

import copy
import hashlib
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxr_cad.pacs.findings import (
    ABSENT,
    LOCAL_SCHEME,
    PRESENT,
    Finding,
    ShiftVerdict,
    finding_code,
    number,
    row_findings,
)

if TYPE_CHECKING:
    from highdicom.sr import MeasurementReport

DISCLAIMER = "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"
SERIES_DESCRIPTION = "cxr_cad RESEARCH - NOT FOR DIAGNOSTIC USE"
MANUFACTURER = "cxr_cad (research software)"
#: Local concepts of the dataset-shift verdict (docs/conformance.md); no standard code exists.
SHIFT_GROUP = CodedConcept("SHIFT", LOCAL_SCHEME, "Dataset shift assessment")
SHIFT_SCORE = CodedConcept("SHIFTSCORE", LOCAL_SCHEME, "Dataset shift score")
IMAGE_SHIFTED = CodedConcept("IMGSHIFT", LOCAL_SCHEME, "Image unlike training data")
COHORT_SHIFTED = CodedConcept("COHSHIFT", LOCAL_SCHEME, "Cohort unlike training data")
COHORT_SIZE = CodedConcept("COHSIZE", LOCAL_SCHEME, "Images in cohort")
COHORT_FRACTION = CodedConcept("COHFRAC", LOCAL_SCHEME, "Fraction of cohort unlike training data")
VALIDATION = CodedConcept("VALIDSTAT", LOCAL_SCHEME, "Model validation status")
NOT_VALIDATED = CodedConcept("NOTVALID", LOCAL_SCHEME, "Model not validated for this population")
YES = CodedConcept(codes.SCT.Yes.value, "SCT", codes.SCT.Yes.meaning)
NO = CodedConcept(codes.SCT.No.value, "SCT", codes.SCT.No.meaning)


@dataclass(frozen=True)
class AlgorithmInfo:
    """Who made the result: cxr_cad's version, the model's SHA-256, the positive class, the threshold."""

    version: str
    model_sha256: str
    positive_class: str
    threshold: float
    device_uid: str
    thresholds: Mapping[str, float] = field(default_factory=dict)  # multi-label: per finding

    def finding_code(self) -> CodedConcept:
        """The concept of the positive class (SNOMED CT, else a local code)."""
        return finding_code(self.positive_class)

    def findings(self, row: Mapping[str, Any]) -> list[Finding]:
        """:func:`row_findings` of a predictions row with this model's class and thresholds."""
        return list(row_findings(row, self.positive_class, self.threshold, self.thresholds))


def result_digest(findings: list[Finding], shift: ShiftVerdict | None) -> str:
    """A short digest of what a result says (same digest = same result; docs/conformance.md)."""
    parts = [f"{f.name}|{f.probability!r}|{f.threshold!r}|{int(f.positive)}" for f in findings]
    if shift is not None and shift.known:
        parts.append(f"shift|{shift.image_flagged}|{shift.cohort_flagged}|{shift.not_validated}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _yes_no(flag: bool) -> CodedConcept:
    return YES if flag else NO


def _shift_group(source: Dataset, shift: ShiftVerdict, algorithm) -> Any:
    measurements, evaluations = [], []
    if shift.image_score is not None:
        measurements.append(
            hd.sr.Measurement(
                name=SHIFT_SCORE, value=float(shift.image_score), unit=codes.UCUM.NoUnits, algorithm_id=algorithm
            )
        )
    if shift.image_flagged is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(name=IMAGE_SHIFTED, value=_yes_no(shift.image_flagged)))
    if shift.cohort is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(name=COHORT_SHIFTED, value=_yes_no(bool(shift.cohort_flagged))))
        n = shift.cohort.get("n_images")
        if n is not None:
            measurements.append(
                hd.sr.Measurement(name=COHORT_SIZE, value=int(n), unit=codes.UCUM.NoUnits, algorithm_id=algorithm)
            )
        frac = number(shift.cohort.get("fraction_flagged"))
        if frac is not None:
            measurements.append(
                hd.sr.Measurement(name=COHORT_FRACTION, value=frac, unit=codes.UCUM.NoUnits, algorithm_id=algorithm)
            )
    if shift.not_validated:
        evaluations.append(hd.sr.QualitativeEvaluation(name=VALIDATION, value=NOT_VALIDATED))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="cxr_cad dataset shift"),
        finding_type=SHIFT_GROUP,
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )


def _measurement_report(
    source: Dataset, findings: list[Finding], info: AlgorithmInfo, shift: ShiftVerdict | None, digest: str
) -> MeasurementReport:
    """The TID 1500 Measurement Report of :func:`build_sr`: per finding its probability, threshold
    and presence or absence, for the image ``source``, observed by the cxr_cad device; then the
    dataset-shift group."""
    groups = []
    for f in findings:
        algorithm = hd.sr.AlgorithmIdentification(
            name="cxr_cad",
            version=info.version,
            parameters=[
                f"model SHA-256 {info.model_sha256}",
                f"decision threshold {f.threshold:g}",
                f"result digest {digest}",
                DISCLAIMER,
            ],
        )
        concept = finding_code(f.name)
        image = hd.sr.SourceImageForMeasurement.from_source_image(source)
        measurements = [
            hd.sr.Measurement(
                name=codes.DCM.Probability,
                value=float(f.probability),
                unit=codes.UCUM.NoUnits,
                algorithm_id=algorithm,
                referenced_images=[image],
            ),
            hd.sr.Measurement(
                name=codes.DCM.ThresholdValue, value=float(f.threshold), unit=codes.UCUM.NoUnits, algorithm_id=algorithm
            ),
        ]
        value = PRESENT if f.positive else ABSENT
        evaluations = [hd.sr.QualitativeEvaluation(name=concept, value=CodedConcept(value[0], "SCT", value[1]))]
        if shift is not None and shift.not_validated:
            evaluations.append(hd.sr.QualitativeEvaluation(name=VALIDATION, value=NOT_VALIDATED))
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"cxr_cad {concept.meaning}"),
                finding_type=concept,
                algorithm_id=algorithm,
                finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
                measurements=measurements,
                qualitative_evaluations=evaluations,
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            )
        )
    if shift is not None and shift.known:
        groups.append(_shift_group(source, shift, algorithm))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=info.device_uid, name="cxr_cad", manufacturer_name=MANUFACTURER, model_name=f"cxr_cad {info.version}"
        ),
    )
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CodedConcept("399208008", "SCT", "Plain chest X-ray"),
        imaging_measurements=groups,
    )  # no Image Library: it needs (0018,1164) Imager Pixel Spacing


def predecessor_reference(study: str, series: str, sop: str) -> Dataset:
    """What :func:`build_sr` needs of an earlier SR to list it as a predecessor."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR Storage
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    return ds


def build_sr(
    source: Dataset,
    probability: float | list[Finding],
    info: AlgorithmInfo,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 9901,
    instance_number: int = 1,
    shift: ShiftVerdict | None = None,
    predecessors: list[Dataset] | None = None,
) -> Dataset:
    """A Comprehensive SR (TID 1500) for the result of the image ``source`` (header only is fine).

    ``probability``: the positive-class probability (binary, at ``info.threshold``) or the
    image's :class:`Finding` list (:meth:`AlgorithmInfo.findings`). ``shift``: the image's and
    cohort's dataset-shift verdict; ``predecessors``: earlier SRs this one replaces
    (:func:`predecessor_reference`). Raises ValueError from highdicom when the source lacks
    (0008,0016) SOP Class UID / (0008,0018) SOP Instance UID, or when there is no finding.
    """
    if isinstance(probability, (int, float)):
        findings = [Finding(info.positive_class, float(probability), info.threshold, probability >= info.threshold)]
    else:
        findings = list(probability)
    if not findings:
        raise ValueError("no finding to report")
    report = _measurement_report(source, findings, info, shift, result_digest(findings, shift))
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
            previous_versions=predecessors or None,
        )
    local = Dataset()
    local.CodingSchemeDesignator = LOCAL_SCHEME
    local.CodingSchemeName = "cxr_cad local concepts (docs/conformance.md)"
    local.CodingSchemeResponsibleOrganization = "cxr_cad project"
    sr.CodingSchemeIdentificationSequence = [local]
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
    """What an SR says of one finding, read back: probability, threshold, present/absent, the
    source SOP UID, the algorithm version and the finding's name."""

    probability: float
    threshold: float
    present: bool
    source_sop_instance_uid: str
    algorithm_version: str
    finding: str = ""


@dataclass(frozen=True)
class SrReport:
    """Everything an SR of :func:`build_sr` says, read back."""

    findings: list[SrFinding]
    image_shifted: bool | None
    cohort_shifted: bool | None
    not_validated: bool
    predecessors: list[str]


def _group_finding(g: Any) -> SrFinding:
    prob = g.get_measurements(name=codes.DCM.Probability)[0]
    thr = g.get_measurements(name=codes.DCM.ThresholdValue)[0]
    finding = g.finding_type
    ev = next(e for e in g.get_qualitative_evaluations() if e.name == finding)
    present = ev.value == hd.sr.CodedConcept(PRESENT[0], "SCT", PRESENT[1])
    src = g.source_images[0].referenced_sop_instance_uid
    version = next(
        (
            str(item.TextValue)
            for item in hd.sr.utils.find_content_items(g[0], name=codes.DCM.AlgorithmVersion, recursive=True)
        ),
        "",
    )
    return SrFinding(float(prob.value), float(thr.value), bool(present), str(src), version, str(finding.meaning))


def read_sr_report(ds: Dataset) -> SrReport:
    """Read back an SR written by :func:`build_sr` with highdicom's TID 1500 parser (tests and tools)."""
    sr = hd.sr.ComprehensiveSR.from_dataset(ds)  # copies; a document built here is parsed the same way
    report = cast("hd.sr.MeasurementReport", sr.content)  # a TID 1500 report: what build_sr writes
    findings, image, cohort, not_valid = [], None, None, False
    for g in report.get_image_measurement_groups():
        evaluations = g.get_qualitative_evaluations()
        not_valid = not_valid or any(e.name == VALIDATION and e.value == NOT_VALIDATED for e in evaluations)
        if g.finding_type == SHIFT_GROUP:
            for e in evaluations:
                if e.name == IMAGE_SHIFTED:
                    image = e.value == YES
                elif e.name == COHORT_SHIFTED:
                    cohort = e.value == YES
        else:
            findings.append(_group_finding(g))
    predecessors = [
        str(inst.ReferencedSOPInstanceUID)
        for study in ds.get("PredecessorDocumentsSequence", [])
        for series in study.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    ]
    return SrReport(findings, image, cohort, not_valid, predecessors)


def read_sr(ds: Dataset) -> SrFinding:
    """The first finding of an SR written by :func:`build_sr` (the positive class of a binary model)."""
    findings = read_sr_report(ds).findings
    if not findings:
        raise ValueError("the SR holds no finding")
    return findings[0]

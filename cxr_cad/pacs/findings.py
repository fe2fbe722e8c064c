"""The findings of a predictions.csv row, in the binary or the multi-label shape, with their codes.

:func:`row_findings` is the one reader of a result row for the SR (:mod:`cxr_cad.pacs.sr`) and
FHIR (:mod:`cxr_cad.pacs.fhir`) outputs; :func:`finding_code` the one table of finding codes
(docs/conformance.md); :class:`ShiftVerdict` the dataset-shift verdict of an image and its cohort.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from highdicom.sr import CodedConcept

#: SNOMED CT concepts of the findings a model may report (docs/conformance.md has the table and
#: the sources). Keys are upper case with "_" for spaces; a finding without one gets a code of
#: the local scheme LOCAL_SCHEME (DICOM PS3.3 8.2: a "99" designator is private).
FINDING_CODES = {
    "PNEUMONIA": ("233604007", "Pneumonia"),
    "ATELECTASIS": ("46621007", "Atelectasis"),
    "CARDIOMEGALY": ("287272002", "Cardiomegaly"),
    "EFFUSION": ("60046008", "Pleural effusion"),
    "PLEURAL_EFFUSION": ("60046008", "Pleural effusion"),
    "PNEUMOTHORAX": ("36118008", "Pneumothorax"),
    "EDEMA": ("19242006", "Pulmonary edema"),
    "EMPHYSEMA": ("87433001", "Pulmonary emphysema"),
    "FIBROSIS": ("112674009", "Fibrosis"),
    "MASS": ("4147007", "Mass"),
    "NODULE": ("27925004", "Nodule"),
    "CONSOLIDATION": ("95436008", "Lung consolidation"),
    "INFILTRATION": ("409609008", "Radiologic infiltrate of lung"),
    "HERNIA": ("84089009", "Hiatal hernia"),
}
LOCAL_SCHEME = "99CXRCAD"
PRESENT = ("52101004", "Present")
ABSENT = ("272519000", "Absent")


class Finding(NamedTuple):
    """One finding of one image: name, probability, decision threshold, decision (True = present)."""

    name: str
    probability: float
    threshold: float
    positive: bool


_POSITIVE_WORDS = {"1", "1.0", "true", "yes", "positive", "present"}
_NEGATIVE_WORDS = {"0", "0.0", "false", "no", "negative", "absent"}


def _decision(value: Any, name: str, probability: float, threshold: float) -> bool:
    text = "" if value is None else str(value).strip().lower()
    if text in _POSITIVE_WORDS or (text and text == name.lower()):
        return True
    if text in _NEGATIVE_WORDS:
        return False
    return probability >= threshold


def number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out else None  # NaN -> None


def row_findings(
    row: Mapping[str, Any],
    positive_class: str,
    threshold: float,
    thresholds: Mapping[str, float] | None = None,
) -> Iterator[Finding]:
    """The findings of one predictions.csv row, in either shape.

    Multi-label rows carry ``probability_<Finding>`` / ``decision_<Finding>`` (and optionally
    ``threshold_<Finding>``; else ``thresholds[Finding]``, else the row's ``threshold``, else
    ``threshold``); binary rows carry ``probability`` / ``decision`` (= the positive class or not)
    / ``threshold``. A finding with an empty probability is skipped.
    """
    names = [k[len("probability_") :] for k in row if k.startswith("probability_")]
    if names:
        for name in names:
            p = number(row.get(f"probability_{name}"))
            if p is None:
                continue
            thr = number(row.get(f"threshold_{name}"))
            if thr is None:
                thr = (thresholds or {}).get(name)
            if thr is None:
                thr = number(row.get("threshold"))
            thr = float(threshold if thr is None else thr)
            yield Finding(name, p, thr, _decision(row.get(f"decision_{name}"), name, p, thr))
        return
    p = number(row.get("probability"))
    if p is None:
        return
    thr = number(row.get("threshold"))
    thr = float(threshold if thr is None else thr)
    decision = row.get("decision")
    positive = (
        str(decision) == str(positive_class) if decision not in (None, "") else _decision(None, positive_class, p, thr)
    )
    yield Finding(str(positive_class), p, thr, positive)


def finding_code(name: str) -> CodedConcept:
    """The SNOMED CT concept of a finding, or a local (99CXRCAD) code when none is known."""
    key = re.sub(r"[\s-]+", "_", str(name).strip()).upper()
    code = FINDING_CODES.get(key)
    if code is not None:
        return CodedConcept(code[0], "SCT", code[1])
    return CodedConcept(key[:16] or "FINDING", LOCAL_SCHEME, str(name).replace("_", " ")[:64])


@dataclass(frozen=True)
class ShiftVerdict:
    """The dataset-shift verdict an SR carries: the image's (``shift_score``/``shift_flag`` of
    predictions.csv) and its cohort's (:func:`cxr_cad.shift.stats.cohort_shift`); None = unknown."""

    image_score: float | None = None
    image_flagged: bool | None = None
    cohort: Mapping[str, Any] | None = None

    @property
    def cohort_flagged(self) -> bool | None:
        return None if self.cohort is None else bool(self.cohort.get("flagged"))

    @property
    def not_validated(self) -> bool:
        """True when the image or its cohort is flagged: the model was not validated for them."""
        return bool(self.image_flagged) or bool(self.cohort_flagged)

    @property
    def known(self) -> bool:
        return self.image_flagged is not None or self.cohort is not None

    @classmethod
    def from_row(cls, row: Mapping[str, Any], cohort: Mapping[str, Any] | None = None) -> ShiftVerdict:
        score = number(row.get("shift_score"))
        flag = number(row.get("shift_flag"))
        flagged = None if flag is None else bool(flag)
        if flagged is None and score is not None:
            flagged = score > 1.0
        return cls(score, flagged, cohort)

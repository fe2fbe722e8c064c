"""The one Patient's Age parser: a DICOM Age String, or a number of years, to years.

Used by the scan (``patient_age_years`` in manifests) and by the subgroup metrics (age bands);
both give the same years for the same value. Missing-value contract: ``None`` when the value is
missing or cannot be read as an age (callers that work in floats turn it into NaN).
"""

from __future__ import annotations

import math
import numbers
import re

_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _years(value: float) -> float | None:
    return value if math.isfinite(value) and value >= 0 else None


def age_in_years(value: object) -> float | None:
    """Years from a Patient's Age.

    Accepted:
        * a DICOM Age String ((0010,1010) Patient's Age, VR AS): ``"045Y"``, ``"006M"``,
          ``"003W"``, ``"010D"`` (case and surrounding blanks ignored), rounded to 4 decimals;
        * a number of years, as a number (``45``, ``17.9``) or as text without a unit
          (``"045"``, ``"45.0"``: what a CSV column of years reads back as).

    Returns:
        The age in years, or ``None`` when the value is missing (``None``, ``""``, NaN) or is
        not an age (``"abc"``, a negative or infinite number, ``True``).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return _years(float(value))
    text = str(value).strip()
    m = _AGE_RE.match(text)
    if m:
        return round(int(m.group(1)) * _AGE_UNIT_YEARS[m.group(2).upper()], 4)
    try:
        return _years(float(text))
    except ValueError:
        return None

"""One Patient's Age parser: the scan (manifest) and the report's age bands give the same years."""

from __future__ import annotations

import pytest

from cxr_cad.manifest import age_in_years
from cxr_cad.manifest.schema import age_in_years as schema_age_in_years
from cxr_cad.metrics import age_band

CASES = [
    ("045Y", 45.0),
    ("006M", 0.5),
    ("003W", 0.0575),
    ("010D", 0.0274),
    ("", None),
    ("abc", None),
    ("045", 45.0),
    (" 045y ", 45.0),
    ("45.0", 45.0),
    (None, None),
    (float("nan"), None),
    (-1, None),
    (True, None),
    (17.9, 17.9),
]


@pytest.mark.parametrize("value,years", CASES)
def test_manifest_and_metrics_give_the_same_years(value, years):
    got = age_in_years(value)
    if years is None:
        assert got is None  # the contract: None when missing or not an age ...
        assert age_band(got) == "unknown"  # ... which the (pure) metrics band as unknown
    else:
        assert got == pytest.approx(years, abs=1e-4)


def test_scan_row_uses_the_same_parser(tmp_path):
    """The manifest's patient_age_years comes from the same function the metrics band."""
    from cxr_cad.manifest import scan

    assert scan.age_in_years is age_in_years is schema_age_in_years

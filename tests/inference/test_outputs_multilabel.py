"""predictions.csv columns of a multi-label model (cxr_cad.inference.outputs)."""

from __future__ import annotations

import pytest

from cxr_cad.core.columns import PREDICTION_COLUMNS
from cxr_cad.inference.outputs import multilabel_fields, multilabel_findings, multilabel_prediction_columns


def test_columns_replace_probability_decision_threshold_in_model_order():
    cols = multilabel_prediction_columns(["Effusion", "Mass"])
    assert cols[:3] == ["path", "sop_instance_uid", "study_instance_uid"]
    assert cols[3:7] == ["probability_Effusion", "decision_Effusion", "probability_Mass", "decision_Mass"]
    assert "probability" not in cols and "threshold" not in cols
    assert cols[7:] == [
        c
        for c in PREDICTION_COLUMNS
        if c not in ("path", "sop_instance_uid", "study_instance_uid", "probability", "decision", "threshold")
    ]


def test_fields_use_each_findings_threshold():
    findings = multilabel_findings(
        {"extra": {"multilabel": {"findings": ["A", "B"], "thresholds": {"A": {"value": 0.3}, "B": {"value": 0.7}}}}}
    )
    assert findings == [("A", 0.3), ("B", 0.7)]
    cells = multilabel_fields([0.5, 0.5], findings)
    assert cells == {
        "probability_A": "0.500000",
        "decision_A": "present",
        "probability_B": "0.500000",
        "decision_B": "absent",
    }
    assert multilabel_findings({"extra": {}}) is None
    with pytest.raises(ValueError):
        multilabel_fields([0.5], findings)

"""The label-key lists in the docs and workflow comments stay in step with LABEL_KEYS."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cxr_cad.manifest import LABEL_KEYS

ROOT = Path(__file__).resolve().parents[2]
# Every place that lists the label key columns for users, in detection order.
PLACES = ["docs/quickstart.md", "docs/workflows.md", "workflows/batch_evaluate.yaml"]
KEY_WORDS = set(LABEL_KEYS) | {"accession_number", "series_instance_uid", "patient_key"}


def _listed_keys(text: str) -> list[list[str]]:
    """Each run of label-key names listed together (within one sentence or table cell)."""
    runs = []
    for chunk in re.split(r"[.;|\n]\s*(?=[A-Z`|#]|$)", text.replace("\n#", " ")):
        words = [w for w in re.findall(r"[a-z_]+", chunk) if w in KEY_WORDS]
        if len(set(words)) >= 3:
            runs.append(list(dict.fromkeys(words)))
    return runs


@pytest.mark.parametrize("place", PLACES)
def test_label_key_lists_match_code(place):
    runs = _listed_keys((ROOT / place).read_text())
    assert runs, f"{place} no longer lists the label keys; update PLACES"
    for run in runs:
        assert run == list(LABEL_KEYS), f"{place} lists {run}, the code detects {list(LABEL_KEYS)}"


def test_listing_detector_sees_a_wrong_order():
    wrong = "one key column: patient_id, study_instance_uid, sop_instance_uid, accession_number or path."
    assert _listed_keys(wrong) == [["patient_id", "study_instance_uid", "sop_instance_uid", "accession_number", "path"]]

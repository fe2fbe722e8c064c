"""api.cohort_info: the one place a report's cohort fields are put together (report, evaluate, workflow)."""

from __future__ import annotations

import json

from cxr_cad import api


def test_cli_style_name_date_and_ingest_record(tmp_path):
    (tmp_path / "ingest.json").write_text(
        json.dumps({"policy": {"modalities": ["DX"], "reject_lateral": True}, "counts": {"accepted": 3, "patients": 2}})
    )
    info_file = tmp_path / "cohort.yaml"
    info_file.write_text("name: from file\nsite: A\n")
    manifest = tmp_path / "manifest.csv"
    info = api.cohort_info(None, default_name="dflt", info=info_file, manifest=manifest)
    assert info["name"] == "from file" and info["site"] == "A"
    assert info["source"] == api.INGESTED_SOURCE and "modalities DX" in info["ingest_rules"]
    assert "date" in info and info["date"] is None
    assert list(info) == ["name", "site", "source", "ingest_rules", "date"]  # as the CLI wrote it before
    assert api.cohort_info("given", default_name="dflt", date="2024")["name"] == "given"
    assert api.cohort_info(None, default_name="dflt", date="2024") == {"name": "dflt", "date": "2024"}


def test_workflow_style_keeps_its_block_and_adds_no_date_or_source(tmp_path):
    info = api.cohort_info(
        info={"site": "B", "date": "", "name": "test cohort"},
        policy={"modalities": ["CR"], "apply_voi": False},
        record_date=False,
        validation="internal",
        ingest_source=None,
    )
    assert info == {
        "site": "B",
        "name": "test cohort",
        "ingest_rules": "modalities CR; VOI LUT not applied",
        "validation": "internal",
    }

"""What a clinical reviewer reads first: headline, threshold provenance in words, population,
model description, warnings, failure table, shift, checklist, and CI labels at any level."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from cxr_cad.report import ReportOptions, write_report
from cxr_cad.report.clinical import find_model_card, threshold_provenance
from tests.report.test_report import MODEL_INFO, PATIENT_TAG, html_text, pdf_text, synthetic_predictions

OPTIONS = ReportOptions(n_bootstrap=200, seed=1)
#: a bundle's header as model_info_from_bundle returns it, with the training record
BUNDLE_INFO = {
    **MODEL_INFO,
    "threshold": 0.9317,
    "threshold_bundle": 0.9317,
    "threshold_method": "youden",
    "threshold_selection": {
        "method": "youden",
        "params": {},
        "chosen_on": {"n": 14, "n_positive": 7, "description": "validation split"},
        "tie_range": [0.635, 0.932],
        "n_val_pos": 7,
        "n_val_neg": 7,
    },
    "transform_spec": {
        "image_size": 128,
        "aspect": "squash",
        "in_channels": 1,
        "mean": [0.449],
        "std": [0.226],
        "apply_voi": True,
    },
    "train_config": {"model": {"init": "none"}, "augment": {"rotate_deg": 10.0}},
    "training": {
        "n_train": 56,
        "best_epoch": 9,
        "epochs_run": 12,
        "val_auc": 0.87,
        "split": "patients",
        "threshold_detail": {"n_val": 14},
    },
}


def test_threshold_provenance_in_words():
    text = threshold_provenance(0.9317, "bundle", "youden", BUNDLE_INFO)["text"]
    assert text == (
        "0.9317, maximised Youden's J on 14 validation images (7 positive), tie range "
        "0.635\u20130.932; stored in the model bundle, fixed before this cohort"
    )
    cli = threshold_provenance(0.6, "command line", "given on the command line", BUNDLE_INFO)["text"]
    assert cli == (
        "0.6000, given on the command line; how it was chosen is not recorded (the bundle's own "
        "threshold, 0.9317, is not used)"
    )
    # as engine.train writes it: tie range under params, counts and a small-set warning under chosen_on
    engine = {
        **BUNDLE_INFO,
        "threshold_selection": {
            "method": "youden",
            "params": {"tie_range": [0.635, 0.932], "n_tied": 3},
            "chosen_on": {"n": 14, "n_positive": 7, "n_negative": 7, "warning": "7 positive images (< 50)"},
        },
    }
    prov = threshold_provenance(0.9317, "bundle", "youden", engine)
    assert prov["text"] == text and prov["warning"].endswith("7 positive images (< 50)")
    old = {**BUNDLE_INFO, "threshold_selection": {"method": "youden", "chosen_on": None, "params": {}}}
    assert "on validation data of unrecorded size" in threshold_provenance(0.5, "bundle", None, old)["text"]


@pytest.fixture(scope="module")
def bundle_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("clinical")
    df = synthetic_predictions(120, seed=11)
    result = write_report(
        df,
        out,
        model_info=BUNDLE_INFO,
        options=OPTIONS,
        cohort_info={"name": "site B", "source": "PACS export 2025", "validation": "external"},
    )
    return df, result


def test_headline_and_model_description(bundle_report):
    _, result = bundle_report
    d = result.data
    page = html_text(result.out_dir / "report.html")
    summary = page[page.index("1. Summary") : page.index("2. Model, cohort")]
    op = d["operating_points"][0]
    assert op["name"] == "model" and op["label"].startswith("Model's stored threshold")
    for text in (
        "tie range 0.635\u20130.932",
        "Sensitivity (95% CI)",
        "Specificity (95% CI)",
        "AUC (95% CI)",
        "external",
        "patient-level",
        "Cohort shift check",
        "not computed",
        f"{d['cohort']['n_images_evaluated']} / {d['cohort']['n_patients']} /",
    ):
        assert text in summary, text
    md = d["model_description"]
    assert md["input"].startswith("128 x 128 px") and md["n_train"] == "56" and md["best_epoch"] == "9"
    assert "0.870 (validation)" in page and "not available" in page  # no model card next to a dict
    assert d["population"]["source"] == "PACS export 2025" and d["population"]["site"] == "not recorded"
    assert d["population"]["sex_missing"].endswith("/120 images")


def test_youden_is_named_only_for_the_cohort_threshold(bundle_report):
    _, result = bundle_report
    page = html_text(result.out_dir / "report.html")
    labels = [o["label"] for o in result.data["operating_points"]]
    assert [lab for lab in labels if "Youden" in lab] == ["Youden threshold chosen on this cohort (optimistic)"]
    assert "stored in the model bundle" in page


def test_command_line_threshold_is_never_called_stored(tmp_path):
    df = synthetic_predictions(80, seed=12)
    result = write_report(
        df,
        tmp_path,
        model_info=BUNDLE_INFO,
        threshold=0.6,
        threshold_method="given on the command line",
        options=OPTIONS,
    )
    assert result.data["operating_points"][0]["label"] == "Threshold given on the command line"
    for text in (html_text(tmp_path / "report.html"), re.sub(r"\s+", " ", pdf_text(tmp_path / "report.pdf"))):
        assert "given on the command line" in text
        assert "stored in the" not in text and "chosen before this cohort" not in text
        assert "fixed before this cohort" not in text


def test_failure_table_lists_every_misclassified_image(bundle_report):
    df, result = bundle_report
    d = result.data
    c = d["operating_points"][0]["metrics"]["confusion"]
    cases = d["failures"]["cases"]
    assert len(cases) == c["fp"] + c["fn"]
    y = (df["label"] == "PNEUMONIA").to_numpy()
    wrong = np.flatnonzero((df["probability"].to_numpy() >= 0.9317) != y)
    assert sorted(x["image_index"] for x in cases) == wrong.tolist()
    assert {x["error"] for x in cases} <= {"false positive", "false negative"}
    assert "view_position" in cases[0] and "patient_id" not in cases[0]
    assert PATIENT_TAG not in (result.out_dir / "report.html").read_text()


def test_failure_table_names_rows_of_predictions_csv_never_patients(tmp_path):
    result = write_report(
        synthetic_predictions(60, seed=13),
        tmp_path,
        model_info=MODEL_INFO,
        options=OPTIONS,
        include_identifiers=True,
        pdf=False,
    )
    pred = pd.read_csv(tmp_path / "predictions.csv", dtype=str)
    cases = result.data["failures"]["cases"]
    assert cases and all("patient_id" not in c for c in cases)
    for c in cases:  # the image number leads to the patient in predictions.csv (identifiers were asked for)
        row = pred[pred["image_index"] == str(c["image_index"])].iloc[0]
        assert PATIENT_TAG in row["patient_id"] and row["label"] == c["label"]


def test_confidence_level_and_bootstrap_reach_every_label(tmp_path):
    opts = ReportOptions(alpha=0.1, n_bootstrap=150, seed=2)
    df = synthetic_predictions(90, seed=14, folds=3).assign(threshold=lambda x: 0.4 + 0.05 * x["fold"])
    result = write_report(df, tmp_path, model_info=MODEL_INFO, options=opts)
    assert [o["name"] for o in result.data["operating_points"]] == ["model", "folds", "youden"]
    for text in (html_text(tmp_path / "report.html"), re.sub(r"\s+", " ", pdf_text(tmp_path / "report.pdf"))):
        levels = set(re.findall(r"(\d+)% CI", text))
        assert levels == {"90"}, levels
    for op in result.data["operating_points"]:
        assert op["metrics"]["f1_ci"]["n_resamples"] == 150 and op["metrics"]["f1_ci"]["seed"] == 2
    assert result.data["patient_level"]["n_resamples"] == 150
    assert result.data["utility"]["calibration_ci"]["n_resamples"] == 150


def test_zero_width_and_small_sample_warnings(tmp_path):
    y = np.r_[np.ones(8, int), np.zeros(12, int)]
    df = pd.DataFrame(
        {
            "sop_instance_uid": [f"1.2.{i}" for i in range(20)],
            "label": np.where(y == 1, "PNEUMONIA", "NORMAL"),
            "probability": np.r_[np.linspace(0.7, 0.9, 8), np.linspace(0.1, 0.3, 12)],
        }
    )
    result = write_report(df, tmp_path, positive_class="PNEUMONIA", threshold=0.5, options=OPTIONS, pdf=False)
    w = result.data["warnings"]
    assert any(x.startswith("Small sample: 8 positive and 12 negative") for x in w)
    assert any("AUC (DeLong, logit): the interval has zero width (1.000 (1.000\u20131.000))" in x for x in w)
    assert any(x.startswith("F1 at") and "zero width" in x for x in w)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["warnings"] == w
    page = html_text(tmp_path / "report.html")
    assert "zero width" in page[: page.index("2. Model, cohort")]  # in the headline box


def test_shift_section_and_headline_warning(tmp_path):
    shift = {
        "cohort_score": 1.8,
        "threshold": 1.0,
        "flagged": True,
        "n_images": 50,
        "n_flagged": 12,
        "fraction_flagged": 0.24,
        "message": "12 of 50 images are unlike the training images",
    }
    result = write_report(
        synthetic_predictions(50, seed=15), tmp_path, model_info=MODEL_INFO, options=OPTIONS, pdf=False, shift=shift
    )
    assert result.data["shift"]["n_flagged"] == 12
    assert result.data["warnings"][0] == (
        "Cohort shift, tiny.pt (abababababab): 12 of 50 images are unlike the training images"
    )  # the warning names the model whose training data the cohort is compared with
    page = html_text(tmp_path / "report.html")
    assert "FLAGGED: 12 of 50 images" in page and "24.0%" in page


def test_model_card_next_to_the_bundle(tmp_path):
    bundle = tmp_path / "model.pt"
    assert find_model_card(bundle) is None
    (tmp_path / "model_card.md").write_text("# card\n")
    assert find_model_card(bundle) == str((tmp_path / "model_card.md").resolve())
    (tmp_path / "model.model_card.md").write_text("# card\n")
    assert find_model_card(bundle).endswith("model.model_card.md")
    info = {**BUNDLE_INFO, "model_card": find_model_card(bundle)}
    write_report(synthetic_predictions(40, seed=16), tmp_path / "r", model_info=info, options=OPTIONS, pdf=False)
    assert (
        f'href="{(tmp_path / "model.model_card.md").resolve().as_uri()}"'
        in (tmp_path / "r" / "report.html").read_text()
    )


def test_checklist_maps_items_or_says_not_recorded(bundle_report):
    _, result = bundle_report
    from cxr_cad.report.view import build_document

    doc = build_document(result.data)
    last = doc["sections"][-1]
    assert last["id"] == "checklist"
    rows = last["blocks"][1]["rows"]
    by_item = {(r[0], r[1]): r[3] for r in rows}
    assert by_item[("CLAIM", "7")] == "section 3: Population and reference standard"  # source was given
    assert by_item[("CLAIM", "14")].startswith("not recorded")  # reference standard not
    assert by_item[("CLAIM", "34")] == "section 12: Failure analysis"
    assert by_item[("TRIPOD+AI", "16")].startswith("not recorded")  # no shift result
    assert {r[0] for r in rows} == {"CLAIM", "TRIPOD+AI"} and len(rows) > 40
    chandola = [
        b for s in doc["sections"] for b in s["blocks"] if "Chandola et al. 2021, ch. 4" in b.get("caption", "")
    ]
    assert len(chandola) == 1 and chandola[0]["kind"] == "table"


def test_workflow_cohort_block_is_validated(tmp_path):
    from cxr_cad.errors import ConfigError
    from cxr_cad.workflow.schema import validate_workflow

    (tmp_path / "train").mkdir()
    doc = {
        "steps": ["ingest", "split", "train", "evaluate", "report"],
        "data": {"train": str(tmp_path / "train")},
        "cohort": {"source": "Hospital A", "validation": "external"},
    }
    wf = validate_workflow(doc, base_dir=tmp_path)
    assert wf["cohort"]["source"] == "Hospital A" and wf["cohort"]["site"] is None
    with pytest.raises(ConfigError, match="cohort"):
        validate_workflow({**doc, "cohort": {"sauce": "x"}}, base_dir=tmp_path)

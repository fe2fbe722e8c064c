"""The shipped workflows end to end on tiny synthetic cohorts (slow: several short trainings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr_cad.cli import main
from tests.factories.synth import write_png_cohort

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"

TINY = [
    "model.init=none",
    "model.image_size=32",
    "train.epochs=1",
    "train.force=true",  # 1-epoch tiny models may be no better than chance (the guard would stop the run)
    "train.batch_size=8",
    "train.runtime.workers=0",
    "train.runtime.device=cpu",
    "evaluate.workers=0",
    "evaluate.device=cpu",
    "report.bootstrap=100",
    "report.pdf=false",
    "ingest.workers=1",
    r"data.patient_id_pattern=^(P\d+)-",
]


def _sets(*items):
    out = []
    for item in (*TINY, *items):
        out += ["--set", item]
    return out


@pytest.mark.slow
def test_study_then_batch_evaluate_then_retrain(tmp_path, capsys):
    train, test = tmp_path / "train", tmp_path / "test"
    write_png_cohort(train, n_patients=12, size=48, seed=1)
    write_png_cohort(test, n_patients=10, size=48, seed=2)
    study = tmp_path / "study"
    argv = [
        "-q",
        "run",
        str(WORKFLOWS / "chandola2021_pneumonia.yaml"),
        "--out",
        str(study),
        *_sets(f"data.train={train}", f"data.test={test}", "crossval.folds=2"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "test-cohort report" in out and "cross-validation report" in out
    run = json.loads((study / "run.json").read_text())
    assert [s["step"] for s in run["steps"]] == ["ingest", "crossval", "train", "evaluate", "report"]
    cv = json.loads((study / "report" / "crossval" / "metrics.json").read_text())
    assert cv["cohort"]["n_images_evaluated"] == 24 and len(cv["cross_validation"]["folds"]) == 2
    test_metrics = json.loads((study / "report" / "test" / "metrics.json").read_text())
    assert test_metrics["cohort"]["n_images_evaluated"] == 20
    # unchanged rerun: nothing runs; a report-only change reruns only the report
    assert main(argv) == 0
    assert {s["status"] for s in json.loads((study / "run.json").read_text())["steps"]} == {"skipped"}
    assert main(argv + ["--set", "report.alpha=0.1"]) == 0
    statuses = [s["status"] for s in json.loads((study / "run.json").read_text())["steps"]]
    assert statuses == ["skipped"] * 4 + ["ran"]

    bundle = study / "train" / "model.pt"
    batch = tmp_path / "batch"
    assert (
        main(
            [
                "-q",
                "run",
                str(WORKFLOWS / "batch_evaluate.yaml"),
                "--out",
                str(batch),
                *_sets(f"data.test={test}", f"model.bundle={bundle}"),
            ]
        )
        == 0
    )
    m = json.loads((batch / "report" / "test" / "metrics.json").read_text())
    assert m["cohort"]["n_images_evaluated"] == 20
    assert m["auc"]["delong"]["auc"] == pytest.approx(test_metrics["auc"]["delong"]["auc"])

    retrain = tmp_path / "retrain"
    assert (
        main(
            [
                "-q",
                "run",
                str(WORKFLOWS / "retrain_new_cohort.yaml"),
                "--out",
                str(retrain),
                *_sets(f"data.train={test}", f"model.bundle={bundle}"),
            ]
        )
        == 0
    )
    m = json.loads((retrain / "report" / "test" / "metrics.json").read_text())
    cmp_ = m["comparison"]
    assert cmp_["n"] == m["cohort"]["n_images_evaluated"] > 0
    assert "p_value" in cmp_["paired_delong"]
    assert "paired DeLong p =" in capsys.readouterr().out
    # issue 20: both models side by side, one CI method, each model named, validation per model
    assert cmp_["name_a"].startswith("newly trained model ") and cmp_["name_b"].startswith("previous model ")
    assert cmp_["name_b"].split()[-1] == cmp_["sha256_b"][:12]
    assert cmp_["auc_a_delong"] == m["auc"]["delong_logit"]  # the summary's AUC and CI, not a second one
    assert cmp_["validation_b"].startswith("external") and cmp_["validation_a"].startswith("internal")
    assert cmp_["shift_b"] is not None and m["shift"] is not None  # each model's own verdict
    from tests.report.test_report import html_text

    page = html_text(retrain / "report" / "test" / "report.html")
    summary = " ".join(page[: page.index("2. Model, cohort")].split())
    assert f"Validation {cmp_['name_a']}: internal" in summary
    assert f"{cmp_['name_b']}: external" in summary
    assert f"Cohort shift check, {cmp_['name_b']}" in summary and "Conclusion" in summary
    low, high = (f"{cmp_['auc_a_delong'][k]:.3f}" for k in ("low", "high"))
    assert summary.count(f"{low}\u2013{high}") >= 1 and page.count(f"{low}\u2013{high}") >= 2


@pytest.mark.slow
def test_retrain_fine_tunes_a_128px_parent(tmp_path):
    """The shipped retrain workflow as written (model.init: bundle) on a parent trained at 128 px:
    it trains at the parent's size instead of refusing the parent (it had 224 written in)."""
    from tests.workflow.parent import write_parent_bundle

    cohort = tmp_path / "site"
    write_png_cohort(cohort, n_patients=10, size=48, seed=3)
    parent = write_parent_bundle(tmp_path / "parent.pt", image_size=128)
    sets = [s for s in TINY if not s.startswith(("model.init=", "model.image_size="))]
    sets += [f"data.train={cohort}", f"model.bundle={parent}"]
    retrain = tmp_path / "retrain"
    argv = ["-q", "run", str(WORKFLOWS / "retrain_new_cohort.yaml"), "--out", str(retrain)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    from cxr_cad.model import load_bundle

    child = load_bundle(retrain / "train" / "model.pt")
    assert child.transform_spec.image_size == 128
    assert "input settings differ" not in (retrain / "run.log").read_text()  # not forced past the parent guard
    m = json.loads((retrain / "report" / "test" / "metrics.json").read_text())
    assert m["comparison"]["n"] == m["cohort"]["n_images_evaluated"] > 0

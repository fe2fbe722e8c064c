"""ReportOptions (a frozen pydantic model, every problem reported at once as ConfigError), the
new ``write_report(predictions, out, options, ...)`` call and the old keyword form, one error
type per fault, and outputs replaced together."""

from __future__ import annotations

import json
import os
import stat

import pytest

from cxr_cad.config.base import parse_model
from cxr_cad.errors import ConfigError, ManifestError, OutputError, UsageError
from cxr_cad.report import ReportOptions, write_report
from cxr_cad.report.inputs import check_cohort_info
from tests.report.test_report import MODEL_INFO, synthetic_predictions

FAST = {"n_bootstrap": 100, "seed": 4, "pdf": False}


def _metrics(path) -> dict:
    d = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    d.pop("generated_utc")
    return d


def test_every_bad_option_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        ReportOptions(alpha=2, n_bootstrap=5, prevalences=(0.0,), auc_interval="exact", n_calibration_bins=1)
    problems = err.value.problems
    assert len(problems) == 5
    for name in ("alpha", "n_bootstrap", "prevalences", "auc_interval", "n_calibration_bins"):
        assert any(p.startswith(f"{name}:") for p in problems), (name, problems)
    with pytest.raises(ConfigError, match="threshold"):
        ReportOptions(threshold=1.5)


def test_unknown_option_is_refused_and_options_are_frozen():
    with pytest.raises(ConfigError, match="alpah: unknown key"):
        parse_model(ReportOptions, {"alpah": 0.1})
    opts = ReportOptions(alpha=0.1, prevalences=[0.1, 0.3])
    assert opts.prevalences == (0.1, 0.3)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        opts.alpha = 0.2  # type: ignore[misc]
    assert opts.replace(seed=3).seed == 3 and opts.seed == 0


def test_new_call_form_gives_the_numbers_of_the_old_one(tmp_path):
    df = synthetic_predictions(60, seed=7)
    cohort = {"name": "opts", "source": "Hospital A"}
    write_report(
        df,
        tmp_path / "old",
        positive_class="PNEUMONIA",
        threshold=0.45,
        threshold_method="given on the command line",
        cohort_info=cohort,
        include_identifiers=True,
        options=ReportOptions(n_bootstrap=100, seed=4),
        pdf=False,
    )
    opts = ReportOptions(
        positive_class="PNEUMONIA",
        threshold=0.45,
        threshold_method="given on the command line",
        cohort_info=cohort,
        include_identifiers=True,
        **FAST,
    )
    result = write_report(df, tmp_path / "new", opts)
    assert (
        _metrics(tmp_path / "old")
        == _metrics(tmp_path / "new")
        == {k: v for k, v in result.data.items() if k != "generated_utc"}
    )
    assert (tmp_path / "old" / "predictions.csv").read_text() == (tmp_path / "new" / "predictions.csv").read_text()
    from_dict = write_report(df, tmp_path / "dict", opts.model_dump())
    assert {k: v for k, v in from_dict.data.items() if k != "generated_utc"} == _metrics(tmp_path / "new")
    with pytest.raises(ConfigError, match="n_bootstrap"):
        write_report(df, tmp_path / "dict", {"n_bootstrap": 3})
    assert "patient_id" in (tmp_path / "new" / "predictions.csv").read_text().splitlines()[0]
    assert result.data["threshold_provenance"]["source"] == "command line"
    assert not (tmp_path / "new" / "report.pdf").exists()


def test_old_keywords_are_checked(tmp_path):
    df = synthetic_predictions(40, seed=8)
    with pytest.raises(UsageError, match="pdf"):
        write_report(df, tmp_path, ReportOptions(pdf=True), positive_class="PNEUMONIA", pdf=False)
    with pytest.raises(TypeError, match="treshold"):
        write_report(df, tmp_path, positive_class="PNEUMONIA", treshold=0.5)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="threshold"):
        write_report(df, tmp_path, positive_class="PNEUMONIA", threshold=2.0)
    with pytest.raises(ConfigError, match="threshold"):  # the model's threshold is checked too
        write_report(df, tmp_path, ReportOptions(**FAST), model_info={**MODEL_INFO, "threshold": 1.5})
    assert not (tmp_path / "metrics.json").exists()


def test_table_faults_are_manifest_errors(tmp_path):
    df = synthetic_predictions(40, seed=9)
    opts = ReportOptions(positive_class="PNEUMONIA", **FAST)
    with pytest.raises(ManifestError, match="probability"):
        write_report(df.drop(columns=["probability"]), tmp_path, opts)
    with pytest.raises(ManifestError, match="nothing to evaluate"):
        write_report(df.assign(probability=float("nan")), tmp_path, ReportOptions(**FAST), model_info=MODEL_INFO)


def test_cohort_description_lists_every_problem():
    with pytest.raises(ConfigError) as err:
        check_cohort_info({"sauce": "x", "site": {"a": 1}}, "cohort.yaml")
    assert len(err.value.problems) == 2 and str(err.value).startswith("cohort.yaml: 2 problems")


def test_outputs_follow_the_umask_and_leave_no_temporary_files(tmp_path):
    old = os.umask(0o077)
    try:
        result = write_report(
            synthetic_predictions(40, seed=10), tmp_path, ReportOptions(positive_class="PNEUMONIA", **FAST)
        )
    finally:
        os.umask(old)
    for path in result.files.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_pdf_replaces_no_file(tmp_path, monkeypatch):
    import cxr_cad.report.pdf as pdf_mod

    df = synthetic_predictions(40, seed=11)
    write_report(df, tmp_path, ReportOptions(positive_class="PNEUMONIA", **FAST))
    before = {n: (tmp_path / n).read_bytes() for n in ("metrics.json", "predictions.csv", "report.html")}

    def broken(doc, images):
        raise OutputError("no room for the PDF")

    monkeypatch.setattr(pdf_mod, "pdf_bytes", broken)
    with pytest.raises(OutputError, match="no room"):
        write_report(df, tmp_path, ReportOptions(positive_class="PNEUMONIA", threshold=0.3, n_bootstrap=100, seed=4))
    assert {n: (tmp_path / n).read_bytes() for n in before} == before

"""cxr_cad.report on synthetic predictions: files, numbers from cxr_cad.metrics, consistency
between metrics.json, report.html and report.pdf, and input errors."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pandas as pd
import pytest

from cxr_cad import metrics
from cxr_cad.errors import UsageError
from cxr_cad.report import ReportOptions, write_report
from cxr_cad.report.fmt import fmt_auc, fmt_interval, fmt_num, fmt_p, fmt_prop

PATIENT_TAG = "QZXPATIENTKEY"


def synthetic_predictions(n: int = 200, seed: int = 0, folds: int = 0) -> pd.DataFrame:
    """Labelled predictions with subgroup metadata and distinctive patient ids / paths."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    score = np.clip(rng.normal(np.where(y, 0.68, 0.35), 0.18), 0, 1).round(6)
    df = pd.DataFrame(
        {
            "sop_instance_uid": [f"1.2.826.0.1.{seed}.{i}" for i in range(n)],
            "patient_id": [f"{PATIENT_TAG}{i // 2:05d}" for i in range(n)],
            "path": [f"/data/{PATIENT_TAG}{i // 2:05d}/img{i}.dcm" for i in range(n)],
            "label": np.where(y, "PNEUMONIA", "NORMAL"),
            "probability": score,
            "view_position": rng.choice(["PA", "AP"], n),
            "patient_sex": rng.choice(["F", "M", ""], n),
            "patient_age": rng.choice(["045Y", "070Y", "003Y", "006M", ""], n),
            "manufacturer": rng.choice(["ACME", "Other"], n),
        }
    )
    # a subgroup holding one class only -> "not estimable"
    df.loc[df.index[:6], "manufacturer"] = "OneClassCo"
    df.loc[df.index[:6], "label"] = "NORMAL"
    if folds:
        df["fold"] = np.arange(n) % folds
    return df


MODEL_INFO = {
    "name": "tiny.pt",
    "sha256": "ab" * 32,
    "classes": ["NORMAL", "PNEUMONIA"],
    "positive_class": "PNEUMONIA",
    "threshold": 0.5,
    "threshold_method": "fixed",
    "training_manifest_hash": "cd" * 32,
    "created": "2026-11-27T07:00:00Z",
}
OPTIONS = ReportOptions(n_bootstrap=300, seed=3)


def pdf_text(path) -> str:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(path))
    try:
        return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    finally:
        doc.close()


def html_text(path) -> str:
    """Visible text of the HTML (tags dropped, entities decoded)."""
    raw = path.read_text(encoding="utf-8")
    raw = re.sub(r'src="data:[^"]*"', "", raw)
    return html.unescape(re.sub(r"<[^>]+>", " ", raw))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    df = synthetic_predictions()
    other = df[["sop_instance_uid"]].assign(
        probability=np.clip(df["probability"] + np.random.default_rng(9).normal(0, 0.2, len(df)), 0, 1)
    )
    rejected = pd.DataFrame(
        {
            "path": [f"/data/{PATIENT_TAG}99999/x.dcm"] * 3,
            "reason": ["LATERAL_VIEW", "LATERAL_VIEW", "NOT_DICOM"],
            "detail": ["", "", ""],
        }
    )
    out = tmp_path_factory.mktemp("report")
    result = write_report(
        df,
        out,
        model_info=MODEL_INFO,
        cohort_info={"name": "synthetic", "manifest_hash": "ef" * 32, "date": "2026-11"},
        rejected_df=rejected,
        comparison={"predictions": other, "name": "old.pt"},
        options=OPTIONS,
    )
    return df, other, result


def test_report_folder_has_every_file(report):
    _, _, result = report
    names = {p.name for p in result.out_dir.iterdir()}
    assert {
        "report.html",
        "report.pdf",
        "metrics.json",
        "predictions.csv",
        "roc.svg",
        "calibration.svg",
        "score_histogram.svg",
        "comparison_roc.svg",
        "precision_recall.svg",
        "decision_curve.svg",
    } <= names
    assert "cv_roc.svg" not in names  # no folds
    for p in result.out_dir.iterdir():
        assert p.stat().st_size > 1000 or p.suffix == ".csv"
    assert result.out_dir.joinpath("report.pdf").read_bytes().startswith(b"%PDF")


def test_numbers_come_from_cxr_cad_metrics(report):
    df, other, result = report
    d = json.loads((result.out_dir / "metrics.json").read_text())
    y = (df["label"] == "PNEUMONIA").to_numpy().astype(int)
    s = df["probability"].to_numpy()
    ci = metrics.delong_auc_ci(y, s)
    assert d["auc"]["delong"]["auc"] == pytest.approx(ci.auc)
    assert d["auc"]["delong"]["low"] == pytest.approx(ci.low)
    boot = metrics.bootstrap_auc_ci(y, s, n_resamples=300, seed=3)
    assert d["auc"]["bootstrap"]["low"] == pytest.approx(boot.low)
    assert d["auc"]["bootstrap"]["n_resamples"] == 300 and d["settings"]["bootstrap_seed"] == 3
    youden = metrics.youden_threshold(y, s)
    ops = {o["name"]: o for o in d["operating_points"]}
    assert ops["model"]["threshold"] == 0.5 and ops["youden"]["threshold"] == pytest.approx(youden)
    bm = metrics.binary_metrics(y, s, threshold=0.5)
    assert ops["model"]["metrics"]["confusion"] == bm["confusion"]
    assert ops["model"]["metrics"]["sensitivity"]["low"] == pytest.approx(bm["sensitivity"]["low"])
    # slow obvious check of the confusion matrix
    called = s >= 0.5
    assert bm["confusion"]["tp"] == int(np.sum(called & (y == 1)))
    assert bm["confusion"]["tn"] == int(np.sum(~called & (y == 0)))
    assert d["calibration"]["brier_score"] == pytest.approx(np.mean((s - y) ** 2))
    test = metrics.delong_paired_test(y, s, other["probability"].to_numpy())
    assert d["comparison"]["paired_delong"]["p_value"] == pytest.approx(test.p_value)
    c = d["cohort"]
    assert c["n_images_evaluated"] == 200 and c["n_rejected"] == 3 and c["n_patients"] == 100
    assert c["rejected_by_reason"] == {"LATERAL_VIEW": 2, "NOT_DICOM": 1}
    assert c["class_counts"] == {"NORMAL": int((y == 0).sum()), "PNEUMONIA": int(y.sum())}
    assert d["software"]["cxr_cad"] and d["model"]["sha256"] == "ab" * 32
    assert d["cohort"]["manifest_hash"] == "ef" * 32


def test_metrics_json_is_strict_json(report):
    _, _, result = report
    text = (result.out_dir / "metrics.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def expected_strings(d: dict) -> list[str]:
    """Strings formatted from metrics.json that the HTML and PDF must both show."""
    ops = {o["name"]: o for o in d["operating_points"]}
    out = [
        fmt_auc(d["auc"]["delong"]),
        fmt_auc(d["auc"]["bootstrap"]),
        fmt_num(ops["youden"]["threshold"], 4),
        fmt_num(d["calibration"]["brier_score"], 4),
        fmt_num(d["calibration"]["ece"], 4),
        fmt_p(d["comparison"]["paired_delong"]["p_value"]),
        fmt_auc(d["comparison"]["auc_b_delong"]),
    ]
    for name in ("model", "youden"):
        m = ops[name]["metrics"]
        out += [fmt_prop(m[k]) for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv")]
        out += [fmt_prop(v) for v in m["per_class_accuracy"].values()]
        out.append(f"{m['sensitivity']['k']}/{m['sensitivity']['n']}")
    t = d["comparison"]["paired_delong"]
    out.append(fmt_interval(t["low"], t["high"]))
    return out


def test_html_pdf_and_json_show_the_same_numbers(report):
    _, _, result = report
    d = json.loads((result.out_dir / "metrics.json").read_text())
    page = html_text(result.out_dir / "report.html")
    pdf = pdf_text(result.out_dir / "report.pdf")
    pdf_flat = re.sub(r"\s+", " ", pdf)
    strings = expected_strings(d)
    assert len(strings) > 20
    for s in strings:
        assert s in page, f"{s!r} missing from report.html"
        assert s in pdf or s in pdf_flat, f"{s!r} missing from report.pdf"
    for text in (page, pdf_flat):
        assert "Youden" in text and "optimistic" in text
        assert "not a medical device" in text and "Methods" in text
        assert "score >= threshold" in text


def test_sections_in_the_issue_order(report):
    _, _, result = report
    page = html_text(result.out_dir / "report.html")
    pdf = re.sub(r"\s+", " ", pdf_text(result.out_dir / "report.pdf"))
    titles = [
        "1. Summary",
        "2. Model, cohort and intended use",
        "3. Population and reference standard",
        "4. Model description",
        "5. Cohort summary",
        "6. Cohort shift",
        "7. Diagnostic performance",
        "8. ROC analysis",
        "9. Clinical utility",
        "10. Calibration",
        "11. Subgroups",
        "12. Failure analysis",
        "13. Explanations (Grad-CAM)",
        "14. Comparison of two models",
        "15. Methods",
        "16. Appendix: CLAIM 2024 and TRIPOD+AI 2024 checklist",
    ]
    for text in (page, pdf):
        pos = [text.find(t) for t in titles]
        assert all(p >= 0 for p in pos), [t for t, p in zip(titles, pos) if p < 0]
        assert pos == sorted(pos)
    assert "without the model" in page  # Grad-CAM skipped with the reason


def test_one_class_subgroup_is_not_estimable(report):
    _, _, result = report
    d = json.loads((result.out_dir / "metrics.json").read_text())
    row = next(r for r in d["subgroups"]["manufacturer"] if r["value"] == "OneClassCo")
    assert row["estimable"] is False and row["auc"] is None
    assert set(d["subgroups"]) == {"view_position", "patient_sex", "age_band", "manufacturer"}
    page = html_text(result.out_dir / "report.html")
    assert re.search(r"OneClassCo \*\s+6\s+0/6\s+not estimable", page)  # * = small subgroup
    assert "manufacturer=OneClassCo" in d["small_subgroups"]
    assert "not corrected for multiplicity" in page


def test_predictions_csv_has_decisions_and_no_identifiers(report):
    df, _, result = report
    out = pd.read_csv(result.out_dir / "predictions.csv", dtype=str)
    assert list(out.columns) == [
        "image_index",
        "sop_instance_uid",
        "label",
        "probability",
        "decision",
        "decision_youden",
    ]
    assert len(out) == len(df)
    p = out["probability"].astype(float)
    assert ((p >= 0.5) == (out["decision"] == "PNEUMONIA")).all()


def test_cross_validation_folds_give_per_fold_curves(tmp_path):
    df = synthetic_predictions(150, seed=1, folds=3)
    df["threshold"] = df["fold"].map({0: 0.4, 1: 0.5, 2: 0.55})  # each fold's own threshold
    cv = {"n_folds": 3, "grouped_by": "patient_id"}
    result = write_report(df, tmp_path, positive_class="PNEUMONIA", threshold=0.5, cv=cv, options=OPTIONS, pdf=False)
    d = result.data
    assert (tmp_path / "cv_roc.svg").is_file()
    folds = d["cross_validation"]["folds"]
    assert [f["fold"] for f in folds] == [0, 1, 2]
    for f in folds:
        g = df[df["fold"] == f["fold"]]
        assert f["auc"] == pytest.approx(metrics.roc_auc((g["label"] == "PNEUMONIA").astype(int), g["probability"]))
    aucs = [f["auc"] for f in folds]
    assert d["cross_validation"]["auc_summary"]["mean"] == pytest.approx(np.mean(aucs))
    assert d["cross_validation"]["auc_summary"]["sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert len(d["cross_validation"]["mean_roc"]["tpr_mean"]) == 101
    assert d["cross_validation"]["crossval"]["grouped_by"] == "patient_id"
    assert "fold" in pd.read_csv(tmp_path / "predictions.csv").columns
    summary = metrics.crossval_summary(
        pd.DataFrame(
            {
                "y_true": (df["label"] == "PNEUMONIA").astype(int),
                "probability": df["probability"],
                "fold": df["fold"],
                "threshold": df["threshold"],
            }
        ),
        class_names=("NORMAL", "PNEUMONIA"),
        n_bootstrap=0,
    )
    assert [f["threshold"] for f in d["cross_validation"]["per_fold_metrics"]] == [0.4, 0.5, 0.55]
    sens = d["cross_validation"]["across_folds"]["sensitivity"]
    assert sens["mean"] == pytest.approx(summary["across_folds"]["sensitivity"]["mean"])
    page = html_text(tmp_path / "report.html")
    assert "Each held-out fold at its own threshold" in page
    # pooled out-of-fold decisions at each fold's own threshold: an operating point of its own
    ops = {o["name"]: o for o in d["operating_points"]}
    assert list(ops) == ["model", "folds", "youden"] and ops["folds"]["threshold"] is None
    pooled = summary["pooled"]["at_fold_thresholds"]
    assert ops["folds"]["metrics"]["confusion"] == pooled["confusion"]
    assert fmt_prop(ops["folds"]["metrics"]["sensitivity"]) in page
    out = pd.read_csv(tmp_path / "predictions.csv")
    expect = np.where(df["probability"] >= df["threshold"], "PNEUMONIA", "NORMAL")
    assert (out["decision_folds"] == expect).all()
    assert f"{100 * sens['mean']:.1f}% \u00b1 {100 * sens['sd']:.1f}%" in page


def test_without_model_threshold_only_youden(tmp_path):
    df = synthetic_predictions(80, seed=2)
    result = write_report(df, tmp_path, positive_class="PNEUMONIA", options=OPTIONS, pdf=False)
    assert [o["name"] for o in result.data["operating_points"]] == ["youden"]
    assert result.data["subgroup_threshold"] == "youden"
    assert "decision_youden" in pd.read_csv(tmp_path / "predictions.csv").columns


def test_unscored_and_unlabelled_rows_are_accounted_for(tmp_path):
    df = synthetic_predictions(60, seed=4)
    df.loc[0, "label"] = ""
    df.loc[1, "probability"] = np.nan
    result = write_report(df, tmp_path, positive_class="PNEUMONIA", threshold=0.5, options=OPTIONS, pdf=False)
    c = result.data["cohort"]
    assert c["n_images_evaluated"] == 58 and c["n_rejected"] == 2
    assert c["rejected_by_reason"] == {"NO_LABEL": 1, "NOT_SCORED": 1}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.drop(columns=["probability"]), "probability"),
        (lambda d: d.assign(label=np.where(np.arange(len(d)) % 3 == 0, "COVID", d["label"])), "COVID"),
        (lambda d: d.assign(probability=d["probability"] * 3), r"\[0, 1\]"),
    ],
)
def test_bad_predictions_raise_usage_error(tmp_path, change, message):
    with pytest.raises(UsageError, match=message):
        write_report(
            change(synthetic_predictions(40)),
            tmp_path,
            positive_class="PNEUMONIA",
            threshold=0.5,
            options=OPTIONS,
            pdf=False,
        )


def test_positive_class_is_required(tmp_path):
    with pytest.raises(UsageError, match="positive class"):
        write_report(synthetic_predictions(40), tmp_path, threshold=0.5, options=OPTIONS, pdf=False)


def test_positive_class_must_match_the_model(tmp_path):
    with pytest.raises(UsageError, match="differs from the model"):
        write_report(
            synthetic_predictions(40),
            tmp_path,
            positive_class="NORMAL",
            model_info=MODEL_INFO,
            options=OPTIONS,
            pdf=False,
        )


def test_one_class_cohort_reports_not_estimable(tmp_path):
    df = synthetic_predictions(40).assign(label="NORMAL")
    result = write_report(df, tmp_path, model_info=MODEL_INFO, options=OPTIONS)
    assert result.data["auc"]["delong"]["auc"] is None
    assert [o["name"] for o in result.data["operating_points"]] == ["model"]
    assert result.data["undefined_statistics"]
    assert "not estimable" in html_text(tmp_path / "report.html")

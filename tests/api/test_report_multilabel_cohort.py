"""`cxr-cad evaluate` and `cxr-cad report` with one multi-label bundle: the findings report
(per-finding DeLong AUC equal to sklearn's per-column AUC, sensitivity/specificity at each
finding's stored threshold, macro/micro, flags, co-occurrence, cluster bootstrap) and Grad-CAM
of the positive calls per finding, on a generated cohort scored by a tiny trained model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxr_cad import api
from cxr_cad.cli import main
from cxr_cad.config import load_config
from cxr_cad.explain.gradcam import GradcamSource, gradcam_maps, logodds_maps
from cxr_cad.model import load_bundle
from cxr_cad.training.trainer import train_model
from tests.factories.config import TINY_TRAIN
from tests.factories.synth import write_multilabel_cohort

FINDINGS = ["Opacity", "Other"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """(bundle path, manifest path, manifest table): 48 PNGs of 24 patients, two findings
    (Opacity = the synthetic opacity; Other random with some unknown), a 1-epoch model."""
    root = tmp_path_factory.mktemp("ml")
    df = write_multilabel_cohort(root / "images")
    cfg = load_config(
        None,
        {
            **TINY_TRAIN,
            "threshold.method": "youden",
            "data.task": "multilabel",
            "data.classes": FINDINGS,
            "data.min_positives": 2,
            "data.val_fraction": 0.3,
            "data.cache_dir": str(root / "cache"),
        },
    )
    torch.manual_seed(0)
    result = train_model(df, root / "run", cfg)
    manifest = root / "cohort.csv"
    df.to_csv(manifest, index=False)
    return result.bundle_path, manifest, df


@pytest.fixture(scope="module")
def scored(cohort, tmp_path_factory):
    bundle, manifest, _ = cohort
    out = tmp_path_factory.mktemp("scores")
    pred, _ = api.predict(bundle, [manifest], out, device="cpu", workers=0)
    return out / "predictions.csv", pred


def _known(df: pd.DataFrame, f: str) -> tuple[np.ndarray, np.ndarray]:
    col = df[f"finding_{f}"].astype(str)
    m = col.isin(["0", "1"]).to_numpy()
    return col[m].astype(int).to_numpy(), m


def test_report_of_multilabel_predictions_matches_sklearn_and_stored_thresholds(cohort, scored, tmp_path, capsys):
    bundle_path, manifest, df = cohort
    pred_csv, pred = scored
    assert {"probability_Opacity", "decision_Other"} <= set(pred.columns) and "probability" not in pred.columns
    out = tmp_path / "report"
    rc = main(
        ["report", str(pred_csv), "--model", str(bundle_path), "--manifest", str(manifest), "--out", str(out)]
        + ["--gradcam-per-group", "1", "--bootstrap", "200", "--no-pdf"]
    )
    assert rc == 0 and "multi-label, macro AUC" in capsys.readouterr().out
    d = json.loads((out / "metrics.json").read_text())
    assert d["task"] == "multilabel" and [r["finding"] for r in d["per_finding"]] == FINDINGS
    thresholds = load_bundle(bundle_path).meta["extra"]["multilabel"]["thresholds"]
    merged = pred.merge(df[["path", "finding_Opacity", "finding_Other"]], on="path")
    for row in d["per_finding"]:
        f = row["finding"]
        y, m = _known(merged, f)
        p = merged[f"probability_{f}"].astype(float).to_numpy()[m]
        assert row["n"] == m.sum() and row["n_unknown"] == (~m).sum()
        assert row["threshold"] == pytest.approx(thresholds[f]["value"])
        if not row["small_sample"]:
            assert row["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
            called = p >= row["threshold"]
            assert row["sensitivity"]["k"] == int((called & (y == 1)).sum())
            assert row["cluster_bootstrap"] is not None  # patient_id joined from the manifest
    assert not d["per_finding"][0]["small_sample"]  # Opacity: its AUC and sensitivity were checked
    assert d["cooccurrence"]["findings"] == FINDINGS and "macro" in d and "micro" in d
    # Grad-CAM: only positive calls at each finding's stored threshold, at most 1 per finding
    cases = d["gradcam"]["cases"]
    assert cases and len(cases) <= len(FINDINGS)
    by_path = merged.set_index(np.arange(len(merged)))
    for c in cases:
        p = float(by_path.loc[c["image_index"], f"probability_{c['finding']}"])
        assert p >= thresholds[c["finding"]]["value"] and (out / c["file"]).exists()
    html = (out / "report.html").read_text()
    assert "Findings overview" in html and "data:image/png;base64" in html and "Opacity" in html


def test_report_without_model_reads_thresholds_back_from_decisions(cohort, scored, tmp_path):
    bundle_path, manifest, _ = cohort
    pred_csv, _ = scored
    with_model = api.report_cohort(
        pred_csv, tmp_path / "a", api.ReportOptions(pdf=False, n_bootstrap=100), bundle=bundle_path, manifest=manifest
    )
    without = api.report_cohort(
        pred_csv, tmp_path / "b", api.ReportOptions(pdf=False, n_bootstrap=100), manifest=manifest
    )
    for a, b in zip(with_model.data["per_finding"], without.data["per_finding"]):
        assert a["auc"] == b["auc"] or (a["small_sample"] and b["small_sample"])
        assert a["positive_calls"] == b["positive_calls"]
        if a["sensitivity"] is not None:
            assert (a["sensitivity"]["k"], a["specificity"]["k"]) == (b["sensitivity"]["k"], b["specificity"]["k"])
    assert "decision_<F>" in without.data["threshold_source"] and not without.data["gradcam"]["cases"]


def test_report_of_a_multilabel_table_refuses_one_threshold(scored, tmp_path):
    pred_csv, _ = scored
    assert main(["report", str(pred_csv), "--threshold", "0.5", "--out", str(tmp_path / "r")]) == 2


def test_evaluate_multilabel_bundle_writes_the_findings_report(cohort, scored, tmp_path, capsys):
    bundle_path, manifest, _ = cohort
    out = tmp_path / "eval"
    rc = main(
        ["evaluate", "--model", str(bundle_path), "--manifest", str(manifest), "--out", str(out)]
        + ["--workers", "0", "--device", "cpu", "--gradcam-per-group", "1", "--bootstrap", "100", "--no-pdf"]
    )
    assert rc == 0, capsys.readouterr()
    line = capsys.readouterr().out
    assert "48 images evaluated, 0 not evaluated; macro AUC" in line
    d = json.loads((out / "metrics.json").read_text())
    ref = api.report_cohort(
        scored[0],
        tmp_path / "ref",
        api.ReportOptions(pdf=False, n_bootstrap=100),
        bundle=bundle_path,
        manifest=manifest,
    ).data
    assert [r["auc"] for r in d["per_finding"]] == pytest.approx([r["auc"] for r in ref["per_finding"]], nan_ok=True)
    assert d["cohort"]["manifest_hash"] and d["gradcam"]["cases"]


def test_gradcam_target_index_is_the_findings_own_logit(cohort):
    bundle_path, _, df = cohort
    bundle = load_bundle(bundle_path)
    source = GradcamSource.from_bundle(bundle)
    path = str(df["path"].iloc[0])
    (cam0,) = logodds_maps(source, [path], target_index=0)
    (cam1,) = logodds_maps(source, [path], target_index=1)
    # the logit of each sigmoid output is that finding's log-odds
    from monai.transforms import Compose

    from cxr_cad.transforms import build_load_transforms, build_post_transforms

    spec = bundle.transform_spec
    x = Compose(build_post_transforms(spec))({"image": Compose(build_load_transforms(spec))({"image": path})["image"]})
    with torch.no_grad():
        z = bundle.model.eval()(torch.as_tensor(x["image"])[None].float())[0]
    assert cam0.logodds == pytest.approx(float(z[0]), abs=1e-4)
    assert cam1.logodds == pytest.approx(float(z[1]), abs=1e-4)
    (m0,), (m1,) = gradcam_maps(source, [path], target_index=0), gradcam_maps(source, [path], target_index=1)
    assert m0[1].shape == m1[1].shape


def test_predict_summary_counts_positive_calls_per_finding(cohort, tmp_path, capsys):
    bundle_path, manifest, _ = cohort
    out = tmp_path / "p"
    rc = main(["predict", "--model", str(bundle_path), str(manifest), "--out", str(out), "--workers", "0"])
    assert rc == 0
    text = capsys.readouterr().out
    pred = pd.read_csv(out / "predictions.csv")
    counts = ", ".join(f"{f} {int((pred[f'decision_{f}'] == 'present').sum())}" for f in FINDINGS)
    assert f"(present: {counts})" in text and "positive at threshold" not in text

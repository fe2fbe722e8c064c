"""``--track mlflow:URI`` on train, crossval and evaluate, read back with the MLflow client;
no identifier reaches the store unless ``--include-identifiers`` (issue 23, defect 9)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")

from cxr_cad.cli import main  # noqa: E402
from tests.factories.synth import write_png_cohort  # noqa: E402

TRAIN = [
    "--epochs",
    "2",
    "--image-size",
    "64",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--init",
    "none",
    "--device",
    "cpu",
    "--patience",
    "0",
]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    root = tmp_path_factory.mktemp("track")
    df = write_png_cohort(root / "cohort", n_patients=12, images_per_patient=2, size=64, seed=3)
    df["accession_number"] = [f"ACC{i:07d}" for i in range(len(df))]  # identifiers a DICOM cohort carries
    df.to_csv(root / "cohort" / "manifest.csv", index=False)
    uri = root / "mlflow.db"
    manifest = str(root / "cohort" / "manifest.csv")
    assert (
        main(["-q", "train", "--manifest", manifest, "--out", str(root / "run"), *TRAIN, "--track", f"mlflow:{uri}"])
        == 0
    )
    card_before = (root / "run" / "model_card.md").read_text()
    assert (
        main(
            [
                "-q",
                "evaluate",
                "--model",
                str(root / "run" / "model.pt"),
                "--manifest",
                manifest,
                "--out",
                str(root / "eval"),
                "--workers",
                "0",
                "--no-pdf",
                "--gradcam-per-group",
                "0",
                "--track",
                f"mlflow:{uri}",
            ]
        )
        == 0
    )
    assert (root / "run" / "model_card.md").read_text() == card_before  # evaluate appends nothing to the card
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{uri}")
    exp = client.get_experiment_by_name("cxr_cad")
    runs = {r.data.tags["cxr_cad.command"]: r for r in client.search_runs([exp.experiment_id])}
    return root, client, runs


def _identifiers(cohort: Path) -> set[str]:
    """Every identifier of the synthetic cohort as text: patient ids, relative and absolute paths,
    SOP Instance UIDs, accession numbers."""
    df = pd.read_csv(cohort / "manifest.csv", dtype=str)
    values = {v for c in ("patient_id", "sop_instance_uid", "accession_number", "path") if c in df for v in df[c]}
    return values | {str((cohort / p).resolve()) for p in df["path"]} | {Path(p).name for p in df["path"]}


def _downloaded(client, run_id: str, dst: Path) -> dict[str, str]:
    """{artifact path: its text (bytes as latin-1)} of every artifact of the run, as stored."""
    local = Path(client.download_artifacts(run_id, "", str(dst)))
    return {str(f.relative_to(local)): f.read_bytes().decode("latin-1") for f in local.rglob("*") if f.is_file()}


def _leaks(files: dict[str, str], identifiers: set[str]) -> list[str]:
    return sorted(f"{name}: {v}" for name, text in files.items() for v in identifiers if v in text)


def test_train_run_has_config_epochs_artifacts_and_tags(tracked):
    from cxr_cad.model import load_bundle

    root, client, runs = tracked
    run = runs["train"]
    assert run.info.status == "FINISHED"
    import yaml

    from cxr_cad.tracking import flatten

    p = run.data.params
    assert p["epochs"] == "2" and p["model.image_size"] == "64"
    resolved = flatten(yaml.safe_load((root / "run" / "config.yaml").read_text()))
    assert {k: p.get(k) for k in resolved} == resolved  # the whole resolved config, as written
    log = pd.read_csv(root / "run" / "train_log.csv")
    hist = client.get_metric_history(run.info.run_id, "val_auc")
    assert [m.step for m in hist] == [1, 2]
    assert [m.value for m in hist] == pytest.approx(log["val_auc"].tolist())
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")] == pytest.approx(
        log["train_loss"].tolist()
    )
    result = json.loads((root / "run" / "result.json").read_text())
    assert run.data.metrics["threshold"] == pytest.approx(result["threshold"])
    bundle = load_bundle(root / "run" / "model.pt")
    assert run.data.tags["manifest_hash"] == bundle.manifest_hash
    assert run.data.tags["parent_bundle"] == "none"
    assert run.data.tags["versions.torch"] and run.data.tags["versions.cxr_cad"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "model_card.md", "val_predictions.csv", "train_log.csv"} <= names


def test_evaluate_run_has_auc_report_and_parent(tracked):
    root, client, runs = tracked
    run = runs["evaluate"]
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    primary = metrics["auc"][metrics["auc"]["primary"]]
    assert run.data.metrics["auc"] == pytest.approx(primary["auc"])
    from cxr_cad.core.provenance import sha256_file as file_sha256

    assert run.data.tags["parent_bundle"] == file_sha256(root / "run" / "model.pt")
    names = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert "report/report.html" in names and "report/predictions.csv" in names


def test_crossval_run_logs_every_fold(tmp_path):
    write_png_cohort(tmp_path / "cohort", n_patients=12, images_per_patient=2, size=64, seed=4)
    uri = tmp_path / "mlflow.db"
    assert (
        main(
            [
                "-q",
                "crossval",
                "--manifest",
                str(tmp_path / "cohort" / "manifest.csv"),
                "--out",
                str(tmp_path / "cv"),
                "--folds",
                "2",
                "--bootstrap",
                "0",
                "--no-report",
                *TRAIN[:-2],
                "--track",
                f"mlflow:{uri}",
            ]
        )
        == 0
    )
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{uri}")
    run = client.search_runs([client.get_experiment_by_name("cxr_cad").experiment_id])[0]
    assert run.data.tags["cxr_cad.command"] == "crossval" and run.data.params["folds"] == "2"
    cv = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    for f in cv["per_fold"]:
        assert len(client.get_metric_history(run.info.run_id, f"fold{f['fold']}.val_auc")) == 2
    assert "oof_predictions.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}
    files = _downloaded(client, run.info.run_id, tmp_path / "download")
    assert {"folds.csv", "oof_predictions.csv"} <= set(files)
    assert _leaks(files, _identifiers(tmp_path / "cohort")) == []  # folds.csv maps patients to folds locally
    assert "patient_id" in pd.read_csv(tmp_path / "cv" / "folds.csv").columns


def test_bad_track_value_is_a_usage_error(tmp_path):
    assert main(["train", "--manifest", "m.csv", "--out", str(tmp_path), "--track", "wandb"]) == 2


def test_train_and_evaluate_upload_no_identifiers(tracked, tmp_path):
    root, client, runs = tracked
    ids = _identifiers(root / "cohort")
    assert "patient_id" in pd.read_csv(root / "run" / "val_predictions.csv").columns  # kept on this machine
    for command in ("train", "evaluate"):
        run = runs[command]
        files = _downloaded(client, run.info.run_id, tmp_path / command)
        assert _leaks(files, ids) == [], command
        assert run.data.tags["cxr_cad.identifiers"] == "removed"
    uploaded = pd.read_csv(tmp_path / "train" / "val_predictions.csv")
    assert list(uploaded.columns) == ["label", "y_true", "probability"]
    local = pd.read_csv(root / "run" / "val_predictions.csv")
    assert uploaded["probability"].tolist() == pytest.approx(local["probability"].tolist())


def test_include_identifiers_uploads_them(tracked, tmp_path):
    root, _, _ = tracked
    uri = tmp_path / "mlflow.db"
    args = [
        "-q",
        "evaluate",
        "--model",
        str(root / "run" / "model.pt"),
        "--manifest",
        str(root / "cohort" / "manifest.csv"),
    ]
    args += ["--out", str(tmp_path / "eval"), "--workers", "0", "--no-pdf", "--gradcam-per-group", "0"]
    assert main([*args, "--track", f"mlflow:{uri}", "--include-identifiers"]) == 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{uri}")
    run = client.search_runs([client.get_experiment_by_name("cxr_cad").experiment_id])[0]
    assert run.data.tags["cxr_cad.identifiers"] == "included"
    files = _downloaded(client, run.info.run_id, tmp_path / "download")
    table = pd.read_csv(tmp_path / "download" / "report" / "predictions.csv")
    assert (
        table["sop_instance_uid"].tolist()
        == pd.read_csv(tmp_path / "eval" / "predictions.csv")["sop_instance_uid"].tolist()
    )
    assert _leaks(files, _identifiers(root / "cohort"))

"""Where ``--track`` logs (issue 23, defect 10): a local SQLite store by default that MLflow's
own client reads with no environment variable; URIs MLflow cannot open are usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_cad.cli import main
from cxr_cad.errors import ConfigError
from cxr_cad.tracking import DEFAULT_URI, parse_track, resolve_uri
from cxr_cad.tracking.store import redact
from tests.factories.synth import write_png_cohort

TINY = ["--epochs", "1", "--image-size", "64", "--batch-size", "8", "--workers", "0", "--init", "none"]
TINY += ["--device", "cpu", "--patience", "0"]


@pytest.fixture
def no_mlflow_env(monkeypatch):
    for k in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(k)


def test_default_is_sqlite_in_the_current_folder(tmp_path, monkeypatch, no_mlflow_env):
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_URI == "sqlite:///mlflow.db"
    assert parse_track("mlflow") == f"sqlite:///{tmp_path / 'mlflow.db'}"  # absolute: four slashes
    assert parse_track(None) is None


def test_mlflow_tracking_uri_env_is_used_and_checked(tmp_path, monkeypatch, no_mlflow_env):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert parse_track("mlflow") == "http://mlflow.example:5000"
    assert parse_track(f"mlflow:{tmp_path / 'x.db'}") == f"sqlite:///{tmp_path / 'x.db'}"  # the flag wins
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://host/x")
    with pytest.raises(ConfigError, match=r"\$MLFLOW_TRACKING_URI=ftp://host/x: unknown tracking URI"):
        parse_track("mlflow")


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("runs/mlflow.db", "sqlite:///{cwd}/runs/mlflow.db"),
        ("sqlite:///rel/m.db", "sqlite:///{cwd}/rel/m.db"),
        ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("https://user:pw@mlflow.example", "https://user:pw@mlflow.example"),
        ("databricks", "databricks"),
        ("postgresql+psycopg2://u@db/mlflow", "postgresql+psycopg2://u@db/mlflow"),
    ],
)
def test_supported_uris(uri, expected, tmp_path, monkeypatch, no_mlflow_env):
    monkeypatch.chdir(tmp_path)
    assert resolve_uri(uri) == expected.format(cwd=tmp_path)


@pytest.mark.parametrize(
    "uri, says",
    [
        ("./mlruns", "MLflow's file store, which MLflow 3 no longer opens"),
        ("file:///tmp/mlruns", "file store is in maintenance mode"),
        ("ftp://host/x", "unknown tracking URI"),
        ("wandb://x", "unknown tracking URI"),
        ("http://", "needs a host"),
        ("sqlite://", "a SQLite store is"),
    ],
)
def test_unsupported_uris_are_config_errors(uri, says, no_mlflow_env):
    with pytest.raises(ConfigError, match=says) as exc:
        resolve_uri(uri)
    assert "\n" not in str(exc.value)


def test_file_store_only_when_the_user_opted_in(tmp_path, monkeypatch, no_mlflow_env):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert resolve_uri(str(tmp_path / "mlruns")) == (tmp_path / "mlruns").as_uri()


def test_password_is_masked():
    assert redact("https://user:s3cret@host:5000/x") == "https://user:***@host:5000/x"
    with pytest.raises(ConfigError) as exc:
        resolve_uri("gopher://user:s3cret@host")
    assert "s3cret" not in str(exc.value)


@pytest.mark.parametrize("uri", ["ftp://host/x", "/tmp/some/mlruns", "http://"])
def test_bad_uri_is_exit_2_before_training(uri, tmp_path, capsys, no_mlflow_env):
    out = tmp_path / "run"
    rc = main(["train", "--manifest", str(tmp_path / "m.csv"), "--out", str(out), "--track", f"mlflow:{uri}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--track" in err[0], err
    assert not out.exists()


def test_default_store_is_read_by_a_fresh_mlflow_client_without_env(tmp_path, monkeypatch, no_mlflow_env):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    write_png_cohort(tmp_path / "cohort", n_patients=8, images_per_patient=2, size=64, seed=5)
    monkeypatch.chdir(tmp_path)
    manifest = str(tmp_path / "cohort" / "manifest.csv")
    assert (
        main(["-q", "train", "--manifest", manifest, "--out", str(tmp_path / "run"), *TINY, "--track", "mlflow"]) == 0
    )
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # never set in-process any more
    assert (tmp_path / "mlflow.db").is_file() and not (tmp_path / "mlruns" / "0").exists()
    reader = """
import json, sys
from mlflow import MlflowClient
c = MlflowClient(tracking_uri=sys.argv[1])
exp = c.get_experiment_by_name("cxr_cad")
run = c.search_runs([exp.experiment_id])[0]
print(json.dumps({"params": run.data.params, "metrics": run.data.metrics, "status": run.info.status,
    "artifacts": sorted(a.path for a in c.list_artifacts(run.info.run_id))}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    got = subprocess.run(
        [sys.executable, "-c", reader, f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=Path.home() if Path.home().is_dir() else "/",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    run = json.loads(got.stdout.strip().splitlines()[-1])
    assert run["status"] == "FINISHED" and run["params"]["epochs"] == "1"
    assert {"val_auc", "train_loss", "threshold"} <= set(run["metrics"])
    assert {"model.pt", "model_card.md", "val_predictions.csv"} <= set(run["artifacts"])
    assert (tmp_path / "mlruns").is_dir()  # the artifacts sit beside the database

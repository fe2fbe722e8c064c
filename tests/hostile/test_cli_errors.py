"""Issue 20: errors a person can act on, fast. One test per measured case; each failed on the
code before the issue (the old behaviour is in each docstring)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_cad.cli import main
from tests.hostile import inputs as H
from tests.hostile.runner import run_cli

ROOT = Path(__file__).resolve().parents[2]


def _errors(capsys) -> list[str]:
    """stderr lines that are not log records."""
    return [
        ln
        for ln in capsys.readouterr().err.splitlines()
        if ln.strip() and not ln.startswith(("INFO", "WARNING", "DEBUG"))
    ]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from tests.factories.synth import write_png_cohort

    root = tmp_path_factory.mktemp("cohort")
    write_png_cohort(root, n_patients=4, images_per_patient=1, size=32)
    return root


def test_missing_manifest_is_reported_before_torch_and_the_bundle_load(tmp_path, bundle):
    """Was: reported after 14.8 s and 614 MiB (torch, MONAI and the bundle loaded first)."""
    code = (
        "import sys\nfrom cxr_cad.cli import main\n"
        f"rc = main(['evaluate', '--manifest', {str(tmp_path / 'no.csv')!r}, '--model', {str(bundle)!r}, "
        f"'--out', {str(tmp_path / 'r')!r}])\n"
        "loaded = [m for m in ('torch', 'monai', 'pandas', 'mlflow') if m in sys.modules]\n"
        "print(rc, loaded)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "2 []", p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--manifest" in lines[0] and "no.csv not found" in lines[0], p.stderr
    assert not (tmp_path / "r").exists()


def test_a_failing_command_stays_small(tmp_path, bundle):
    """Was: 614 MiB peak for a missing manifest; the checks run with the light modules only."""
    o = run_cli(["predict", tmp_path / "none", "--model", bundle, "--out", tmp_path / "o"], timeout=120)
    assert o.rc == 2, o.stderr
    assert o.rss_mb < 200, f"{o.rss_mb:.0f} MiB for a missing source"
    assert len(o.stderr_lines) == 1 and "SOURCE not found" in o.last_line


def test_misspelt_flag_names_the_closest_one_in_one_line(tmp_path, bundle, capsys):
    """Was: "the following arguments are required: --model" after 16 lines of usage."""
    rc = main(["predict", str(tmp_path), "--modle", str(bundle), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = _errors(capsys)
    assert err == ["cxr-cad predict: error: unknown option --modle; did you mean --model? (see cxr-cad predict --help)"]


def test_abbreviated_flags_are_not_guessed(tmp_path, cohort, capsys):
    """Was: --epoch 3 silently read as --epochs 3 (argparse abbreviations)."""
    rc = main(["train", "--manifest", str(cohort / "manifest.csv"), "--out", str(tmp_path / "o"), "--epoch", "3"])
    assert rc == 2
    assert "did you mean --epochs?" in _errors(capsys)[0]
    assert not (tmp_path / "o").exists()


def test_wrong_choice_and_command_name_the_closest(capsys):
    """Was: argparse's usage block and the list of choices, no suggestion."""
    assert main(["predcit", "x"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "did you mean predict?" in err[0]
    assert main(["export", "--model", "m.pt", "--format", "onx", "--out", "o"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "did you mean onnx?" in err[0]


def test_unknown_set_key_of_a_workflow_names_the_closest(tmp_path, cohort, capsys, monkeypatch):
    """Was: "train.epoch: unknown key (check the spelling)" without the key meant."""
    monkeypatch.chdir(tmp_path)
    rc = main(
        [
            "run",
            "chandola2021_pneumonia",
            "--check",
            "--set",
            f"data.train={cohort}",
            "--set",
            "train.epoch=3",
            "--set",
            "train.image_size=64",
        ]
    )
    assert rc == 2
    text = "\n".join(_errors(capsys))
    assert "train.epoch: unknown key (check the spelling); did you mean train.epochs?" in text
    assert "did you mean model.image_size?" in text  # a model key given in the train section


def test_unknown_key_of_a_train_config_file_names_the_closest(tmp_path, cohort, capsys):
    """Was: "epoch: unknown key (check the spelling)" only."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epoch: 3\nmodel:\n  imagesize: 64\n")
    rc = main(["train", "--manifest", str(cohort / "manifest.csv"), "--out", str(tmp_path / "o"), "--config", str(cfg)])
    assert rc == 2
    text = "\n".join(_errors(capsys))
    assert "epoch: unknown key (check the spelling); did you mean epochs?" in text
    assert "model.imagesize: unknown key (check the spelling); did you mean model.image_size?" in text


def test_model_run_folder_uses_its_model_pt(tmp_path, cohort, bundle, capsys):
    """Was: "model bundle RUN_DIR is not a file", exit 1. Decision: a folder holding model.pt
    stands for it (logged); a folder without one is exit 2 naming the bundles inside."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(bundle, run_dir / "model.pt")
    out = tmp_path / "pred"
    rc = main(["predict", str(cohort / "NORMAL"), "--model", str(run_dir), "--out", str(out), "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"using its bundle {run_dir / 'model.pt'}" in err
    assert (out / "predictions.csv").read_text().count("\n") >= 2

    cv_dir = tmp_path / "cv"
    (cv_dir / "final").mkdir(parents=True)
    shutil.copy(bundle, cv_dir / "final" / "model.pt")
    rc = main(["predict", str(cohort), "--model", str(cv_dir), "--out", str(tmp_path / "p2")])
    assert rc == 2
    err = _errors(capsys)
    assert len(err) == 1 and f"give one of its bundles: {cv_dir / 'final' / 'model.pt'}" in err[0]


def test_evaluate_folder_with_labels_prints_the_two_commands(tmp_path, cohort, bundle, capsys):
    """Was: refused ("--labels and --query are for a dicomweb: cohort") without a way forward."""
    labels = cohort / "manifest.csv"
    rc = main(["evaluate", str(cohort), "--labels", str(labels), "--model", str(bundle), "--out", str(tmp_path / "r")])
    assert rc == 2
    text = "\n".join(_errors(capsys))
    assert f"cxr-cad ingest {cohort} --labels {labels} --out {cohort.name}_manifest" in text
    assert f"cxr-cad evaluate --manifest {cohort.name}_manifest/manifest.csv --model {bundle}" in text


def test_relative_workflow_from_another_folder_says_where_the_shipped_ones_are(tmp_path, capsys, monkeypatch):
    """Was: "cannot read the workflow file: No such file or directory"."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", "workflows/batch_evaluate.yaml", "--check"]) == 2
    err = _errors(capsys)
    assert len(err) == 1
    assert "cxr-cad run batch_evaluate" in err[0]
    assert str(ROOT / "workflows" / "chandola2021_pneumonia.yaml") in err[0]
    assert str(tmp_path) in err[0]  # where relative paths start


def test_run_finds_a_shipped_workflow_by_name(tmp_path, cohort, bundle, capsys, monkeypatch):
    """Was: `cxr-cad run chandola2021_pneumonia` was a missing file; now any folder runs it by name."""
    monkeypatch.chdir(tmp_path)
    rc = main(["run", "batch_evaluate", "--check", "--set", f"data.test={cohort}", "--set", f"model.bundle={bundle}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"{ROOT / 'workflows' / 'batch_evaluate.yaml'}: valid; would run ingest, evaluate, report" in out
    assert not (tmp_path / "runs").exists()  # --check writes nothing


def test_run_help_lists_the_shipped_workflows(capsys):
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for name in ("chandola2021_pneumonia", "batch_evaluate", "retrain_new_cohort"):
        assert name in out


@pytest.mark.parametrize("kind", ["file", "proc"])
@pytest.mark.parametrize("command", ["ingest", "predict", "train", "listen"])
def test_unwritable_out_is_a_usage_error(command, kind, tmp_path, cohort, bundle, capsys):
    """Was: exit 1 (docs/ingest.md said 2, the README 1). The rule: 2, what the user gave is wrong."""
    if kind == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    out = str(H.write_pngs(tmp_path / "x", n=1)[0]) if kind == "file" else "/proc/cxr-cad-test/out"
    argv = {
        "ingest": ["ingest", str(cohort), "--out", out],
        "predict": ["predict", str(cohort), "--model", str(bundle), "--out", out],
        "train": ["train", "--manifest", str(cohort / "manifest.csv"), "--out", out],
        "listen": ["listen", "--model", str(bundle), "--out", out, "--port", "0"],
    }[command]
    assert main(argv) == 2
    err = _errors(capsys)
    assert len(err) == 1 and f"--out {out}" in err[0], err
    assert ("is a file, not a folder" if kind == "file" else "cannot be created") in err[0]


def test_every_problem_is_listed_at_once(tmp_path, capsys):
    rc = main(["predict", str(tmp_path / "a"), "--model", str(tmp_path / "m.pt"), "--out", "/proc/cxr-cad-test/o"])
    assert rc == 2
    text = "\n".join(_errors(capsys))
    assert "3 problems" in text and "SOURCE not found" in text and "--model" in text and "--out" in text


def test_a_folder_given_for_a_file_says_so(tmp_path, cohort, capsys):
    rc = main(["train", "--manifest", str(cohort), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = _errors(capsys)
    assert len(err) == 1 and "is a folder; give the manifest .csv file (it holds manifest.csv)" in err[0]


def test_the_out_probe_leaves_nothing_behind(tmp_path, cohort):
    from cxr_cad.cli.options import check_out_dir

    assert check_out_dir(str(tmp_path / "new" / "deeper")) is None
    assert check_out_dir(str(tmp_path)) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert "is a file" in (check_out_dir(str(cohort / "manifest.csv")) or "")
    assert "cannot be created" in (check_out_dir(str(cohort / "manifest.csv" / "sub")) or "")

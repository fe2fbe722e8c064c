"""Workflow files: shipped files validate, invalid ones are rejected with every problem listed."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
import yaml

from cxr_cad.cli import main
from cxr_cad.cli.schema import main as schema_main
from cxr_cad.errors import ConfigError
from cxr_cad.workflow.json_schema import SCHEMA_FILE, schema_text, workflow_json_schema
from cxr_cad.workflow.overrides import apply_sets, expand_env, parse_set
from cxr_cad.workflow.pipeline import planned_steps
from cxr_cad.workflow.schema import load_workflow, train_config_dict, validate_workflow

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"


@pytest.fixture
def folders(tmp_path):
    train, test = tmp_path / "train", tmp_path / "test"
    (train / "NORMAL").mkdir(parents=True)
    (test / "NORMAL").mkdir(parents=True)
    bundle = tmp_path / "model.pt"
    bundle.write_bytes(b"not read by validation")
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\nP1,NORMAL\n")
    return train, test, bundle, labels


def test_shipped_workflows_validate(folders):
    train, test, bundle, labels = folders
    wf = load_workflow(
        WORKFLOWS / "chandola2021_pneumonia.yaml",
        [f"data.train={train}", f"data.test={test}", "model.init=none"],
        environ={},
    )
    assert wf["model"]["image_size"] == 224 and wf["crossval"]["folds"] == 5
    assert wf["train"]["optim"]["name"] == "sgd"
    assert planned_steps(wf) == (["ingest", "crossval", "train", "evaluate", "report"], [])
    wf = load_workflow(WORKFLOWS / "batch_evaluate.yaml", [f"data.test={test}", f"model.bundle={bundle}"], environ={})
    assert wf["steps"] == ["ingest", "evaluate", "report"] and wf["data"]["test_labels"] == "folders"
    wf = load_workflow(
        WORKFLOWS / "retrain_new_cohort.yaml",
        [f"data.train={train}", f"data.train_labels={labels}"],
        environ={"CXR_CAD_MODEL": str(bundle)},
    )
    assert wf["model"]["bundle"] == str(bundle) and wf["data"]["train_labels"] == str(labels)


def test_retrain_takes_the_parent_bundles_image_size(folders, tmp_path):
    """Fine-tuning a 128-px parent: the retrain workflow trains at 128 px (it had 224 written in,
    which the parent guard refuses); an explicit model.image_size still wins."""
    from tests.workflow.parent import write_parent_bundle

    train, _, _, labels = folders
    parent = write_parent_bundle(tmp_path / "parent.pt", image_size=128)
    sets = [f"data.train={train}", f"data.train_labels={labels}", f"model.bundle={parent}"]
    wf = load_workflow(WORKFLOWS / "retrain_new_cohort.yaml", sets, environ={})
    assert wf["model"]["image_size"] == 128
    model = train_config_dict(wf)["model"]
    assert model["init"] == str(parent) and model["image_size"] == 128
    wf = load_workflow(WORKFLOWS / "retrain_new_cohort.yaml", [*sets, "model.image_size=64"], environ={})
    assert wf["model"]["image_size"] == 64  # given: kept (the train step's parent guard names the mismatch)
    # a bundle path as model.init is a parent too; from ImageNet the default stays
    wf = load_workflow(WORKFLOWS / "retrain_new_cohort.yaml", [*sets, f"model.init={parent}"], environ={})
    assert wf["model"]["image_size"] == 128
    wf = load_workflow(WORKFLOWS / "retrain_new_cohort.yaml", [*sets, "model.init=imagenet"], environ={})
    assert wf["model"]["image_size"] == 224


def test_chandola_without_test_cohort_says_cv_only(folders):
    train = folders[0]
    wf = load_workflow(WORKFLOWS / "chandola2021_pneumonia.yaml", [f"data.train={train}"], environ={})
    steps, notes = planned_steps(wf)
    assert "evaluate" not in steps and "crossval" in steps
    assert any("no test cohort" in n for n in notes)


def test_env_paths(folders):
    train = folders[0]
    wf = load_workflow(WORKFLOWS / "chandola2021_pneumonia.yaml", [], environ={"CXR_CAD_TRAIN": str(train)})
    assert wf["data"]["train"] == str(train) and wf["data"]["test"] is None


def test_every_problem_listed(tmp_path):
    doc = {
        "stepz": [],
        "steps": ["ingest", "train", "fly"],
        "data": {"train": str(tmp_path / "missing"), "classes": "NORMAL", "colour": 1},
        "model": {"image_size": "big", "init": str(tmp_path / "w.pth")},
        "train": {"epochs": 0, "optim": {"lr": "fast"}, "bogus": 1},
        "report": {"pdf": "yes"},
    }
    with pytest.raises(ConfigError) as exc:
        validate_workflow(doc, source="wf.yaml")
    text = "\n".join(exc.value.problems)
    for needle in (
        "stepz: unknown key",
        "data.colour: unknown key",
        "data.train:",
        "does not exist",
        "model.image_size: Input should be a valid integer",
        "model.init: weights file",
        "report.pdf: Input should be a valid boolean (got 'yes')",
        "steps[2]: Input should be 'ingest'",
        "train.epochs: Input should be greater than or equal to 1 (got 0)",
        "train.optim.lr: Input should be a valid number",
        "train.bogus: unknown key",
        "data.classes: Tuple should have at least 2 items",
    ):
        assert needle in text, (needle, text)
    assert str(exc.value).startswith("wf.yaml: ")


def test_train_data_classes_must_live_in_data(folders):
    with pytest.raises(ConfigError, match="top-level data section"):
        validate_workflow(
            {
                "steps": ["ingest", "train"],
                "data": {"train": str(folders[0])},
                "train": {"data": {"classes": ["A", "B"]}},
            }
        )


def test_positive_class_checked(folders):
    with pytest.raises(ConfigError, match="positive_class"):
        validate_workflow({"steps": ["ingest", "train"], "data": {"train": str(folders[0]), "positive_class": "X"}})


def test_parse_set_yaml_types():
    assert parse_set(
        [
            "train.epochs=3",
            "data.train=/x",
            "report.pdf=false",
            "data.classes=[A, B]",
            "data.test=null",
            "train.optim.lr=1e-3",
        ]
    ) == [
        ("train.epochs", 3),
        ("data.train", "/x"),
        ("report.pdf", False),
        ("data.classes", ["A", "B"]),
        ("data.test", None),
        ("train.optim.lr", 1e-3),
    ]
    with pytest.raises(ConfigError) as exc:
        parse_set(["novalue", "=3", "a..b=1"])
    assert len(exc.value.problems) == 3


def test_apply_sets_nested_copy():
    doc = {"train": {"optim": {"lr": 1}}}
    out = apply_sets(doc, [("train.optim.lr", 2), ("train.schedule.name", "step")])
    assert out == {"train": {"optim": {"lr": 2}, "schedule": {"name": "step"}}} and doc["train"]["optim"]["lr"] == 1


def test_expand_env():
    env = {"A": "/a"}
    assert expand_env({"x": "${A}/b", "y": "${B}", "z": "${B:-d}", "w": ["${A}"]}, env) == {
        "x": "/a/b",
        "y": None,
        "z": "d",
        "w": ["/a"],
    }


def test_cli_invalid_workflow_exit_2_and_nothing_runs(tmp_path, capsys):
    wf = tmp_path / "bad.yaml"
    wf.write_text("steps: [ingest, train]\ndata: {train: /no/such/folder}\ntrain: {epochs: x}\nextra: 1\n")
    out = tmp_path / "run"
    assert main(["run", str(wf), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err and "extra" in err and "/no/such/folder" in err and "epochs" in err
    assert not out.exists()


def test_cli_check_and_bad_set(folders, tmp_path, capsys):
    train = folders[0]
    wf = WORKFLOWS / "chandola2021_pneumonia.yaml"
    assert main(["run", str(wf), "--set", f"data.train={train}", "--check", "--out", str(tmp_path / "r")]) == 0
    assert "valid; would run ingest, crossval, train, report" in capsys.readouterr().out
    assert main(["run", str(wf), "--set", "train.epochs", "--check"]) == 2
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert main(["run", str(tmp_path / "list.yaml")]) == 2


def test_model_section_is_the_train_model_config(folders):
    from cxr_cad.config import ModelConfig

    train = folders[0]
    base = {"steps": ["ingest", "train"], "data": {"train": str(train)}}
    wf = validate_workflow(base)
    assert {k: v for k, v in wf["model"].items() if k != "bundle"} == ModelConfig().to_dict()
    # options that are not set stay out of the step config (fingerprints of earlier runs hold)
    assert set(train_config_dict(wf)["model"]) == {
        "init",
        "image_size",
        "aspect",
        "in_channels",
        "freeze_backbone_epochs",
    }
    wf = validate_workflow({**base, "model": {"tta": "hflip", "intensity": "none"}})
    assert train_config_dict(wf)["model"]["tta"] == "hflip" and wf["model"]["intensity"] == "none"
    with pytest.raises(ConfigError, match=r"model.tta: Input should be 'none' or 'hflip'"):
        validate_workflow({**base, "model": {"tta": "vflip"}})
    with pytest.raises(ConfigError, match="model.arch: must be a registered network"):
        validate_workflow({**base, "model": {"arch": "vgg11"}})


def test_committed_json_schema_is_generated_from_the_models(tmp_path, capsys):
    text = SCHEMA_FILE.read_text(encoding="utf-8")
    made_with = json.loads(text)["$comment"].split("pydantic ")[1].split(")")[0]
    if made_with != pydantic.VERSION:  # e.g. the minimum-versions CI job
        pytest.skip(f"the schema file was generated with pydantic {made_with}, this is {pydantic.VERSION}")
    assert text == schema_text(), "run: python -m cxr_cad.cli.schema"
    assert json.loads(text)["properties"]["model"] == {"$ref": "#/$defs/WorkflowModel"}
    assert schema_main(["--check"]) == 0
    stale = tmp_path / "s.json"
    stale.write_text(text.replace('"workflow"', '"flow"', 1))
    assert schema_main([str(stale), "--check"]) == 1
    assert schema_main([str(stale)]) == 0 and stale.read_text(encoding="utf-8") == text
    assert "out of date" in capsys.readouterr().out


def test_shipped_workflows_follow_the_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = workflow_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted(WORKFLOWS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert list(validator.iter_errors(doc)) == [], path.name
    bad = {"model": {"tta": "vflip"}, "train": {"model": {}, "optim": {"lr": -1}}, "colour": 1}
    where = sorted(".".join(map(str, e.absolute_path)) for e in validator.iter_errors(bad))
    assert where == ["", "model.tta", "train", "train.optim.lr"]


def test_unknown_keys_name_the_closest_valid_key(tmp_path):
    from cxr_cad.config import TrainConfig
    from cxr_cad.workflow.suggest import suggest_keys

    def unknown(loc: str) -> str:
        return f"{loc}: unknown key (check the spelling)"

    got = suggest_keys(
        [unknown("train.optim.lrr"), unknown("data.tset"), unknown("model.epochs"), unknown("zzz"), "steps: bad"]
    )
    assert got[0].endswith("did you mean train.optim.lr?")
    assert got[1].endswith("did you mean data.test?")
    assert got[2].endswith("epochs belongs in the train section: did you mean train.epochs?")
    assert got[3] == unknown("zzz")  # nothing close: no guess
    assert got[4] == "steps: bad"  # other problems untouched
    assert suggest_keys([unknown("runtime.devcie")], TrainConfig) == [
        unknown("runtime.devcie") + "; did you mean runtime.device?"
    ]
    with pytest.raises(
        ConfigError, match=r"crossval.fold: unknown key \(check the spelling\); did you mean crossval.folds"
    ):
        validate_workflow({"crossval": {"fold": 3}, "data": {"train": str(tmp_path)}}, base_dir=tmp_path)


def test_shipped_workflows_are_found_by_name(tmp_path, monkeypatch):
    from cxr_cad.errors import UsageError
    from cxr_cad.workflow.shipped import find_workflow, shipped_workflows

    shipped = shipped_workflows()
    assert set(shipped) >= {"chandola2021_pneumonia", "batch_evaluate", "retrain_new_cohort"}
    assert all(p.is_file() and p.suffix == ".yaml" for p in shipped.values())
    monkeypatch.chdir(tmp_path)
    assert find_workflow("batch_evaluate") == shipped["batch_evaluate"]
    assert find_workflow("batch_evaluate.yaml") == shipped["batch_evaluate"]
    own = tmp_path / "batch_evaluate.yaml"
    own.write_text("name: mine\n")
    assert find_workflow("batch_evaluate.yaml") == Path("batch_evaluate.yaml")  # a file here wins
    with pytest.raises(UsageError, match="did you mean the shipped workflow chandola2021_pneumonia"):
        find_workflow("chandola2021")
    (tmp_path / "adir").mkdir()
    with pytest.raises(UsageError, match="not a regular file"):
        find_workflow("adir")

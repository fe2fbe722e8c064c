"""cxr_cad.config: YAML loading, overrides, validation collecting every problem, round trips."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from cxr_cad.config import DataConfig, OptimConfig, TrainConfig, apply_overrides, config_diff, load_config
from cxr_cad.errors import ConfigError, UsageError


def test_defaults_are_the_study_defaults():
    cfg = load_config()
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 1e-3, 0.9)
    assert cfg.model.image_size == 224 and cfg.model.init == "imagenet"
    assert cfg.data.positive_class == "PNEUMONIA" and cfg.threshold.method == "sensitivity"
    assert cfg.threshold.target_sensitivity == 0.95  # the policy that transferred best (docs/generalisation.md)
    assert cfg.schedule.name == "cosine" and cfg.data.imbalance == "weighted_loss"


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "epochs: 7\noptim:\n  lr: 1e-2\n  name: adamw\nmodel: {image_size: 128}\naugment: {rotate_deg: 5}\n"
    )
    cfg = load_config(path, {"optim.lr": 0.05, "batch_size": 8, "model.init": None})
    assert cfg.epochs == 7 and cfg.batch_size == 8
    assert cfg.optim.lr == 0.05 and cfg.optim.name == "adamw"  # flag beats file
    assert cfg.model.image_size == 128 and cfg.model.init == "imagenet"  # None = not given
    assert cfg.augment == {"rotate_deg": 5}


def test_yaml_1e_minus_3_string_is_read_as_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 1e-3}\n")
    assert yaml.safe_load(path.read_text())["optim"]["lr"] == "1e-3"  # YAML 1.1 quirk
    assert load_config(path).optim.lr == pytest.approx(1e-3)


def test_every_problem_is_listed_together(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "epochs: 0\nbatch_size: many\nfoo: 1\n"
        "optim: {lr: -1, momentum: 2, bar: 3}\n"
        "data: {positive_class: COVID, imbalance: oversample}\n"
        "runtime: {precision: fp8}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    exc = err.value
    assert isinstance(exc, UsageError)  # CLI exit code 2
    text = str(exc)
    assert str(path) in text
    for needle in (
        "epochs: Input should be greater than or equal to 1 (got 0)",
        "batch_size: Input should be a valid integer",
        "foo: unknown key",
        "optim.lr: Input should be greater than 0 (got -1)",
        "optim.momentum: Input should be less than 1 (got 2)",
        "optim.bar: unknown key",
        "data.positive_class: must be one of data.classes ['NORMAL', 'PNEUMONIA'] (got 'COVID')",
        "data.imbalance: Input should be",
        "runtime.precision: Input should be",
    ):
        assert needle in text, needle
    assert len(exc.problems) == 9


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(broken)


def test_direct_construction_validates():
    with pytest.raises(ConfigError, match="lr"):
        OptimConfig(lr=0)
    with pytest.raises(ConfigError) as err:
        DataConfig(classes=("A",), positive_class="B", val_fraction=1.5)
    assert [p.split(":")[0] for p in err.value.problems] == ["classes", "val_fraction"]
    with pytest.raises(ConfigError, match="positive_class: must be one of data.classes"):
        DataConfig(classes=("A", "C"), positive_class="B")
    with pytest.raises(ConfigError, match="optim.lr: Input should be greater than 0"):
        TrainConfig(optim={"lr": 0})  # nested sections name their location


def test_round_trip_and_frozen():
    cfg = load_config(None, {"epochs": 3, "data.classes": "NORMAL,PNEUMONIA,COVID", "data.positive_class": "COVID"})
    assert cfg.data.classes == ("NORMAL", "PNEUMONIA", "COVID")
    again = TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg and again.fingerprint() == cfg.fingerprint()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.epochs = 4  # type: ignore[misc]
    d = cfg.to_dict()
    assert d["data"]["classes"] == ["NORMAL", "PNEUMONIA", "COVID"] and d["model"]["intensity_percentiles"] == [
        0.5,
        99.5,
    ]


def test_fingerprint_ignores_speed_only_settings():
    a = load_config()
    b = load_config(None, {"runtime.workers": 0, "data.cache_dir": "/tmp/x"})
    c = load_config(None, {"optim.lr": 0.01})
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    assert config_diff(a, c) == ["optim.lr: 0.001 -> 0.01"]


def test_apply_overrides_does_not_mutate():
    base = {"optim": {"lr": 1}}
    out = apply_overrides(base, {"optim.lr": 2, "epochs": 3})
    assert base == {"optim": {"lr": 1}} and out == {"optim": {"lr": 2}, "epochs": 3}


def test_bool_and_optional_coercion():
    cfg = load_config(None, {"runtime.compile": "yes", "data.val_fold": "2", "data.split": "fold"})
    assert cfg.runtime.compile is True and cfg.data.val_fold == 2
    with pytest.raises(ConfigError, match="runtime.compile: Input should be a valid boolean"):
        load_config(None, {"runtime.compile": "maybe"})
    with pytest.raises(ConfigError, match="data.val_fold: needed when data.split is 'fold'"):
        load_config(None, {"data.split": "fold"})


def test_config_module_imports_neither_torch_nor_monai():
    import subprocess
    import sys

    code = (
        "import sys, cxr_cad.config; cxr_cad.config.load_config(None, {'optim.lr': 0.01}); "
        "print('torch' in sys.modules, 'monai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_command_line_text_values_are_converted():
    cfg = load_config(
        None,
        {
            "optim.lr": "0.01",
            "epochs": "3",
            "data.cache_dir": "none",
            "data.val_fold": "null",
            "model.intensity_percentiles": "[1, 99]",
            "data.classes": "[A, B]",
            "data.positive_class": "B",
            "optim.label_smoothing": "1e-1",
        },
    )
    assert cfg.optim.lr == 0.01 and isinstance(cfg.optim.lr, float) and cfg.epochs == 3
    assert cfg.data.cache_dir is None and cfg.data.val_fold is None
    assert cfg.model.intensity_percentiles == (1.0, 99.0) and cfg.data.classes == ("A", "B")
    assert cfg.optim.label_smoothing == 0.1
    assert load_config(None, {"optim.lr": 1}).optim.lr == 1.0  # ints become floats (same fingerprint)
    with pytest.raises(ConfigError) as err:
        load_config(None, {"epochs": True, "optim.lr": True, "model.image_size": 2.5})
    assert [p.split(":")[0] for p in err.value.problems] == ["epochs", "model.image_size", "optim.lr"]


def test_fingerprint_is_unchanged_for_existing_run_folders():
    """Pinned hashes of configs written before the pydantic models: resumption keeps working.

    Those run folders' config.yaml name ``threshold.method: youden`` (the default until the
    sensitivity policy replaced it) and ``target_sensitivity: 0.9`` (the default until 0.95), so
    they are given here as their files give them."""
    youden = {"threshold.method": "youden", "threshold.target_sensitivity": 0.9}
    assert load_config(None, youden).fingerprint() == "8f589f9d49e1d61278c2f7ef958f43a0bf594cd0a47fb9f5fcb9dabbc885b5b0"
    scratch = load_config(None, {"model.init": "none", **youden})
    assert scratch.fingerprint() == "2b45ac80c7dd83aab65c54d891e85d1e859bb15307825b8c1af0991eda30d748"
    lr = load_config(None, {"optim.lr": "0.01", "epochs": "3", **youden})
    assert lr.fingerprint() == "ea90e244362658475889a48af39e2a1a0da860b249852d7978db936879ec6237"
    assert load_config().fingerprint() != load_config(None, youden).fingerprint()
    old = load_config().to_dict()
    del old["model"]["arch"]  # a config.yaml written before model.arch existed
    assert TrainConfig.from_dict(old).fingerprint() == load_config().fingerprint()


def test_arch_is_validated_and_counts_when_not_the_default():
    from cxr_cad.config.choices import ARCH_NAMES

    assert load_config().model.arch == "resnet18" and "resnet18" in ARCH_NAMES
    other = next(a for a in ARCH_NAMES if a != "resnet18")
    cfg = load_config(None, {"model.arch": other})
    assert cfg.model.arch == other and cfg.fingerprint() != load_config().fingerprint()
    assert config_diff(load_config(), cfg) == [f"model.arch: 'resnet18' -> {other!r}"]
    with pytest.raises(ConfigError, match="model.arch: must be a registered network: resnet18, resnet50, densenet121"):
        load_config(None, {"model.arch": "vgg11"})


def test_replace_validates_and_keeps_the_original():
    cfg = load_config()
    new = cfg.replace(epochs=3, data=cfg.data.replace(split="grouped"))
    assert (new.epochs, new.data.split, cfg.epochs, cfg.data.split) == (3, "grouped", 20, "auto")
    assert isinstance(new, TrainConfig) and new.optim == cfg.optim
    with pytest.raises(ConfigError, match="lr: Input should be greater than 0"):
        cfg.optim.replace(lr=-1)


def test_null_sections_and_augment_are_empty():
    cfg = TrainConfig.from_dict({"optim": None, "augment": None})
    assert cfg == TrainConfig() and cfg.augment == {}


def test_the_documented_config_file_loads(tmp_path):
    """The example in docs/train.md is a valid config naming every section."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "train.md").read_text(encoding="utf-8")
    block = text.split("## Config file", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "train.yaml"
    path.write_text(block)
    cfg = load_config(path)
    assert set(yaml.safe_load(block)) == set(TrainConfig.model_fields)
    assert set(yaml.safe_load(block)["model"]) == set(type(cfg.model).model_fields)
    assert cfg.epochs == 30 and cfg.augment["scale"] == [0.9, 1.1]

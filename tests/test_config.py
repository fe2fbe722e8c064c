"""cxr_cad.config: YAML loading, overrides, validation collecting every problem, round trips."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from cxr_cad.config import DataConfig, OptimConfig, TrainConfig, apply_overrides, config_diff, load_config
from cxr_cad.errors import ConfigError, UsageError


def test_defaults_are_the_study_defaults():
    cfg = load_config()
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 1e-3, 0.9)
    assert cfg.model.image_size == 224 and cfg.model.init == "imagenet"
    assert cfg.data.positive_class == "PNEUMONIA" and cfg.threshold.method == "youden"
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
        "epochs must be",
        "batch_size must be",
        "unknown option 'foo'",
        "optim.lr",
        "optim.momentum",
        "optim.bar",
        "positive_class 'COVID'",
        "data.imbalance",
        "runtime.precision",
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
    assert len(err.value.problems) == 3


def test_round_trip_and_frozen():
    cfg = load_config(None, {"epochs": 3, "data.classes": "NORMAL,PNEUMONIA,COVID", "data.positive_class": "COVID"})
    assert cfg.data.classes == ("NORMAL", "PNEUMONIA", "COVID")
    again = TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg and again.fingerprint() == cfg.fingerprint()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 4  # type: ignore[misc]


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
    with pytest.raises(ConfigError, match="runtime.compile must be bool"):
        load_config(None, {"runtime.compile": "maybe"})
    with pytest.raises(ConfigError, match="needs data.val_fold"):
        load_config(None, {"data.split": "fold"})


def test_config_module_imports_neither_torch_nor_monai():
    import subprocess
    import sys

    code = "import sys, cxr_cad.config; print('torch' in sys.modules, 'monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]

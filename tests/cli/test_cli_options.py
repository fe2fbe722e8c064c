"""The options several commands share are declared once (cli.options, cli.train_options)."""

from __future__ import annotations

import argparse
import json

import pytest

from cxr_cad import api
from cxr_cad.cli import build_parser
from cxr_cad.cli.options import pacs_from, policy_from
from cxr_cad.cli.train_options import TRAIN_FLAGS, overrides_from
from cxr_cad.config import TrainConfig
from cxr_cad.config.choices import PRECISIONS


def _sub(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _choices(parser: argparse.ArgumentParser, flag: str) -> list | None:
    return next(a.choices for a in parser._actions if flag in a.option_strings)


@pytest.mark.parametrize("command", ["train", "crossval", "predict"])
def test_precision_choices_are_the_config_spelling(command):
    assert list(_choices(_sub(command), "--precision")) == list(PRECISIONS)


def test_every_training_flag_sets_a_config_key_of_the_right_type():
    args = _sub("train").parse_args(["--manifest", "m.csv", "--out", "o"])
    overrides = overrides_from(args, "train")
    assert set(overrides) == {f.key for f in TRAIN_FLAGS} and all(v is None for v in overrides.values())
    given = _sub("train").parse_args(
        ["--manifest", "m", "--out", "o", "--lr", "0.01", "--epochs", "3", "--in-channels", "3", "--compile"]
        + ["--aspect", "pad", "--classes", "A,B", "--positive-class", "B", "--val-fold", "1", "--split", "fold"]
    )
    cfg = TrainConfig.from_dict({}).to_dict()
    config = api.as_config(None, overrides_from(given, "train"))
    assert (config.optim.lr, config.epochs, config.model.in_channels, config.runtime.compile) == (0.01, 3, 3, True)
    assert config.model.aspect == "pad" and config.data.classes == ("A", "B") and config.data.val_fold == 1
    assert cfg["optim"]["lr"] != 0.01


def test_crossval_flags_are_a_subset_of_train_flags_with_the_same_meaning():
    argv = ["--manifest", "m", "--out", "o", "--epochs", "2", "--lr", "0.5", "--arch", "resnet50", "--tta", "hflip"]
    cv = overrides_from(_sub("crossval").parse_args(argv), "crossval")
    train = overrides_from(_sub("train").parse_args(argv), "train")
    assert {k: v for k, v in cv.items()} == {k: train[k] for k in cv}
    assert "model.freeze_backbone_epochs" not in cv and "model.init" in cv
    assert cv["model.arch"] == "resnet50" and cv["epochs"] == 2


@pytest.mark.parametrize(
    "command, argv",
    [
        ("ingest", ["src", "--out", "o"]),
        ("evaluate", ["--model", "m.pt", "--out", "o"]),
        ("predict", ["src", "--model", "m.pt", "--out", "o"]),
        ("listen", ["--model", "m.pt", "--out", "o"]),
    ],
)
def test_policy_flags_mean_the_same_in_every_command(command, argv):
    parser = _sub(command)
    assert policy_from(parser.parse_args(argv)) == api.AcceptPolicy()
    lateral = policy_from(parser.parse_args([*argv, "--allow-lateral", "--modalities", "any"]))
    assert lateral.reject_lateral is False and lateral.modalities == ()


def test_pacs_flags_become_typed_options():
    args = _sub("predict").parse_args(
        ["dicomweb:http://h/d", "--model", "m", "--out", "o", "--query", "Modality=DX", "--fetch-chunk", "4"]
        + ["--dicom-out", "d", "--stow", "http://s"]
    )
    pacs = pacs_from(args)
    assert pacs == api.PacsOptions(query=("Modality=DX",), fetch_chunk=4, dicom_out="d", stow="http://s")
    assert json.dumps(pacs.query) == '["Modality=DX"]'

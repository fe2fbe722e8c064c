"""``--arch`` on ``cxr-cad train`` and ``crossval`` reaches the config key ``model.arch``."""

from __future__ import annotations

import pytest

from cxr_cad import api
from cxr_cad.cli import build_parser, main


@pytest.mark.parametrize("command", ["train", "crossval"])
def test_arch_is_listed_in_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert "--arch" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "crossval"])
def test_arch_reaches_the_config(command, monkeypatch, tmp_path):
    from cxr_cad.model.registry import arch_names

    seen = {}

    def fake_train(manifest, cfg, out_dir=None, **_):
        seen["cfg"] = cfg
        raise KeyboardInterrupt  # stop before anything runs (exit 130)

    def fake_crossval(manifest, cfg, out_dir=None, **_):
        seen["cfg"] = cfg
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "run_training", fake_train)
    monkeypatch.setattr(api, "crossval", fake_crossval)
    monkeypatch.setattr(api, "read_labelled", lambda manifest, classes: manifest)
    arch = [a for a in arch_names() if a != "resnet18"][0]
    (tmp_path / "m.csv").write_text("path,label\n")  # the CLI checks that the file exists
    argv = [command, "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "run"), "--arch", arch]
    assert main(argv) == 130
    assert seen["cfg"].model.arch == arch
    assert main([command, "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "run")]) == 130
    assert seen["cfg"].model.arch == "resnet18"  # the default


def test_unknown_arch_is_a_usage_error(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["train", "--manifest", "m.csv", "--out", "o", "--arch", "resnet-nine"])
    assert exc.value.code == 2
    assert "--arch" in capsys.readouterr().err

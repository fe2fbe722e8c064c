"""Class 3: YAML bombs, oversized and non-UTF-8 workflow/config files: exit 2, one short line."""

from __future__ import annotations

import pytest

from cxr_cad.cli import main
from cxr_cad.config import load_config
from cxr_cad.core.yamlfile import MAX_EXPANDED_NODES, load_yaml_text
from cxr_cad.errors import MAX_MESSAGE_CHARS, ConfigError
from cxr_cad.workflow.overrides import parse_set
from cxr_cad.workflow.schema import load_workflow
from tests.hostile import inputs as H
from tests.hostile.conftest import RSS_LIMIT_MB, deadline
from tests.hostile.runner import run_cli


@pytest.mark.parametrize("valid_keys", [False, True])
def test_billion_laughs_workflow_is_refused_fast(tmp_path, valid_keys):
    path = H.yaml_bomb(tmp_path / "bomb.yaml", under_valid_keys=valid_keys)
    with deadline(20), pytest.raises(ConfigError, match="alias bomb"):
        load_workflow(path)
    with deadline(20), pytest.raises(ConfigError, match="alias bomb"):
        load_config(path)


def test_run_check_on_a_bomb_exits_2_with_one_short_line(tmp_path):
    path = H.yaml_bomb(tmp_path / "bomb.yaml", under_valid_keys=True)
    o = run_cli(["run", path, "--check"], timeout=300)
    assert o.rc == 2, o.stderr
    assert len(o.stderr_lines) == 1 and len(o.stderr) < 1000
    assert o.rss_mb < RSS_LIMIT_MB


def test_aliases_within_the_limit_still_work():
    text = "base: &b {epochs: 2, lr: 0.1}\nrun1: *b\nrun2: *b\n"
    assert load_yaml_text(text, "t")["run2"] == {"epochs": 2, "lr": 0.1}
    big = "x: [" + ", ".join(["1"] * (MAX_EXPANDED_NODES // 2)) + "]\n"
    assert len(load_yaml_text(big, "t")["x"]) == MAX_EXPANDED_NODES // 2


@pytest.mark.parametrize(
    "text,match",
    [
        ("a: &a [*a]\n", "recursive|alias bomb"),
        ("x: " + "[" * 200 + "]" * 200 + "\n", "deeper"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_malformed_structures_are_config_errors(text, match):
    with deadline(20), pytest.raises(ConfigError, match=match):
        load_yaml_text(text, "t")


def test_set_value_bomb_is_refused():
    levels = ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 8))
    with deadline(20), pytest.raises(ConfigError, match="not valid YAML or too large"):
        parse_set([f"data.test=[&a0 [1], {levels}]"])


def test_oversized_file_is_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="larger than"):
        load_workflow(path)


@pytest.mark.parametrize(
    "argv",
    [
        lambda p, t: ["run", str(p), "--check"],
        lambda p, t: ["train", "--manifest", str(t / "m.csv"), "--out", str(t / "o"), "--config", str(p)],
    ],
)
def test_non_utf8_file_exits_2_with_one_line(tmp_path, capsys, argv):
    path = H.non_utf8_yaml(tmp_path / "latin1.yaml")
    (tmp_path / "m.csv").write_text("path,label\n")
    assert main(argv(path, tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [ln for ln in err if not ln.startswith(("INFO", "WARNING"))]
    assert len(err) == 1 and "not UTF-8" in err[0] and "offset 9" in err[0]


def test_every_message_is_capped():
    problems = ["x" * 10_000_000] + [f"p{i}" for i in range(1000)]
    msg = str(ConfigError(problems, "src"))
    assert len(msg) < MAX_MESSAGE_CHARS * 2
    assert "more characters cut" in msg and "more problems" in msg


def test_rejection_details_are_capped():
    from cxr_cad.errors import RejectedFile

    exc = RejectedFile("DECODE_FAILED", "decoder said: " + "A" * 1_000_000, "x.dcm")
    assert len(exc.detail) < MAX_MESSAGE_CHARS and len(str(exc)) < MAX_MESSAGE_CHARS

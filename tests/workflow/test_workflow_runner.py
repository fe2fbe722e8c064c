"""The step runner: records, skip when unchanged, rerun when changed, resume when interrupted."""

from __future__ import annotations

import json

import pytest

from cxr_cad.workflow.runner import Step, hash_path, run_steps


class Calls:
    def __init__(self):
        self.log = []


def _steps(calls, src, *, factor=2, fail_in_double=False):
    def read(ctx):
        calls.log.append(("read", ctx.resume))
        (ctx.step_dir / "value.txt").write_text(src.read_text())
        return {"value": "value.txt"}

    def double(ctx):
        calls.log.append(("double", ctx.resume))
        partial = ctx.step_dir / "partial.txt"
        if ctx.resume:
            assert partial.exists(), "resume must keep the interrupted step's folder"
        partial.write_text("started")
        if fail_in_double:
            raise KeyboardInterrupt
        v = int((ctx.step_dir.parent / "read" / ctx.upstream["read"]["value"]).read_text())
        (ctx.step_dir / "out.txt").write_text(str(v * ctx.config["factor"]))
        return {"out": "out.txt"}

    return [
        Step("read", read, config={}, inputs={"src": src}, output_files=["value"]),
        Step("double", double, config={"factor": factor}, depends=["read"], output_files=["out"]),
    ]


def test_runs_then_skips_when_nothing_changed(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("21")
    calls = Calls()
    out = run_steps(_steps(calls, src), tmp_path / "run")
    assert [o.status for o in out] == ["ran", "ran"]
    assert (tmp_path / "run" / "double" / "out.txt").read_text() == "42"
    rec = json.loads((tmp_path / "run" / "double" / "step.json").read_text())
    assert rec["status"] == "done" and rec["config"] == {"factor": 2}
    assert rec["inputs"]["read.value"] == hash_path(tmp_path / "run" / "read" / "value.txt")
    calls2 = Calls()
    out = run_steps(_steps(calls2, src), tmp_path / "run")
    assert [o.status for o in out] == ["skipped", "skipped"]
    assert calls2.log == []


def test_config_change_reruns_only_that_step(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("5")
    run_steps(_steps(Calls(), src), tmp_path / "run")
    calls = Calls()
    out = run_steps(_steps(calls, src, factor=3), tmp_path / "run")
    assert [o.status for o in out] == ["skipped", "ran"]
    assert (tmp_path / "run" / "double" / "out.txt").read_text() == "15"


def test_input_change_reruns_downstream(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("5")
    run_steps(_steps(Calls(), src), tmp_path / "run")
    src.write_text("7")
    calls = Calls()
    out = run_steps(_steps(calls, src), tmp_path / "run")
    assert [o.status for o in out] == ["ran", "ran"]
    assert (tmp_path / "run" / "double" / "out.txt").read_text() == "14"


def test_unchanged_upstream_output_keeps_downstream_skipped(tmp_path):
    """Upstream reruns (its input file was rewritten) but produces the same bytes: downstream skips."""
    src = tmp_path / "in.txt"
    src.write_text("5")
    run_steps(_steps(Calls(), src), tmp_path / "run")
    src.write_text("5\n")  # new bytes ...
    src.write_text("5")  # ... and back: same content hash
    out = run_steps(_steps(Calls(), src), tmp_path / "run")
    assert [o.status for o in out] == ["skipped", "skipped"]


def test_edited_output_reruns_the_step(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("5")
    run_steps(_steps(Calls(), src), tmp_path / "run")
    (tmp_path / "run" / "double" / "out.txt").write_text("tampered")
    out = run_steps(_steps(Calls(), src), tmp_path / "run")
    assert [o.status for o in out] == ["skipped", "ran"]
    assert (tmp_path / "run" / "double" / "out.txt").read_text() == "10"


def test_interrupted_step_resumes_in_place(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("4")
    with pytest.raises(KeyboardInterrupt):
        run_steps(_steps(Calls(), src, fail_in_double=True), tmp_path / "run")
    rec = json.loads((tmp_path / "run" / "double" / "step.json").read_text())
    assert rec["status"] == "running"
    calls = Calls()
    out = run_steps(_steps(calls, src), tmp_path / "run")
    assert [o.status for o in out] == ["skipped", "resumed"]
    assert calls.log == [("double", True)]
    assert (tmp_path / "run" / "double" / "out.txt").read_text() == "8"


def test_interrupted_step_with_new_config_starts_over(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("4")
    with pytest.raises(KeyboardInterrupt):
        run_steps(_steps(Calls(), src, fail_in_double=True), tmp_path / "run")
    calls = Calls()
    out = run_steps(_steps(calls, src, factor=5), tmp_path / "run")
    assert [o.status for o in out] == ["skipped", "ran"]
    assert calls.log == [("double", False)]
    assert (tmp_path / "run" / "double" / "out.txt").read_text() == "20"


def test_hash_path_folder_listing_changes(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.dcm").write_bytes(b"x")
    h1 = hash_path(d)
    (d / "b.dcm").write_bytes(b"y")
    assert hash_path(d) != h1
    assert hash_path(tmp_path / "nope") == "missing" and hash_path(None) == "missing"

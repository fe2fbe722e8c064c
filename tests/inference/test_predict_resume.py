"""Crash safety and resume of ``cxr-cad predict``: journals, run state, kill -9 mid-run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr_cad.errors import OutputError, UsageError
from cxr_cad.inference.inputs import PredictInput, batch_shard, inputs_fingerprint
from cxr_cad.inference.outputs import STATE_DIR, Journal, merge_outputs, prepare_out_dir, read_journals
from tests.inference.test_predict import bundle_path  # noqa: F401 -- the session-scoped test bundle fixture


def _rec(i: int, kind: str = "prediction") -> dict:
    if kind == "prediction":
        return {
            "index": i,
            "kind": kind,
            "path": f"/x/{i}.png",
            "sop_instance_uid": f"u{i}",
            "study_instance_uid": "",
            "probability": "0.500000",
            "decision": "P",
            "threshold": "0.5",
            "model_sha256": "abc",
            "label": "",
        }
    return {"index": i, "kind": kind, "path": f"/x/{i}.png", "reason": "NOT_DICOM", "detail": "junk"}


def test_journal_cuts_torn_tail_and_keeps_complete_lines(tmp_path):
    prepare_out_dir(tmp_path, {"a": 1}, overwrite=False)
    with Journal(tmp_path) as j:
        j.append([_rec(0), _rec(1, "rejected")])
    part = tmp_path / STATE_DIR / "part-rank0.jsonl"
    with open(part, "ab") as fh:  # what a kill -9 in the middle of a write could leave
        fh.write(b'{"index":2,"kind":"predi')
    assert sorted(read_journals(tmp_path)) == [0, 1]
    with Journal(tmp_path) as j:  # reopening cuts the torn tail before appending
        j.append([_rec(2)])
    lines = part.read_bytes().splitlines()
    assert [json.loads(x)["index"] for x in lines] == [0, 1, 2]


def test_corrupt_middle_line_is_an_error(tmp_path):
    prepare_out_dir(tmp_path, {"a": 1}, overwrite=False)
    (tmp_path / STATE_DIR / "part-rank0.jsonl").write_text('{"index": 0}\nnot json\n{"index": 1}\n')
    with pytest.raises(OutputError, match="corrupt"):
        read_journals(tmp_path)


def test_two_writers_on_one_folder_are_refused(tmp_path):
    prepare_out_dir(tmp_path, {"a": 1}, overwrite=False)
    code = (
        "import sys, time; from pathlib import Path; from cxr_cad.inference.outputs import Journal\n"
        "with Journal(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match="another cxr-cad predict"):
            with Journal(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_state_mismatch_needs_new_out_or_overwrite(tmp_path):
    state = {"model_sha256": "m1", "inputs_fingerprint": "f1"}
    assert prepare_out_dir(tmp_path, state, overwrite=False) is False
    assert prepare_out_dir(tmp_path, state, overwrite=False) is True
    with pytest.raises(UsageError, match="different model_sha256.*--overwrite"):
        prepare_out_dir(tmp_path, {**state, "model_sha256": "m2"}, overwrite=False)
    with Journal(tmp_path) as j:
        j.append([_rec(0)])
    assert prepare_out_dir(tmp_path, {**state, "model_sha256": "m2"}, overwrite=True) is False
    assert read_journals(tmp_path) == {}


def test_foreign_predictions_csv_is_not_clobbered(tmp_path):
    (tmp_path / "predictions.csv").write_text("mine\n")
    with pytest.raises(UsageError, match="new --out"):
        prepare_out_dir(tmp_path, {"a": 1}, overwrite=False)
    assert (tmp_path / "predictions.csv").read_text() == "mine\n"


def test_merge_orders_by_input_and_refuses_gaps(tmp_path):
    prepare_out_dir(tmp_path, {"a": 1}, overwrite=False)
    with Journal(tmp_path, rank=1) as j:
        j.append([_rec(3), _rec(1, "rejected")])
    with Journal(tmp_path, rank=0) as j:
        j.append([_rec(2), _rec(0)])
    with pytest.raises(OutputError, match="1 input"):
        merge_outputs(tmp_path, 5, with_label=False)
    merge_outputs(tmp_path, 4, with_label=True)
    with open(tmp_path / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["sop_instance_uid"] for r in rows] == ["u0", "u2", "u3"]
    assert "label" in rows[0]
    with open(tmp_path / "rejected.csv", newline="") as fh:
        assert [r["path"] for r in csv.DictReader(fh)] == ["/x/1.png"]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_batch_shard_covers_everything_once_with_single_process_batches(world_size):
    indices = [i for i in range(23) if i % 5 != 0]  # what is left after a partial run
    single = batch_shard(indices, 4)
    shards = [batch_shard(indices, 4, r, world_size) for r in range(world_size)]
    batches = [b for s in shards for b in s]
    assert sorted(i for b in batches for i in b) == indices
    assert sorted(map(tuple, batches)) == sorted(map(tuple, single))


def test_fingerprint_changes_with_inputs(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"1")
    b.write_bytes(b"22")
    inputs = [PredictInput(0, str(a)), PredictInput(1, str(b))]
    fp = inputs_fingerprint(inputs)
    assert fp == inputs_fingerprint(list(inputs))
    assert fp != inputs_fingerprint(inputs[:1])
    assert fp != inputs_fingerprint([PredictInput(0, str(a), "NORMAL"), inputs[1]])
    b.write_bytes(b"333")
    assert fp != inputs_fingerprint(inputs)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cxr_cad", "-q", "predict", *args]


def test_kill_9_mid_run_then_resume_scores_every_image_once(tmp_path, bundle_path, capsys):
    from cxr_cad.cli import main
    from cxr_cad.model import init_model, save_bundle
    from cxr_cad.transforms import TransformSpec
    from tests.inference.test_predict import read_csv, write_images

    bundle = bundle_path
    src = tmp_path / "in"
    write_images(src, 58, size=64)
    (src / "junk.bin").write_bytes(b"\x00junk")
    (src / "empty.dcm").write_bytes(b"")
    out = tmp_path / "out"
    args = _cli(str(src), "--model", str(bundle), "--out", str(out), "--batch-size", "4", "--workers", "1")
    env = {**os.environ, "CXR_CAD_PREDICT_BATCH_DELAY_S": "0.5"}
    proc = subprocess.Popen(args, env=env, start_new_session=True, stderr=subprocess.PIPE)
    part = out / STATE_DIR / "part-rank0.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if part.exists() and part.read_bytes().count(b"\n") >= 12:  # 3 batches journaled
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its decode worker, no clean-up
    finally:
        proc.wait()
    done_before = part.read_bytes().count(b"\n")
    assert 12 <= done_before < 60
    assert not (out / "predictions.csv").exists()
    with open(part, "ab") as fh:  # as if the kill had torn the last write
        fh.write(b'{"index": 59, "kind": "predic')

    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_done_before"] == done_before
    assert summary["n_processed"] == 60 - done_before
    preds, rejected = read_csv(out / "predictions.csv"), read_csv(out / "rejected.csv")
    paths = [r["path"] for r in preds] + [r["path"] for r in rejected]
    assert len(paths) == len(set(paths)) == 60
    assert sorted(paths) == sorted(str(p) for p in src.iterdir())
    assert {Path(r["path"]).name: r["reason"] for r in rejected} == {"junk.bin": "NOT_DICOM", "empty.dcm": "EMPTY_FILE"}

    # a different model on the same --out is refused (exit 2) and changes nothing
    other = tmp_path / "other.pt"
    save_bundle(
        other,
        init_model("none", 2, 1, seed=1)[0],
        classes=["NORMAL", "PNEUMONIA"],
        positive_class="PNEUMONIA",
        transform_spec=TransformSpec(image_size=64),
        threshold=0.5,
        threshold_method="fixed",
        manifest_hash="other",
    )
    before = (out / "predictions.csv").read_bytes()
    assert main(["-q", "predict", str(src), "--model", str(other), "--out", str(out)]) == 2
    assert "different model_sha256" in capsys.readouterr().err
    assert (out / "predictions.csv").read_bytes() == before

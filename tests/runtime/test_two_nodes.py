"""Two "nodes" on 127.0.0.1 (two torchrun launchers, one process each, a c10d rendezvous on a free
port, gloo on CPU) give what one node gives: the DDP-trained model bit for bit, and the sharded
predictions exactly (docs/scale-out.md).

Training is compared with one node running the same two ranks (``--standalone
--nproc_per_node 2``), not with one process: with two ranks every step averages two per-rank
batches (each with its own BatchNorm statistics and augmentation stream), so a one-process run
is a different, equally valid, optimisation. Where the ranks run must not change anything, and
does not. Prediction has no such coupling: each batch is scored whole on one rank, so two nodes
equal one process exactly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist

from tests.factories.synth import write_png_cohort

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)

TRAIN = ["--epochs", "2", "--image-size", "32", "--batch-size", "8", "--init", "none", "--workers", "0"]
COMMON = ["--device", "cpu", "--precision", "fp32"]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # the same intra-op threads everywhere (torchrun sets 1 only for nproc > 1)
        "CXR_CAD_NO_PROGRESS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: What a port taken by another program between choosing it and binding it looks like (the
#: machine is shared); such a launch is retried once on a new port, nothing else is.
PORT_RACE = ("address already in use", "EADDRINUSE", "DistNetworkError", "RendezvousConnectionError")


def _launch(args: list[str], cwd: Path) -> list[tuple[int, str, str]]:
    endpoint = f"127.0.0.1:{_free_port()}"
    procs = []
    for node in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc_per_node",
            "1",
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            endpoint,
            "--rdzv_id",
            f"cxr-cad-test-{os.getpid()}-{endpoint}",
            "--rdzv_conf",
            f"is_host={int(node == 0)}",
            "-m",
            "cxr_cad",
            *args,
        ]
        procs.append(
            subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = [p.communicate(timeout=600) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def _two_nodes(args: list[str], cwd: Path) -> None:
    """``torchrun --nnodes 2 --nproc_per_node 1`` twice, meeting at a c10d rendezvous on 127.0.0.1."""
    runs = _launch(args, cwd)
    if any(rc != 0 for rc, _, _ in runs) and any(m in err for _, _, err in runs for m in PORT_RACE):
        runs = _launch(args, cwd)
    for rc, out, err in runs:
        assert rc == 0, out[-2000:] + err[:4000] + "\n...\n" + err[-2000:]


def _run(args: list[str], cwd: Path, *launcher: str) -> None:
    proc = subprocess.run(
        [sys.executable, *launcher, "-m", "cxr_cad", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def _state(path: Path) -> dict[str, torch.Tensor]:
    from cxr_cad.model import load_bundle

    return load_bundle(path).model.state_dict()


def test_two_nodes_equal_one_node(tmp_path):
    manifest = write_png_cohort(tmp_path / "cohort", n_patients=16, images_per_patient=2, size=48, seed=3)
    csv = str(tmp_path / "cohort" / "manifest.csv")

    # training: 2 ranks on one node == 2 ranks on two nodes, bit for bit
    one_node, two_nodes = tmp_path / "train-1node", tmp_path / "train-2nodes"
    standalone = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run(["-q", "train", "--manifest", csv, "--out", str(one_node), *TRAIN, *COMMON], tmp_path, *standalone)
    _two_nodes(["-q", "train", "--manifest", csv, "--out", str(two_nodes), *TRAIN, *COMMON], tmp_path)
    a, b = _state(one_node / "model.pt"), _state(two_nodes / "model.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    cols = ["epoch", "train_loss", "val_loss", "val_auc"]
    la, lb = pd.read_csv(one_node / "train_log.csv"), pd.read_csv(two_nodes / "train_log.csv")
    pd.testing.assert_frame_equal(la[cols], lb[cols])
    assert (one_node / "val_predictions.csv").read_text() == (two_nodes / "val_predictions.csv").read_text()

    # sharded prediction: two nodes == one process, exactly
    model = str(two_nodes / "model.pt")
    pred = ["-q", "predict", csv, "--model", model, "--batch-size", "4", "--workers", "0", *COMMON]
    _run([*pred, "--out", str(tmp_path / "pred-1")], tmp_path)
    _two_nodes([*pred, "--out", str(tmp_path / "pred-2nodes")], tmp_path)
    parts = sorted(p.name for p in (tmp_path / "pred-2nodes" / ".predict").glob("part-rank*.jsonl"))
    assert parts == ["part-rank0.jsonl", "part-rank1.jsonl"]  # both ranks scored a share
    single = (tmp_path / "pred-1" / "predictions.csv").read_text()
    assert single == (tmp_path / "pred-2nodes" / "predictions.csv").read_text()
    assert len(pd.read_csv(tmp_path / "pred-1" / "predictions.csv")) == len(manifest)

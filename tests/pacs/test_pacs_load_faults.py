"""Load and faults, for real: concurrent senders into ``cxr-cad listen`` (every instance scored or
rejected exactly once, none lost), Orthanc killed and restarted in the middle of a DICOMweb run
(the run retries and completes; nothing lost or doubled), and a STOW-RS that fails is reported and
sent by the next run, never dropped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxr_cad.cli import main
from tests.factories.dicom import write_dicom, write_sr
from tests.factories.orthanc import ORTHANC, PASSWORD, USER, free_port, skip_reason, start_orthanc
from tests.inference.test_predict import bundle_path, cohort_pixels, read_csv  # noqa: F401 - session fixture
from tests.pacs.test_pacs_dicomweb import write_cohort
from tests.pacs.test_pacs_listen import start_listener

REPO = Path(__file__).resolve().parents[2]
needs_orthanc = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


def _make(root: Path, n: int, tag: int) -> list[Path]:
    """``n`` small CR images, every tenth an SR document instead (stored, then rejected as not an image)."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    pixels = cohort_pixels(n, seed=tag)
    for k in range(n):
        path = root / f"s{tag:02d}_{k:04d}.dcm"
        if k % 10 == 9:
            out.append(write_sr(path))
        else:
            out.append(write_dicom(path, pixels[k][0].astype(np.uint16) * 16))
    return out


def _send_all(port: int, files: list[Path], codes: list) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import ComprehensiveSRStorage, ComputedRadiographyImageStorage

    ae = AE(ae_title="LOADSCU")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    ae.add_requested_context(ComprehensiveSRStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRCADTEST")
    assert assoc.is_established
    for path in files:
        status = assoc.send_c_store(pydicom.dcmread(path))
        codes.append(int(status.Status) if status else -1)
    assoc.release()


def _load(bundle: Path, tmp_path: Path, senders: int, per_sender: int) -> None:
    batches = [_make(tmp_path / "src" / str(s), per_sender, s) for s in range(senders)]
    sops = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for b in batches for p in b}
    assert len(sops) == senders * per_sender
    out = tmp_path / "node"
    proc, port = start_listener(bundle, out)
    codes: list[list[int]] = [[] for _ in batches]
    t0 = time.monotonic()
    try:
        threads = [threading.Thread(target=_send_all, args=(port, b, c)) for b, c in zip(batches, codes, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        seconds = time.monotonic() - t0
        assert all(c == [0] * per_sender for c in codes)  # every store accepted
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = (out / "predictions.csv").exists() and (out / "rejected.csv").exists()
            rows = read_csv(out / "predictions.csv") + read_csv(out / "rejected.csv") if done else []
            if len(rows) >= len(sops):
                break
            time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    preds, rejs = read_csv(out / "predictions.csv"), read_csv(out / "rejected.csv")
    got = [r["sop_instance_uid"] for r in preds + rejs]
    assert len(got) == len(set(got)) and set(got) == sops  # each exactly once, none lost
    assert {r["reason"] for r in rejs} == {"NOT_AN_IMAGE_SOP_CLASS"} and len(rejs) == senders * (per_sender // 10)
    stores = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines() if '"event":"store"' in x]
    assert len(stores) == len(sops)
    print(
        f"\nload: {senders} x {per_sender} stored in {seconds:.1f} s, {len(preds)} scored, {len(rejs)} rejected, 0 lost"
    )


def test_four_concurrent_senders_of_twenty_every_instance_once(bundle_path, tmp_path):
    _load(bundle_path, tmp_path, 4, 20)


@pytest.mark.slow
def test_eight_concurrent_senders_of_a_hundred_every_instance_once(bundle_path, tmp_path):
    _load(bundle_path, tmp_path, 8, 100)


def _restart(server) -> None:
    """Start Orthanc again on the same configuration (ports, storage), after a kill -9."""
    with open(server.log_path, "ab") as log:
        server.proc = subprocess.Popen(
            [ORTHANC, str(server.root / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=server.root,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            server.rest("/system")
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    raise RuntimeError("Orthanc did not come back")


@needs_orthanc
def test_orthanc_killed_and_restarted_mid_run_the_run_retries_and_completes(bundle_path, tmp_path):
    server = start_orthanc(tmp_path / "orthanc")
    try:
        files = write_cohort(tmp_path / "src", n=10)
        for p in files["images"] + files["junk"]:
            server.upload(p)
        args = [
            sys.executable,
            "-m",
            "cxr_cad",
            "-q",
            "predict",
            f"dicomweb:{server.dicomweb}",
            "--model",
            str(bundle_path),
            "--workers",
            "0",
            "--fetch-chunk",
            "2",
            "--batch-size",
            "1",
        ]
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            CXR_CAD_DICOMWEB_USER=USER,
            CXR_CAD_DICOMWEB_PASSWORD=PASSWORD,
            CXR_CAD_DICOMWEB_RETRIES="8",  # 0.5 + 1 + 2 + 4 + ... s of back-off: longer than a restart
            CXR_CAD_PREDICT_BATCH_DELAY_S="0.3",
        )
        out = tmp_path / "out"
        proc = subprocess.Popen([*args, "--out", str(out)], env=env, stderr=subprocess.PIPE, text=True)
        journal = out / ".dicomweb" / "journal.jsonl"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (journal.exists() and journal.read_bytes().count(b"\n") >= 2):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        os.killpg(server.proc.pid, signal.SIGKILL)  # the archive dies mid-run
        server.proc.wait()
        time.sleep(2)
        _restart(server)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        env.pop("CXR_CAD_PREDICT_BATCH_DELAY_S")
        ref = subprocess.run([*args, "--out", str(tmp_path / "ref")], env=env, capture_output=True, timeout=300)
        assert ref.returncode == 0, ref.stderr
        every = len(files["images"]) + len(files["junk"])
        for name in ("predictions.csv", "rejected.csv"):
            rows = read_csv(out / name)
            assert len({r["sop_instance_uid"] for r in rows}) == len(rows)  # nothing doubled
            assert rows == read_csv(tmp_path / "ref" / name)  # nothing lost, the same numbers
        assert not any(r["reason"] in ("NETWORK_ERROR", "FETCH_FAILED") for r in read_csv(out / "rejected.csv"))
        assert len(read_csv(out / "predictions.csv")) + len(read_csv(out / "rejected.csv")) == every
    finally:
        server.stop()


@needs_orthanc
def test_a_failed_stow_is_reported_and_sent_by_the_next_run(bundle_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXR_CAD_DICOMWEB_USER", USER)
    monkeypatch.setenv("CXR_CAD_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.setenv("CXR_CAD_DICOMWEB_RETRIES", "0")
    source = start_orthanc(tmp_path / "source")
    try:
        files = write_cohort(tmp_path / "src", n=3)
        for p in files["images"]:
            source.upload(p)
        port = free_port()  # the results archive, down for the first run
        stow = f"dicomweb:http://127.0.0.1:{port}/dicom-web"
        args = [
            "predict",
            f"dicomweb:{source.dicomweb}",
            "--model",
            str(bundle_path),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "0",
            "--dicom-out",
            str(tmp_path / "dicom"),
            "--stow",
            stow,
        ]
        assert main(args) == 0
        first = capsys.readouterr().out
        objects = read_csv(tmp_path / "dicom" / "objects.csv")
        assert len(objects) == 3 and all(o["stow"] == "STOW_FAILED" for o in objects)
        assert "STOW_FAILED 3" in first  # reported in the summary line
        # the results archive comes up on that port; the rerun sends what was not sent, once
        results = start_orthanc(tmp_path / "results", http_port=port)
        try:
            assert main(args) == 0
            objects = read_csv(tmp_path / "dicom" / "objects.csv")
            assert all(o["stow"] == "sent" for o in objects)
            assert len(results.rest("/instances")) == 3
        finally:
            results.stop()
    finally:
        source.stop()

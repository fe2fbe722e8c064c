"""``cxr-cad listen``: a real C-STORE SCP process, fed by pynetdicom (and dcmtk's storescu where installed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests.factories.orthanc import free_port, skip_reason, start_orthanc
from tests.inference.test_predict import bundle_path, read_csv  # noqa: F401 - session fixture
from tests.pacs.test_pacs_dicomweb import write_cohort

REPO = Path(__file__).resolve().parents[2]
#: dcmtk's storescu (the virtual environment's bin/ may hold pynetdicom's app of the same name)
DCMTK_STORESCU = shutil.which("storescu", path="/usr/bin:/usr/local/bin") if shutil.which("dcmdump") else None


def start_listener(bundle: Path, out: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxr_cad",
            "listen",
            "--model",
            str(bundle),
            "--out",
            str(out),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--aet",
            "CXRCADTEST",
            *extra,
        ],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert "CXRCADTEST on 127.0.0.1" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, port


def send(port: int, datasets: list, *, abort: bool = False) -> list[int]:
    """C-STORE each item (Dataset or file path) in one association; the response status of each."""
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian
    from pynetdicom import AE, StoragePresentationContexts, _config
    from pynetdicom.sop_class import ComprehensiveSRStorage

    _config.STORE_SEND_CHUNKED_DATASET = True  # files are sent as they are, unparsed (pynetdicom's option)

    ae = AE(ae_title="TESTSCU")
    ae.requested_contexts = StoragePresentationContexts[:120]
    ae.add_requested_context(ComprehensiveSRStorage)
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)  # files go as they are
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRCADTEST")
    assert assoc.is_established
    codes = []
    for item in datasets:
        status = assoc.send_c_store(item)
        codes.append(int(status.Status) if status else -1)
    assoc.abort() if abort else assoc.release()
    return codes


def unparseable_file(path: Path, sop_uid: str) -> Path:
    """Valid File Meta and UIDs (CR image, explicit VR LE), then a sequence whose item runs off the end."""
    import struct

    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fh, meta)
        for elem, value in ((0x0016, ComputedRadiographyImageStorage), (0x0018, sop_uid)):
            raw = value.encode() + b"\0" * (len(value) % 2)
            fh.write(struct.pack("<HH", 0x0008, elem) + b"UI" + struct.pack("<H", len(raw)) + raw)
        fh.write(
            struct.pack("<HH", 0x0040, 0x0275)
            + b"SQ\0\0"
            + struct.pack("<I", 0xFFFFFFFF)
            + b"\xfe\xff\x00\xe0"
            + struct.pack("<I", 100)
            + b"garbage!" * 3
        )
    return path


def test_listen_scores_on_arrival_survives_bad_input_and_stops_on_sigterm(bundle_path, tmp_path):
    files = write_cohort(tmp_path / "src", n=4)
    from tests.factories.dicom import truncate_file

    copy = pydicom.dcmread(files["images"][0])
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.998"
    copy.save_as(tmp_path / "trunc.dcm")
    truncated = truncate_file(tmp_path / "trunc.dcm", 0.6)  # the pixel data cut short
    out = tmp_path / "node"
    proc, port = start_listener(bundle_path, out, "--secondary-capture")
    try:
        good = [pydicom.dcmread(p) for p in files["images"]]
        assert send(port, good + [pydicom.dcmread(files["junk"][0])]) == [0] * 5  # 4 images + an SR
        bad_uid = "1.2.826.0.1.3680043.8.498.999"
        codes = send(port, [str(unparseable_file(tmp_path / "bad.dcm", bad_uid))])
        assert codes == [0xC210]
        send(port, [pydicom.dcmread(files["junk"][1])], abort=True)  # an association that is aborted
        trunc_codes = send(port, [str(truncated)])  # truncated pixel data (or a header cut short)
        assert trunc_codes == [0x0000]  # the header parses; the engine rejects the pixels
        if DCMTK_STORESCU:  # dcmtk, a second implementation of the sending side
            r = subprocess.run(
                [DCMTK_STORESCU, "-aec", "CXRCADTEST", "127.0.0.1", str(port), str(files["junk"][2])],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 0, r.stderr
            # a JPEG baseline file: -xy proposes JPEG with uncompressed fallbacks; the node must take it as it is
            r = subprocess.run(
                [
                    DCMTK_STORESCU,
                    "-xy",
                    "-aec",
                    "CXRCADTEST",
                    "127.0.0.1",
                    str(port),
                    str(REPO / "tests/data/siim_cr_chest_jpeg_baseline.dcm"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 0, r.stderr
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped" in stdout
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    received = {r["sop_instance_uid"] for r in journal if r["event"] == "received"}
    sent_junk = files["junk"] if DCMTK_STORESCU else files["junk"][:2]  # the third goes with dcmtk's storescu
    sent = {d.SOPInstanceUID for d in good} | {pydicom.dcmread(p).SOPInstanceUID for p in sent_junk} | {bad_uid}
    assert sent <= received  # every received instance is in the journal (the aborted one too)
    preds = {r["sop_instance_uid"]: r for r in read_csv(out / "predictions.csv")}
    rejs = {r["sop_instance_uid"]: r for r in read_csv(out / "rejected.csv")}
    assert not set(preds) & set(rejs)
    junk = [pydicom.dcmread(p).SOPInstanceUID for p in files["junk"]]
    assert rejs[junk[0]]["reason"] == "NOT_AN_IMAGE_SOP_CLASS"
    assert rejs[bad_uid]["reason"] == "UNREADABLE"
    assert rejs["1.2.826.0.1.3680043.8.498.998"]["reason"] in ("DECODE_FAILED", "UNREADABLE")
    assert rejs[junk[1]]["reason"] == "LATERAL_VIEW"  # stored before its association was aborted
    if DCMTK_STORESCU:
        assert rejs[junk[2]]["reason"] == "CONSTANT_IMAGE"
        good.append(pydicom.dcmread(REPO / "tests/data/siim_cr_chest_jpeg_baseline.dcm"))
    assert set(preds) == {d.SOPInstanceUID for d in good}
    from cxr_cad.pacs.sr import read_sr

    objects = {r["source_sop_instance_uid"]: r for r in read_csv(out / "dicom" / "objects.csv")}
    for sop, row in preds.items():
        found = read_sr(pydicom.dcmread(out / "dicom" / objects[sop]["sr_file"]))
        assert found.probability == float(row["probability"]) and found.source_sop_instance_uid == sop
        assert (out / "dicom" / objects[sop]["sc_file"]).exists()
    assert "ZZSECRET" not in (stdout + stderr).upper()


@pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))
def test_listen_forwards_srs_to_a_pacs_with_c_store(bundle_path, tmp_path, monkeypatch):
    orthanc = start_orthanc(tmp_path / "orthanc")
    try:
        files = write_cohort(tmp_path / "src", n=2)
        proc, port = start_listener(
            bundle_path, tmp_path / "node", "--forward", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
        )
        try:
            assert send(port, [pydicom.dcmread(p) for p in files["images"]]) == [0, 0]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(orthanc.rest("/instances")) < 2:
                time.sleep(0.3)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        objects = read_csv(tmp_path / "node" / "dicom" / "objects.csv")
        assert [o["stow"] for o in objects] == ["forwarded", "forwarded"]
        in_pacs = {
            orthanc.rest(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.rest("/instances")
        }
        assert {o["sr_sop_instance_uid"] for o in objects} <= in_pacs
    finally:
        orthanc.stop()

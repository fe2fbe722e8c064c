"""cxr_cad.manifest.scan: every file accounted for, symlink loops, duplicates, patient ids, parallel == serial."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from cxr_cad.config.accept import AcceptPolicy
from cxr_cad.errors import ConfigError, Reason, UsageError
from cxr_cad.manifest.patients import PATIENT_PATTERNS, patient_id_from_path, resolve_patient_pattern
from cxr_cad.manifest.scan import DEFAULT_PATIENT_ID_PATTERN, iter_files, scan_sources

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
PATIENT_NAME = "DOE^JANE"


def write_dicom(
    path: Path,
    *,
    patient_id="PAT001",
    modality="CR",
    view="PA",
    photometric="MONOCHROME2",
    frames=1,
    pixels=True,
    sop_class=CR_STORAGE,
    compress=False,
    study_uid=None,
    sop_uid=None,
    size=32,
    constant=False,
    seed=0,
) -> Path:
    """A small synthetic DICOM file (16-bit, 12 bits stored) with PatientName DOE^JANE."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.PatientName = PATIENT_NAME
    ds.PatientID = patient_id
    ds.PatientSex = "F"
    ds.PatientAge = "034Y"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.ViewPosition = view
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = "ACME"
    if pixels:
        rng = np.random.default_rng(seed)
        arr = (
            np.full((frames, size, size), 1000, np.uint16)
            if constant
            else rng.integers(0, 4096, (frames, size, size), dtype=np.uint16)
        )
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = (arr[0] if frames == 1 else arr).tobytes()
        if compress:
            ds.compress(RLELossless)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, seed=0, size=32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


def make_mixed_folder(root: Path) -> dict[str, str | None]:
    """Write a folder of good and bad inputs; return {relative path: expected reason or None (accepted)}."""
    expected: dict[str, str | None] = {}

    def add(rel, reason):
        expected[rel] = reason

    write_dicom(root / "ok_mono2.dcm", seed=1)
    add("ok_mono2.dcm", None)
    write_dicom(root / "sub" / "ok_mono1.dcm", photometric="MONOCHROME1", seed=2)
    add("sub/ok_mono1.dcm", None)
    write_dicom(root / "sub" / "rle.dcm", compress=True, seed=3)
    add("sub/rle.dcm", None)
    write_dicom(root / "sub" / "IMG0001", seed=4)
    add("sub/IMG0001", None)  # no extension
    write_dicom(root / "nopatient.dcm", patient_id="", study_uid="1.2.3.4", seed=5)
    add("nopatient.dcm", None)
    shutil.copy(root / "ok_mono2.dcm", root / "zz_copy.dcm")
    add("zz_copy.dcm", Reason.DUPLICATE_SOP_INSTANCE)
    (root / "notes.txt").write_text("not an image\n" * 20)
    add("notes.txt", Reason.NOT_DICOM)
    (root / "empty.dcm").write_bytes(b"")
    add("empty.dcm", Reason.EMPTY_FILE)
    good = write_dicom(root / "tmp_full.dcm", seed=6).read_bytes()
    (root / "tmp_full.dcm").unlink()
    (root / "truncated.dcm").write_bytes(good[:300])
    add("truncated.dcm", Reason.UNREADABLE)
    write_dicom(root / "sr.dcm", pixels=False, sop_class=BASIC_TEXT_SR)
    add("sr.dcm", Reason.NOT_AN_IMAGE_SOP_CLASS)
    write_dicom(root / "nopix.dcm", pixels=False)
    add("nopix.dcm", Reason.NO_PIXEL_DATA)
    write_dicom(root / "multi.dcm", frames=3)
    add("multi.dcm", Reason.MULTI_FRAME)
    write_dicom(root / "lateral.dcm", view="LL")
    add("lateral.dcm", Reason.LATERAL_VIEW)
    write_dicom(root / "ct.dcm", modality="CT")
    add("ct.dcm", Reason.UNSUPPORTED_MODALITY)
    write_png(root / "png" / "IM-0001-0001.png", seed=7)
    add("png/IM-0001-0001.png", None)
    shutil.copy(root / "png" / "IM-0001-0001.png", root / "png" / "IM-0001-0002.png")
    add("png/IM-0001-0002.png", Reason.DUPLICATE_CONTENT)
    Image.fromarray(np.random.default_rng(8).integers(0, 255, (32, 32), dtype=np.uint8)).save(
        root / "png" / "person3_virus_9.jpeg"
    )
    add("png/person3_virus_9.jpeg", None)
    os.symlink("..", root / "sub" / "loop")  # symlink loop: must not recurse forever
    os.symlink("missing-target.dcm", root / "broken_link.dcm")
    add("broken_link.dcm", Reason.UNREADABLE)
    return expected


@pytest.fixture
def mixed(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    return root, make_mixed_folder(root)


def _by_rel(result, root: Path) -> dict[str, str | None]:
    got = {os.path.relpath(p, root): None for p in result.accepted["path"]}
    for p, reason in zip(result.rejected["path"], result.rejected["reason"]):
        rel = os.path.relpath(p, root)
        assert rel not in got, f"{rel} both accepted and rejected"
        got[rel] = reason
    return got


def test_mixed_folder_every_file_accounted_for(mixed):
    root, expected = mixed
    result = scan_sources([root], workers=1)
    got = _by_rel(result, root)
    # a header cut mid-element: pydicom may stop quietly before the pixels (NO_PIXEL_DATA) or fail
    assert got.pop("truncated.dcm") in (Reason.UNREADABLE.value, Reason.NO_PIXEL_DATA.value)
    assert got == {k: (v.value if v else None) for k, v in expected.items() if k != "truncated.dcm"}
    assert result.n_files == len(expected) == len(result.accepted) + len(result.rejected)
    assert result.skipped_dirs and result.skipped_dirs[0].endswith("loop")
    acc = result.accepted.set_index(result.accepted["path"].map(lambda p: os.path.relpath(p, root)))
    assert acc.loc["sub/ok_mono1.dcm", "photometric_interpretation"] == "MONOCHROME1"
    assert acc.loc["sub/rle.dcm", "transfer_syntax"] == RLELossless
    assert acc.loc["ok_mono2.dcm", "patient_id"] == "PAT001"
    assert acc.loc["ok_mono2.dcm", "patient_age_years"] == 34.0
    assert acc.loc["ok_mono2.dcm", "rows"] == 32
    assert acc.loc["nopatient.dcm", "patient_id"] == "study:1.2.3.4"
    png = acc.loc["png/IM-0001-0001.png"]
    assert png["patient_id"] == "IM-0001" and png["sop_instance_uid"] == "sha256:" + png["sha256"]
    assert acc.loc["png/person3_virus_9.jpeg", "format"] == "jpeg"
    assert result.patient_id_rule["from_pattern"] == 2 and result.patient_id_rule["from_study_uid"] == 1
    detail = result.rejected.set_index("reason").loc[Reason.DUPLICATE_SOP_INSTANCE.value, "detail"]
    assert "ok_mono2.dcm" in detail and "byte-identical" in detail
    assert not result.accepted.apply(lambda col: col.astype(str).str.contains("DOE")).any().any()


def test_parallel_matches_serial(mixed):
    root, _ = mixed
    serial = scan_sources([root], workers=1)
    parallel = scan_sources([root], workers=2)
    assert parallel.workers == 2
    pd.testing.assert_frame_equal(serial.accepted, parallel.accepted)
    pd.testing.assert_frame_equal(serial.rejected, parallel.rejected)


def test_verify_pixels_finds_constant_and_truncated_pixels(tmp_path):
    write_dicom(tmp_path / "const.dcm", constant=True)
    write_dicom(tmp_path / "full.dcm", seed=1)
    data = write_dicom(tmp_path / "other" / "x.dcm", seed=2).read_bytes()
    shutil.rmtree(tmp_path / "other")
    (tmp_path / "cut_pixels.dcm").write_bytes(data[:-700])  # header intact, pixel data short
    header_only = scan_sources([tmp_path], workers=1)
    assert len(header_only.accepted) == 3
    verified = scan_sources([tmp_path], workers=1, verify_pixels=True)
    reasons = dict(zip(verified.rejected["path"].map(os.path.basename), verified.rejected["reason"]))
    assert reasons == {"const.dcm": "CONSTANT_IMAGE", "cut_pixels.dcm": "DECODE_FAILED"}


def test_policy_options(mixed):
    root, _ = mixed
    result = scan_sources([root], workers=1, policy=AcceptPolicy(modalities=(), reject_lateral=False))
    accepted = set(result.accepted["path"].map(os.path.basename))
    assert {"ct.dcm", "lateral.dcm"} <= accepted


def test_iter_files_sorted_unique_and_exclude(mixed, tmp_path):
    root, expected = mixed
    files = list(iter_files([root, root / "sub", root / "ok_mono2.dcm"], exclude=[root / "png"]))
    rels = [os.path.relpath(f, root) for f in files]
    assert rels == sorted(rels) and len(rels) == len(set(rels))
    assert all(f.is_absolute() for f in files)
    assert not [r for r in rels if r.startswith("png")]
    assert set(rels) == {k for k in expected if not k.startswith("png")}
    with pytest.raises(UsageError, match="not found"):
        list(iter_files([tmp_path / "nope"]))


def test_two_links_to_one_folder_scanned_once(tmp_path):
    data = tmp_path / "data"
    write_png(data / "a.png")
    os.symlink(data, tmp_path / "link")
    result = scan_sources([tmp_path], workers=1)
    assert result.n_files == 1 and len(result.accepted) == 1


@pytest.mark.parametrize(
    "name,pid,matched",
    [
        ("IM-0115-0001.jpeg", "IM-0115", True),
        ("IM-0429-0001-0002.jpeg", "IM-0429", True),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427", True),
        ("person1000_bacteria_2931.jpeg", "person1000", True),
        ("person1_virus_6.jpeg", "person1", True),
        ("person1_virus_6_1.jpeg", "person1", True),
        ("scan_77.png", "scan_77", False),
        ("IM-0115.jpeg", "IM-0115", True),
    ],
)
def test_kermany_patient_id_pattern(name, pid, matched):
    got = patient_id_from_path(f"/data/NORMAL/{name}", PATIENT_PATTERNS["kermany"])
    assert got == (pid if matched else None)


def test_custom_patient_id_pattern(tmp_path):
    write_png(tmp_path / "site1_pat42_img3.png", seed=1)
    write_png(tmp_path / "site1_pat42_img4.png", seed=2)
    result = scan_sources([tmp_path], workers=1, patient_id_pattern=r"_(pat\d+)_")
    assert result.accepted["patient_id"].tolist() == ["pat42", "pat42"]
    assert result.patient_id_rule["pattern"] == r"_(pat\d+)_" and not result.patient_id_rule["default_pattern"]
    assert result.patient_id_rule["chosen"] == "given" and result.patient_id_rule["warning"] is None
    with pytest.raises(ConfigError, match="not a valid regular expression"):  # a bad setting (exit 2)
        scan_sources([tmp_path], patient_id_pattern="(")
    with pytest.raises(ConfigError, match="no capture group"):
        resolve_patient_pattern("P")
    assert DEFAULT_PATIENT_ID_PATTERN == PATIENT_PATTERNS["kermany"].regex


def test_unexpected_error_becomes_internal_error_row(tmp_path, monkeypatch):
    import cxr_cad.io as io_pkg

    write_png(tmp_path / "a.png", seed=1)
    write_png(tmp_path / "b.png", seed=2)
    real = io_pkg.read_header

    def flaky(path, *, policy):
        if str(path).endswith("b.png"):
            raise ValueError("boom")
        return real(path, policy=policy)

    monkeypatch.setattr(io_pkg, "read_header", flaky)
    result = scan_sources([tmp_path], workers=1)
    assert len(result.accepted) == 1
    row = result.rejected.iloc[0]
    assert row["reason"] == "INTERNAL_ERROR" and "ValueError: boom" in row["detail"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this OS")
def test_named_pipe_is_rejected_without_opening(tmp_path):
    os.mkfifo(tmp_path / "pipe.dcm")  # opening it would block forever
    write_png(tmp_path / "a.png")
    result = scan_sources([tmp_path], workers=1)
    assert result.rejected[["reason"]].to_dict("list") == {"reason": ["UNREADABLE"]}
    assert "not a regular file" in result.rejected["detail"].iloc[0]
    assert len(result.accepted) == 1


def test_exclude_reached_through_a_symlink(tmp_path):
    write_png(tmp_path / "src" / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.csv").write_text("path\n")
    os.symlink(tmp_path / "out", tmp_path / "src" / "link_to_out")
    result = scan_sources([tmp_path / "src"], workers=1, exclude=[tmp_path / "out"])
    assert result.n_files == 1 and len(result.accepted) == 1


def test_non_utf8_file_name_is_rejected_not_crashing(tmp_path):
    write_png(tmp_path / "a.png")
    try:
        with open(os.path.join(os.fsencode(tmp_path), b"bad\xff.png"), "wb") as fh:
            fh.write(b"x")
    except OSError:
        pytest.skip("file system refuses non-UTF-8 names")
    result = scan_sources([tmp_path], workers=1)
    assert result.n_files == 2 and len(result.accepted) == 1
    row = result.rejected.iloc[0]
    assert row["reason"] == "UNREADABLE" and "UTF-8" in row["detail"] and row["path"].endswith("bad\\xff.png")
    result.rejected.to_csv(tmp_path / "r.csv")  # every path can be written


@pytest.mark.slow  # starts a forkserver (2-5 s); under pytest-xdist the parallel test takes this path anyway
def test_pool_without_fork_when_threads_run(mixed):
    """With another thread alive the pool must not fork this process (forkserver/spawn instead)."""
    import threading

    from cxr_cad.manifest import scan as scan_mod

    root, _ = mixed
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="busy", daemon=True)
    t.start()
    try:
        assert scan_mod._pool_context().get_start_method() in ("forkserver", "spawn")
        result = scan_sources([root], workers=2)
    finally:
        stop.set()
        t.join()
    pd.testing.assert_frame_equal(result.accepted, scan_sources([root], workers=1).accepted)


def test_worker_crash_is_an_internal_error_row_not_a_stop(tmp_path, monkeypatch):
    import multiprocessing

    import cxr_cad.io as io_pkg
    from cxr_cad.manifest import scan as scan_mod

    for i in range(12):
        write_png(tmp_path / f"f{i:02d}.png", seed=i)
    real = io_pkg.read_header

    def crashing(path, *, policy):
        if str(path).endswith("f05.png"):
            os._exit(3)  # a segfaulting codec, as the pool sees it
        return real(path, policy=policy)

    monkeypatch.setattr(io_pkg, "read_header", crashing)  # fork: the workers inherit the patch
    monkeypatch.setattr(scan_mod, "_pool_context", lambda: multiprocessing.get_context("fork"))
    result = scan_sources([tmp_path], workers=2)
    assert result.n_files == 12 and len(result.accepted) == 11
    row = result.rejected.iloc[0]
    assert row["path"].endswith("f05.png") and row["reason"] == "INTERNAL_ERROR" and "died" in row["detail"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is the Linux default here")
def test_tqdm_monitor_thread_does_not_stop_fork(monkeypatch):
    """tqdm's monitor thread (found through tqdm's public ``monitor`` attribute) is the one
    thread that may run while the pool forks; any other thread means forkserver/spawn."""
    import io
    import threading

    from tqdm.auto import tqdm

    from cxr_cad.manifest import scan as scan_mod

    bar = tqdm(total=2, file=io.StringIO())  # starts tqdm's monitor thread (monitor_interval > 0)
    try:
        monitor = tqdm.monitor
        assert isinstance(monitor, threading.Thread) and monitor in scan_mod._tqdm_monitors()
        monkeypatch.setattr(threading, "enumerate", lambda: [threading.main_thread(), monitor])
        assert scan_mod._pool_context().get_start_method() == "fork"
        other = threading.Thread(target=lambda: None)
        monkeypatch.setattr(threading, "enumerate", lambda: [threading.main_thread(), monitor, other])
        assert scan_mod._pool_context().get_start_method() in ("forkserver", "spawn")
    finally:
        bar.close()

"""Class 4: FIFOs and other non-regular files are never opened for content, and always accounted for."""

from __future__ import annotations

import csv
import os
import socket

import pytest

from cxr_cad.core.files import NotRegularFileError, open_regular
from cxr_cad.errors import ConfigError, Reason, RejectedFile
from cxr_cad.io import read_header, read_image, sniff_format
from cxr_cad.manifest.scan import iter_files, scan_sources
from cxr_cad.workflow.schema import load_workflow
from tests.hostile import inputs as H
from tests.hostile.conftest import deadline
from tests.hostile.runner import run_cli

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this OS")


def test_readers_reject_a_fifo_without_blocking(tmp_path):
    fifo = H.make_fifo(tmp_path / "pipe.dcm")
    for fn in (sniff_format, read_header, read_image):
        with deadline(10), pytest.raises(RejectedFile) as info:
            fn(fifo)
        assert info.value.reason == Reason.UNREADABLE
        assert "FIFO" in info.value.detail


def test_open_regular_refuses_every_non_regular_kind(tmp_path):
    with deadline(10):
        with pytest.raises(NotRegularFileError, match="FIFO"):
            open_regular(H.make_fifo(tmp_path / "f"))
        with pytest.raises(NotRegularFileError, match="folder"):
            open_regular(tmp_path)
        with pytest.raises(NotRegularFileError, match="character device"):
            open_regular("/dev/zero")
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(tmp_path / "s"))
            with pytest.raises(NotRegularFileError, match="socket"):
                open_regular(tmp_path / "s")
        finally:
            sock.close()
    (tmp_path / "ok").write_bytes(b"x")
    with open_regular(tmp_path / "ok") as fh:
        assert fh.read() == b"x"


def test_iter_files_lists_fifos_so_batches_account_for_them(tmp_path):
    H.write_pngs(tmp_path, n=1)
    H.make_fifo(tmp_path / "pipe.png")
    names = [p.name for p in iter_files([tmp_path])]
    assert names == ["P0000-0.png", "pipe.png"]


def test_ingest_rejects_a_fifo(tmp_path):
    H.write_pngs(tmp_path / "src", n=1)
    H.make_fifo(tmp_path / "src" / "pipe.png")
    with deadline(60):
        result = scan_sources([tmp_path / "src"], workers=1)
    assert len(result.accepted) == 1
    assert result.rejected["reason"].tolist() == ["UNREADABLE"]


def test_workflow_fifo_is_a_config_error(tmp_path):
    with deadline(10), pytest.raises(ConfigError, match="FIFO"):
        load_workflow(H.make_fifo(tmp_path / "wf.yaml"))


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_predict_accounts_for_fifo_source_folder_entry_and_manifest_row(tmp_path, bundle):
    folder = tmp_path / "folder"
    H.write_pngs(folder, n=2)
    in_folder = H.make_fifo(folder / "pipe.png")
    lonely = H.make_fifo(tmp_path / "lonely.dcm")
    listed = H.make_fifo(tmp_path / "listed.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label,sop_instance_uid,patient_id\n{listed},NORMAL,1.2.3,P1\n")
    o = run_cli(
        ["predict", folder, lonely, manifest, "--model", bundle, "--out", tmp_path / "out", "--workers", "1"],
        timeout=600,
    )
    assert o.rc == 0, o.stderr
    preds = {r["path"] for r in _rows(tmp_path / "out" / "predictions.csv")}
    rejected = {r["path"]: r for r in _rows(tmp_path / "out" / "rejected.csv")}
    assert len(preds) == 2
    assert set(rejected) == {str(in_folder), str(lonely), str(listed)}
    assert all(r["reason"] == "UNREADABLE" and "FIFO" in r["detail"] for r in rejected.values())
    assert not preds & set(rejected)


def test_fifo_as_manifest_or_labels_file_is_refused_without_blocking(tmp_path):
    from cxr_cad.errors import ManifestError
    from cxr_cad.manifest import read_labels, read_manifest

    fifo = H.make_fifo(tmp_path / "m.csv")
    with deadline(10):
        with pytest.raises(ManifestError, match="FIFO"):
            read_manifest(fifo)
        with pytest.raises(ManifestError, match="FIFO"):
            read_labels(fifo)
        with pytest.raises(ManifestError, match="file not found"):
            read_manifest(tmp_path / "missing.csv")

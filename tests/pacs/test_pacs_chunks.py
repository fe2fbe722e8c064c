"""Defect 11 of issue 23: a remote run keeps at most two download chunks on disk (docs/pacs.md).

A fake source "downloads" instantly and the scorer is slow, so the background fetcher runs as
far ahead as it is allowed; the scorer counts the ``chunk-*`` folders in the spool each time it
is called (and once more after giving the fetcher time to run ahead). With the old one-slot
queue it saw three (the chunk being scored, one waiting in the queue, one being fetched).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cxr_cad.pacs import source
from cxr_cad.pacs.journal import Journal
from cxr_cad.pacs.query import RemoteInstance


class _FastSource:
    """A source whose fetch writes one small file per instance at once and never fails."""

    kind = "DICOMweb"
    base = "http://archive.invalid/dicom-web"

    def __init__(self) -> None:
        self.fetched: list[str] = []
        self.lock = threading.Lock()

    def list(self, query):  # pragma: no cover - not used by stream_chunks
        raise AssertionError

    def fetch(self, instances, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for inst in instances:
            path = folder / f"{inst.sop_instance_uid}.dcm"
            path.write_bytes(b"DICM" * 64)
            files[inst.sop_instance_uid] = path
        with self.lock:
            self.fetched += [i.sop_instance_uid for i in instances]
        return files, {}

    def address(self, inst: RemoteInstance) -> str:
        return f"dicomweb:{self.base}/studies/{inst.study_instance_uid}/instances/{inst.sop_instance_uid}"

    def close(self) -> None:
        pass


def _chunks_on_disk(spool: Path) -> int:
    return sum(1 for p in spool.glob("chunk-*") if p.is_dir())


def test_at_most_two_chunks_on_disk_while_scoring(tmp_path):
    instances = [RemoteInstance("1.2", "1.2.3", f"1.2.3.{n}") for n in range(1, 8)]
    chunks = source.pending_chunks(instances, set(), 1)
    spool = tmp_path / ".dicomweb" / "spool"
    seen: list[int] = []

    def score(folder: Path, run_dir: Path):
        seen.append(_chunks_on_disk(spool))
        time.sleep(0.4)  # the fetcher runs ahead as far as it may
        seen.append(_chunks_on_disk(spool))
        preds = {
            p.stem: {"sop_instance_uid": p.stem, "probability": "0.5", "decision": "0"} for p in folder.glob("*.dcm")
        }
        return preds, {}

    src = _FastSource()
    (tmp_path / ".dicomweb").mkdir()
    journal = Journal(tmp_path / ".dicomweb" / "journal.jsonl")
    try:
        n = source.stream_chunks(src, instances, chunks, journal, spool, score)
    finally:
        journal.close()
    assert n == len(instances) and sorted(src.fetched) == sorted(i.sop_instance_uid for i in instances)
    assert max(seen) == source.CHUNKS_ON_DISK == 2, seen  # the next chunk was fetched ahead, but only one
    assert set(journal.records) == {i.sop_instance_uid for i in instances}
    assert not spool.exists()


def test_a_failing_scorer_stops_the_fetcher(tmp_path):
    """The fetcher waiting for a slot gives up when the consumer fails (no thread left behind)."""
    instances = [RemoteInstance("1.2", "1.2.3", f"1.2.3.{n}") for n in range(1, 6)]
    chunks = source.pending_chunks(instances, set(), 1)
    src = _FastSource()

    def score(folder: Path, run_dir: Path):
        time.sleep(0.2)
        raise RuntimeError("engine failed")

    journal = Journal(tmp_path / "journal.jsonl")
    before = threading.active_count()
    try:
        try:
            source.stream_chunks(src, instances, chunks, journal, tmp_path / "spool", score)
        except RuntimeError as exc:
            assert "engine failed" in str(exc)
        else:  # pragma: no cover
            raise AssertionError("the scorer's error was swallowed")
    finally:
        journal.close()
    deadline = time.monotonic() + 3
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before
    assert len(src.fetched) <= 2  # it never ran ahead of the two slots

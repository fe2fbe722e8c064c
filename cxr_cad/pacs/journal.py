"""An append-only JSON-lines journal keyed by SOP Instance UID (DICOMweb runs and the C-STORE node).

Each :meth:`Journal.append` is one ``write`` + ``fsync``; a torn last line left by a
``kill -9`` mid-write is cut off when the journal is opened again. ``records`` keeps the last
record of each SOP Instance UID (the last word on an instance wins). Safe to append from
several threads. Every record carries ``time``, the UTC time it was appended (ISO 8601, ``Z``),
unless the caller set one.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from cxr_cad.pacs.audit import utc_now


class Journal:
    """Append-only JSON lines with fsync; a torn last line (kill -9 mid-write) is cut on open."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        if path.exists():
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines():
                rec = json.loads(line)
                self.records[rec["sop_instance_uid"]] = rec  # the last word on an instance wins
            if end < len(data):
                with open(path, "r+b") as fh:
                    fh.truncate(end)
        self._fh = open(path, "ab")
        self._lock = threading.Lock()

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        now = utc_now()
        for rec in records:
            rec.setdefault("time", now)
        payload = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        with self._lock:
            self._fh.write(payload)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            for rec in records:
                self.records[rec["sop_instance_uid"]] = rec

    def close(self) -> None:
        self._fh.close()

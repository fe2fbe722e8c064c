"""An audit trail of the DICOM network side, one JSON line per event, in the spirit of IHE ATNA
(PS3.15 A.5 / RFC 3881: who, what, when, where, outcome), and the UTC timestamps every journal
and log line carries.

One record per association, query, retrieve, store and result sent::

    {"time": "2025-01-31T09:14:03.123456Z", "event": "store", "outcome": "success",
     "calling_ae": "MODALITY1", "called_ae": "CXRCAD", "peer": "10.0.0.7:50412",
     "sop_instance_uid": "1.2...", "sop_class_uid": "1.2...", "study_instance_uid": "1.2...",
     "status": "0x0000"}

``event``: ``association`` (accepted / rejected with the A-ASSOCIATE-RJ reason), ``query``
(C-FIND or QIDO-RS: the source, the filter *keywords* and the number of matches, never the
values, which may be patient identifiers), ``retrieve`` (C-GET, C-MOVE or WADO-RS of one chunk:
counts and the study UIDs), ``store`` (one C-STORE received), ``result`` (an SR/SC sent on with
STOW-RS or C-STORE). ``outcome`` is ``success``, ``failure`` or ``refused`` (ATNA's EventOutcome
0, 8 and 4). UIDs identify objects; patient names and IDs are never written. Each append is one
``write`` + ``fsync``; the file is safe to append to from several threads.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
from pathlib import Path

__all__ = ["AUDIT_FILE", "AuditLog", "utc_now"]

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"
#: Fields never written to the audit trail, whatever a caller passes (patient identity).
_FORBIDDEN = frozenset({"patient_id", "patient_name", "PatientID", "PatientName", "patient_birth_date"})


def utc_now() -> str:
    """The current time as ISO 8601 in UTC with microseconds and a ``Z``, e.g. ``2025-01-31T09:14:03.123456Z``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditLog:
    """Append-only JSON lines (``time``, ``event``, ``outcome`` first). ``AuditLog(None)`` records nothing."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "ab")

    def record(self, event: str, outcome: str, **fields) -> None:
        """Append one record; a failed write is logged, never raised (auditing must not stop a store)."""
        if self._fh is None:
            return
        rec = {"time": utc_now(), "event": event, "outcome": outcome}
        rec.update((k, v) for k, v in fields.items() if k not in _FORBIDDEN and v not in (None, ""))
        line = (json.dumps(rec, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            try:
                self._fh.write(line)
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError as exc:
                log.error("audit log %s: cannot append (%s)", self.path, exc.strerror or exc)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

"""A remote archive as a source: list instances (QIDO-RS or C-FIND), fetch them in chunks
(WADO-RS, C-GET or C-MOVE) and hand each chunk to a callback; every listed instance accounted
for once, resumable by SOP UID.

A source is anything with the :class:`RemoteSource` shape: :class:`DicomwebSource` here, and
:class:`cxr_cad.pacs.dimse.DimseSource` for DIMSE. The machinery below is the same for both.

:func:`stream_chunks` cuts the sorted listing into chunks of ``chunk_size`` and, for each chunk,
fetches it into a spool folder (a background thread fetches the next chunk while the callback
handles this one), calls ``score(folder, run_dir)``, writes its DICOM objects (an optional
sink), appends the chunk's rows to a journal (fsync) and deletes the spool. At most two chunks
are on disk at once (:data:`CHUNKS_ON_DISK`: the fetcher takes a slot before it starts a chunk
and the consumer gives it back once the chunk's folder is deleted); the archive is never copied
whole. What scores a chunk is the caller's
business (:func:`cxr_cad.api.predict_dicomweb` runs the predict engine); this package imports
no engine code.

Accounting
    Every listed instance ends in ``predictions.csv`` or ``rejected.csv`` exactly once
    (:func:`write_tables`). ``path`` is the instance's address (``dicomweb:<base>/studies/...``
    or ``dimse://AET@HOST:PORT/studies/...``); ``rejected.csv`` has a ``sop_instance_uid``
    column too. Fetch failures (after the retries) are rejected with ``NETWORK_ERROR``,
    ``FETCH_FAILED`` or ``NOT_FOUND_IN_ARCHIVE``; everything else keeps the scorer's reason codes.
Resume
    ``OUT/.dicomweb/journal.jsonl`` (``OUT/.dimse/`` for DIMSE) holds one JSON line per finished
    instance, with its UTC ``time``. A rerun (after ``kill -9``, say) skips every SOP Instance
    UID in it, except those rejected for a network reason, which are tried again. Chunks are
    cut from the full sorted list, so a resumed run scores the same instances in the same
    batches and gets the same numbers.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import queue
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import requests

from cxr_cad.core import atomic
from cxr_cad.core.columns import PREDICTION_COLUMNS
from cxr_cad.core.columns import REJECTED_COLUMNS as _REJECTED
from cxr_cad.errors import CxrCadError, UsageError
from cxr_cad.pacs.audit import AuditLog
from cxr_cad.pacs.journal import Journal
from cxr_cad.pacs.query import RemoteInstance, fetch_many, list_instances

if TYPE_CHECKING:
    from dicomweb_client import DICOMwebClient

log = logging.getLogger(__name__)

STATE_DIR = ".dicomweb"
#: Journal fields that are not table columns (when, who).
NOT_COLUMNS = ("kind", "event", "calling_ae", "called_ae", "peer", "file", "time")
#: rejected.csv of a DICOMweb run: the shared columns plus the instance's UID.
REJECTED_COLUMNS = [*_REJECTED, "sop_instance_uid"]
#: Chunks on disk at once: the one being scored and the one being fetched (or waiting to be scored).
CHUNKS_ON_DISK = 2

#: ``score(spool folder, run folder) -> ({SOP UID: prediction row}, {SOP UID: rejected row})``.
ScoreChunk = Callable[[Path, Path], tuple[dict[str, dict], dict[str, dict]]]


class RemoteSource(Protocol):
    """An archive the run reads from (:class:`DicomwebSource`, :class:`cxr_cad.pacs.dimse.DimseSource`).

    ``base`` names it in run state and addresses; ``kind`` is ``"DICOMweb"`` or ``"DIMSE"``.
    ``list`` raises CxrCadError when the archive cannot be queried; ``fetch`` never raises for
    one instance: ``({SOP UID: file}, {SOP UID: (reason code, detail)})``.
    """

    base: str
    kind: str

    def list(self, query: dict[str, str]) -> list[RemoteInstance]: ...

    def fetch(
        self, instances: Sequence[RemoteInstance], folder: Path
    ) -> tuple[dict[str, Path], dict[str, tuple[str, str]]]: ...

    def address(self, inst: RemoteInstance) -> str: ...

    def close(self) -> None: ...


class DicomwebSource:
    """A DICOMweb archive: QIDO-RS lists, WADO-RS fetches (``threads`` requests at a time)."""

    kind = "DICOMweb"

    def __init__(self, client: DICOMwebClient, base: str, *, threads: int = 4, audit: AuditLog | None = None):
        self.client, self.base, self.threads = client, base, threads
        self.audit = audit or AuditLog(None)

    def list(self, query: dict[str, str]) -> list[RemoteInstance]:
        """QIDO-RS: the instances to score; CxrCadError when the archive cannot be queried."""
        try:
            return list_instances(self.client, query)
        except requests.RequestException as exc:
            raise CxrCadError(
                f"QIDO-RS query of {self.base} failed ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); check the URL, the "
                "credentials (CXR_CAD_DICOMWEB_USER/PASSWORD/TOKEN or ~/.netrc) and that the "
                "archive is up"
            ) from exc

    def fetch(self, instances, folder):
        files, failed = fetch_many(self.client, instances, folder, threads=self.threads)
        self.audit.record(
            "retrieve",
            "success" if not failed else "failure",
            protocol="WADO-RS",
            source=self.base,
            n_requested=len(instances),
            n_received=len(files),
            study_instance_uids=sorted({i.study_instance_uid for i in instances}),
        )
        return files, failed

    def address(self, inst: RemoteInstance) -> str:
        return inst.url(self.base)

    def close(self) -> None:
        pass


class ObjectSink(Protocol):
    """Where the DICOM objects of scored rows go (:class:`cxr_cad.pacs.output.DicomOutput`)."""

    def write(self, items) -> None: ...


@dataclass
class DicomwebResult:
    """What a DICOMweb run did."""

    out_dir: Path
    n_listed: int
    n_predicted: int
    n_rejected: int
    n_done_before: int
    n_processed: int
    seconds: float
    reasons: dict[str, int] = field(default_factory=dict)
    dicom_out: str = ""

    @property
    def images_per_s(self) -> float:
        return self.n_processed / self.seconds if self.seconds > 0 else 0.0

    def summary_line(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items()))
        line = (
            f"{self.n_listed} instance(s) listed: {self.n_predicted} scored, {self.n_rejected} rejected"
            f"{' (' + reasons + ')' if reasons else ''}"
            f"{f', {self.n_done_before} from an earlier run' if self.n_done_before else ''}; "
            f"{self.n_processed} in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s) -> "
            f"{self.out_dir / 'predictions.csv'}, {self.out_dir / 'rejected.csv'}"
        )
        return line + (f"; DICOM: {self.dicom_out}" if self.dicom_out else "")


def check_state(state_dir: Path, state: dict, overwrite: bool) -> None:
    """Record what the run folder is for (``state.json``); UsageError when it holds another run."""
    if overwrite:
        shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "state.json"
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(state) if old.get(k) != state.get(k))
        if changed:
            raise UsageError(
                f"{state_dir.parent} holds a DICOMweb run with a different {', '.join(changed)}; "
                "use a new --out, or --overwrite to discard it"
            )
    else:
        atomic.atomic_write_text(path, json.dumps(state, indent=2, sort_keys=True))


def _fetcher(
    src: RemoteSource,
    chunks: list[tuple[int, list[RemoteInstance]]],
    spool_root: Path,
    out_q: queue.Queue,
    stop: threading.Event,
    slots: threading.Semaphore,
) -> None:
    """Fetch each chunk once a slot is free (``slots``: chunks allowed on disk at once; the
    consumer releases one after deleting a chunk's folder); gives up when ``stop`` is set."""
    try:
        for k, chunk in chunks:
            while not slots.acquire(timeout=0.1):
                if stop.is_set():
                    return
            if stop.is_set():
                break
            folder = spool_root / f"chunk-{k:06d}"
            shutil.rmtree(folder, ignore_errors=True)
            files, failed = src.fetch(chunk, folder)
            out_q.put((k, chunk, folder, files, failed))
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
        out_q.put(exc)
        return
    out_q.put(None)


def list_remote(src: RemoteSource, query: dict, audit: AuditLog | None = None) -> list[RemoteInstance]:
    """The instances to score (QIDO-RS or C-FIND), audited by filter keywords (never their values)."""
    audit = audit or AuditLog(None)
    try:
        found = src.list(query)
    except CxrCadError as exc:
        audit.record("query", "failure", protocol=src.kind, source=src.base, keys=sorted(query), detail=str(exc)[:300])
        raise
    audit.record("query", "success", protocol=src.kind, source=src.base, keys=sorted(query), n_matches=len(found))
    return found


def pending_chunks(
    instances: Sequence[RemoteInstance], done: set[str], chunk_size: int
) -> list[tuple[int, list[RemoteInstance]]]:
    """``(chunk number, instances not done yet)`` for every chunk of the listing with work left."""
    chunks = [
        (k, [i for i in instances[s : s + chunk_size] if i.sop_instance_uid not in done])
        for k, s in enumerate(range(0, len(instances), chunk_size))
    ]
    return [(k, c) for k, c in chunks if c]


def stream_chunks(
    src: RemoteSource,
    instances: Sequence[RemoteInstance],
    chunks: list[tuple[int, list[RemoteInstance]]],
    journal: Journal,
    spool: Path,
    score: ScoreChunk,
    *,
    sink: ObjectSink | None = None,
) -> int:
    """Fetch ``chunks`` in a background thread while the previous one is scored by ``score``;
    journal every instance (and hand its row to ``sink``). Returns the number of instances processed."""
    shutil.rmtree(spool, ignore_errors=True)  # what a killed run left behind
    q: queue.Queue = queue.Queue()  # bounded by the slots: at most CHUNKS_ON_DISK items in it
    stop = threading.Event()
    slots = threading.Semaphore(CHUNKS_ON_DISK)
    args = (src, chunks, spool, q, stop, slots)
    threading.Thread(target=_fetcher, args=args, daemon=True).start()
    n_processed = 0
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            k, chunk, folder, files, failed = item
            run_dir = spool / f"run-{k:06d}"
            preds, rejs = score(folder, run_dir) if files else ({}, {})
            records = chunk_records(src, chunk, files, failed, preds, rejs)
            if sink is not None:
                number = {i.sop_instance_uid: n + 1 for n, i in enumerate(instances)}
                sink.write(
                    (r, str(files[r["sop_instance_uid"]]), number[r["sop_instance_uid"]])
                    for r in records
                    if r["kind"] == "prediction"
                )
            journal.append(records)
            n_processed += len(records)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)
            slots.release()  # the fetcher may now start the chunk after next
    finally:
        stop.set()
    shutil.rmtree(spool, ignore_errors=True)
    return n_processed


def chunk_records(src: RemoteSource, chunk, files: dict, failed: dict, preds: dict, rejs: dict) -> list[dict]:
    """One journal record per instance of ``chunk``: a prediction row or a rejected row."""
    records = []
    for inst in chunk:
        sop = inst.sop_instance_uid
        path = src.address(inst)
        if sop in preds:
            row = dict(preds[sop], path=path, kind="prediction", sop_instance_uid=preds[sop]["sop_instance_uid"] or sop)
            row["sop_instance_uid"] = sop  # the archive's UID is the key (the header's is the same)
        elif sop in rejs:
            row = {"path": path, "reason": rejs[sop]["reason"], "detail": rejs[sop]["detail"], "kind": "rejected"}
        elif sop in failed:
            row = {"path": path, "reason": failed[sop][0], "detail": failed[sop][1], "kind": "rejected"}
        else:  # fetched but the scorer did not report it: a bug, never a silent loss
            row = {"path": path, "reason": "INTERNAL_ERROR", "detail": "no result from the engine", "kind": "rejected"}
        row["sop_instance_uid"] = sop
        records.append(row)
    return records


def write_tables(rows: Sequence[dict], predictions_csv: Path, rejected_csv: Path) -> tuple[list[dict], list[dict]]:
    """Write ``predictions_csv`` and ``rejected_csv`` (atomically) from journal records, in order.

    Prediction columns: the shared ones, then any extra column the rows carry. Returns (predictions, rejected).
    """
    preds = [r for r in rows if r["kind"] == "prediction"]
    rejs = [r for r in rows if r["kind"] == "rejected"]
    columns = list(PREDICTION_COLUMNS)
    for r in preds:
        columns += [c for c in r if c not in columns and c not in NOT_COLUMNS]
    for path, cols, table in ((predictions_csv, columns, preds), (rejected_csv, REJECTED_COLUMNS, rejs)):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(table)
        atomic.atomic_write_text(path, buf.getvalue())
    return preds, rejs

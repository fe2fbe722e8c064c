"""Score the instances of a DICOMweb archive: a streaming producer in front of the predict engine.

:func:`predict_dicomweb` lists the instances with QIDO-RS (:mod:`cxr_cad.pacs.query`), cuts
the sorted list into chunks of ``chunk_size``, and for each chunk: fetches it with WADO-RS
into a spool folder (a background thread fetches the next chunk while this one is scored),
scores the folder with :func:`cxr_cad.inference.predict.predict`, writes its DICOM objects
(``--dicom-out``), appends the chunk's rows to a journal (fsync) and deletes the spool. At
most two chunks are on disk at once; the archive is never copied whole.

Accounting
    Every listed instance ends in ``OUT/predictions.csv`` or ``OUT/rejected.csv`` exactly
    once. ``path`` is the instance's WADO-RS address (``dicomweb:<base>/studies/...``);
    ``rejected.csv`` has a ``sop_instance_uid`` column too. Fetch failures (after the
    client's retries) are rejected with ``NETWORK_ERROR``, ``FETCH_FAILED`` or
    ``NOT_FOUND_IN_ARCHIVE``; everything else keeps the engine's reason codes.
Resume
    ``OUT/.dicomweb/journal.jsonl`` holds one JSON line per finished instance. A rerun
    (after ``kill -9``, say) skips every SOP Instance UID in it, except those rejected for a
    network reason, which are tried again. Chunks are cut from the full sorted list, so a
    resumed run scores the same instances in the same batches and gets the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_cad.core import atomic, provenance
from cxr_cad.core.columns import PREDICTION_COLUMNS
from cxr_cad.core.columns import REJECTED_COLUMNS as _REJECTED
from cxr_cad.errors import ConfigError, CxrCadError, UsageError
from cxr_cad.pacs.journal import Journal

if TYPE_CHECKING:
    from dicomweb_client import DICOMwebClient

    from cxr_cad.inference.predict import PredictOptions
    from cxr_cad.pacs.output import DicomOutOptions, DicomOutput
    from cxr_cad.pacs.query import RemoteInstance

log = logging.getLogger(__name__)

STATE_DIR = ".dicomweb"
#: rejected.csv of a DICOMweb run: the shared columns plus the instance's UID.
REJECTED_COLUMNS = [*_REJECTED, "sop_instance_uid"]


@dataclass
class DicomwebResult:
    """What :func:`predict_dicomweb` did."""

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


def _run_identity(base: str, query: dict, model_path: str | os.PathLike[str], threshold: float | None) -> dict:
    """What makes a DICOMweb run folder resumable: the same source, query, model and threshold."""
    model = Path(model_path)
    return {
        "source": base,
        "query": query,
        "model_sha256": provenance.sha256_file(model) if model.is_file() else str(model.resolve()),
        "threshold": threshold,
    }


def _check_state(state_dir: Path, state: dict, overwrite: bool) -> None:
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
    client: DICOMwebClient,
    chunks: list[tuple[int, list[RemoteInstance]]],
    spool_root: Path,
    threads: int,
    out_q: queue.Queue,
    stop: threading.Event,
) -> None:
    from cxr_cad.pacs.query import fetch_many

    try:
        for k, chunk in chunks:
            if stop.is_set():
                break
            folder = spool_root / f"chunk-{k:06d}"
            shutil.rmtree(folder, ignore_errors=True)
            files, failed = fetch_many(client, chunk, folder, threads=threads)
            out_q.put((k, chunk, folder, files, failed))
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
        out_q.put(exc)
        return
    out_q.put(None)


def _score_chunk(
    folder: Path, files: dict, model_path: str | os.PathLike[str], options: PredictOptions, run_dir: Path
) -> tuple[dict, dict]:
    """Run the engine over one spool folder: ({SOP UID: prediction row}, {SOP UID: rejected row})."""
    from cxr_cad.inference.outputs import PREDICTIONS, REJECTED
    from cxr_cad.inference.predict import predict

    if not files:
        return {}, {}
    predict([folder], run_dir, model_path, options.model_copy(update={"overwrite": True}))
    import csv

    def rows(name):
        with open(run_dir / name, newline="", encoding="utf-8") as fh:
            return {Path(r["path"]).stem: r for r in csv.DictReader(fh)}

    return rows(PREDICTIONS), rows(REJECTED)


def _list(client: DICOMwebClient, base: str, query: dict) -> list[RemoteInstance]:
    """QIDO-RS: the instances to score; CxrCadError when the archive cannot be queried."""
    import requests

    from cxr_cad.pacs.query import list_instances

    try:
        return list_instances(client, query)
    except requests.RequestException as exc:
        raise CxrCadError(
            f"QIDO-RS query of {base} failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); check the URL, the "
            "credentials (CXR_CAD_DICOMWEB_USER/PASSWORD/TOKEN or ~/.netrc) and that the "
            "archive is up"
        ) from exc


def _pending_chunks(
    instances: Sequence[RemoteInstance], done: set[str], chunk_size: int
) -> list[tuple[int, list[RemoteInstance]]]:
    """``(chunk number, instances not done yet)`` for every chunk of the listing with work left."""
    chunks = [
        (k, [i for i in instances[s : s + chunk_size] if i.sop_instance_uid not in done])
        for k, s in enumerate(range(0, len(instances), chunk_size))
    ]
    return [(k, c) for k, c in chunks if c]


@dataclass(frozen=True)
class _Scoring:
    model_path: str | os.PathLike[str]
    options: PredictOptions
    fetch_threads: int


def _fetch_and_score(
    client: DICOMwebClient,
    base: str,
    instances: Sequence[RemoteInstance],
    chunks: list[tuple[int, list[RemoteInstance]]],
    journal: Journal,
    writer: DicomOutput | None,
    spool: Path,
    scoring: _Scoring,
) -> int:
    """Fetch ``chunks`` in a background thread while the previous one is scored; journal every
    instance (and write its DICOM objects). Returns the number of instances processed."""
    shutil.rmtree(spool, ignore_errors=True)  # what a killed run left behind
    q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    args = (client, chunks, spool, scoring.fetch_threads, q, stop)
    threading.Thread(target=_fetcher, args=args, daemon=True).start()
    n_processed = 0
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            k, chunk, folder, files, failed = item
            run_dir = spool / f"run-{k:06d}"
            preds, rejs = _score_chunk(folder, files, scoring.model_path, scoring.options, run_dir)
            records = _chunk_records(base, chunk, files, failed, preds, rejs)
            if writer is not None:
                number = {i.sop_instance_uid: n + 1 for n, i in enumerate(instances)}
                writer.write(
                    (r, str(files[r["sop_instance_uid"]]), number[r["sop_instance_uid"]])
                    for r in records
                    if r["kind"] == "prediction"
                )
            journal.append(records)
            n_processed += len(records)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        stop.set()
    shutil.rmtree(spool, ignore_errors=True)
    return n_processed


def predict_dicomweb(
    url: str,
    out_dir: str | os.PathLike,
    model_path: str | os.PathLike,
    options: PredictOptions | None = None,
    *,
    query: dict | None = None,
    chunk_size: int = 128,
    fetch_threads: int = 4,
    dicom_out: DicomOutOptions | None = None,
) -> DicomwebResult:
    """Score every instance of the archive at ``url`` matching ``query`` into ``out_dir`` (see module doc).

    ``options``: :class:`cxr_cad.inference.predict.PredictOptions` (its ``overwrite`` discards an
    earlier run in ``out_dir``). ``dicom_out``: :class:`cxr_cad.pacs.output.DicomOutOptions` or None.
    Raises ConfigError (bad URL/query/chunk size), UsageError (``out_dir`` holds another run), CxrCadError when the
    archive cannot be queried, and what the engine raises for a bad bundle.
    """
    from cxr_cad.inference.outputs import check_writable
    from cxr_cad.inference.predict import PredictOptions
    from cxr_cad.pacs.client import NETWORK_REASONS, make_client, parse_url
    from cxr_cad.pacs.output import DicomOutput

    t0 = time.perf_counter()
    options = options or PredictOptions()
    if chunk_size < 1:
        raise ConfigError(f"chunk size must be >= 1, not {chunk_size}")
    out = Path(out_dir).absolute()
    check_writable(out)
    base = parse_url(url)
    client = make_client(url)
    instances = _list(client, base, query or {})
    state_dir = out / STATE_DIR
    _check_state(state_dir, _run_identity(base, query or {}, model_path, options.threshold), options.overwrite)
    writer = DicomOutput(dicom_out, model_path) if dicom_out is not None else None
    journal = Journal(state_dir / "journal.jsonl")
    done = {s for s, r in journal.records.items() if r.get("reason") not in NETWORK_REASONS}
    n_before = sum(1 for i in instances if i.sop_instance_uid in done)
    chunks = _pending_chunks(instances, done, chunk_size)
    log.info(
        "%d instance(s) listed, %d done earlier, %d chunk(s) of <= %d to fetch and score",
        len(instances),
        n_before,
        len(chunks),
        chunk_size,
    )
    try:
        n_processed = _fetch_and_score(
            client,
            base,
            instances,
            chunks,
            journal,
            writer,
            state_dir / "spool",
            _Scoring(model_path, options, fetch_threads),
        )
    finally:
        journal.close()
    result = DicomwebResult(
        out,
        len(instances),
        0,
        0,
        n_before,
        n_processed,
        time.perf_counter() - t0,
        dicom_out=writer.summary_line() if writer else "",
    )
    _finish(out, instances, journal.records, result)
    return result


def _chunk_records(base: str, chunk, files: dict, failed: dict, preds: dict, rejs: dict) -> list[dict]:
    """One journal record per instance of ``chunk``: a prediction row or a rejected row."""
    records = []
    for inst in chunk:
        sop = inst.sop_instance_uid
        path = inst.url(base)
        if sop in preds:
            row = dict(preds[sop], path=path, kind="prediction", sop_instance_uid=preds[sop]["sop_instance_uid"] or sop)
            row["sop_instance_uid"] = sop  # the archive's UID is the key (the header's is the same)
        elif sop in rejs:
            row = {"path": path, "reason": rejs[sop]["reason"], "detail": rejs[sop]["detail"], "kind": "rejected"}
        elif sop in failed:
            row = {"path": path, "reason": failed[sop][0], "detail": failed[sop][1], "kind": "rejected"}
        else:  # fetched but the engine did not report it: a bug, never a silent loss
            row = {"path": path, "reason": "INTERNAL_ERROR", "detail": "no result from the engine", "kind": "rejected"}
        row["sop_instance_uid"] = sop
        records.append(row)
    return records


def write_tables(out: Path, rows: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """Write ``out/predictions.csv`` and ``out/rejected.csv`` (atomically) from journal records, in order.

    Prediction columns: the engine's, then any extra column the rows carry. Returns (predictions, rejected).
    """
    import csv
    import io

    from cxr_cad.inference.outputs import PREDICTIONS, REJECTED

    preds = [r for r in rows if r["kind"] == "prediction"]
    rejs = [r for r in rows if r["kind"] == "rejected"]
    columns = list(PREDICTION_COLUMNS)
    for r in preds:
        columns += [c for c in r if c not in columns and c not in ("kind", "event", "calling_ae", "file")]
    for name, cols, table in ((PREDICTIONS, columns, preds), (REJECTED, REJECTED_COLUMNS, rejs)):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(table)
        atomic.atomic_write_text(out / name, buf.getvalue())
    return preds, rejs


def _finish(out: Path, instances: Sequence, records: dict[str, dict], result: DicomwebResult) -> None:
    """Write predictions.csv / rejected.csv (listing order) and summary.json from the journal."""
    import collections

    from cxr_cad.inference.outputs import SUMMARY

    preds, rejs = write_tables(out, [records[i.sop_instance_uid] for i in instances if i.sop_instance_uid in records])
    reasons = collections.Counter(r["reason"] for r in rejs)
    result.reasons, result.n_predicted, result.n_rejected = dict(sorted(reasons.items())), len(preds), len(rejs)
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "out_dir"}
    summary["images_per_s"] = round(result.images_per_s, 3)
    atomic.atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2, sort_keys=True))

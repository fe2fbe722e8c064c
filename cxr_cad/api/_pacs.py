"""The PACS side of ``predict`` / ``evaluate`` / ``ingest`` / ``listen``: the orchestration that
joins the :mod:`cxr_cad.pacs` adapters (DICOMweb source, SR/SC sink, C-STORE receiver) to the
predict engine.

* :func:`predict_dicomweb` scores the instances a QIDO-RS query selects, chunk by chunk
  (:func:`cxr_cad.pacs.source.stream_chunks` fetches, :func:`cxr_cad.inference.predict.predict`
  scores), resumable by SOP Instance UID.
* :func:`predict_sources` is ``cxr-cad predict``: a ``dicomweb:`` source and/or ``--dicom-out``
  (:class:`PacsOptions`), or plain folders.
* :func:`fetch_sources` / :func:`materialise` copy the selected instances to disk (ingest, evaluate).
* :class:`Listener` / :func:`listen` are ``cxr-cad listen``: the C-STORE receiver
  (:class:`cxr_cad.pacs.scp.StoreSCP`) feeds a scoring thread.

Every function takes typed options (:class:`PacsOptions`, :class:`ListenOptions`,
:class:`~cxr_cad.config.PredictOptions`), never command-line arguments.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr_cad.api._scoring import score
from cxr_cad.config import PredictOptions
from cxr_cad.core import atomic, provenance
from cxr_cad.core.atomic import PathLike
from cxr_cad.errors import ConfigError, CxrCadError, UsageError
from cxr_cad.inference.outputs import PREDICTIONS, REJECTED, SUMMARY, check_writable
from cxr_cad.pacs.client import NETWORK_REASONS, is_dicomweb, make_client, parse_url
from cxr_cad.pacs.journal import Journal
from cxr_cad.pacs.output import DicomOutOptions, DicomOutput, write_for_predictions
from cxr_cad.pacs.query import fetch_many, list_instances, parse_query
from cxr_cad.pacs.scp import INTERNAL_ERROR, StoreSCP
from cxr_cad.pacs.source import (
    STATE_DIR,
    DicomwebResult,
    check_state,
    list_remote,
    pending_chunks,
    stream_chunks,
    write_tables,
)

__all__ = [
    "DicomOutOptions",
    "DicomwebResult",
    "ListenOptions",
    "ListenResult",
    "Listener",
    "PacsOptions",
    "dicom_out_options",
    "fetch_sources",
    "is_dicomweb",
    "listen",
    "materialise",
    "pacs_requested",
    "predict_dicomweb",
    "predict_sources",
    "split_sources",
    "write_dicom_outputs",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PacsOptions:
    """The PACS options of a command (docs/pacs.md).

    Attributes:
        query: QIDO-RS filters ``KEYWORD=VALUE`` for a ``dicomweb:`` source.
        fetch_chunk: instances fetched, scored and deleted together (``predict``).
        fetch_to: folder the selected instances are fetched into (``ingest``).
        dicom_out: write a DICOM SR (TID 1500) per scored DICOM image into this folder.
        secondary_capture: with ``dicom_out``: also a Grad-CAM Secondary Capture.
        stow: with ``dicom_out``: send the objects to this DICOMweb archive (STOW-RS).
    """

    query: tuple[str, ...] = ()
    fetch_chunk: int = 128
    fetch_to: PathLike | None = None
    dicom_out: PathLike | None = None
    secondary_capture: bool = False
    stow: str | None = None


def dicom_out_options(pacs: PacsOptions) -> DicomOutOptions | None:
    """The ``--dicom-out`` writer's options, or None; UsageError for SC/STOW without ``dicom_out``."""
    if not pacs.dicom_out:
        if pacs.secondary_capture or pacs.stow:
            raise UsageError("--secondary-capture and --stow need --dicom-out DIR")
        return None
    return DicomOutOptions(Path(pacs.dicom_out), secondary_capture=pacs.secondary_capture, stow_url=pacs.stow)


def pacs_requested(sources: Sequence[str], pacs: PacsOptions) -> bool:
    """True when the run needs the PACS adapters (a dicomweb: source, a query or a DICOM output)."""
    return any(is_dicomweb(s) for s in sources) or bool(pacs.dicom_out) or bool(pacs.query)


def split_sources(sources: Sequence[str]) -> tuple[str | None, list[str]]:
    """(the one dicomweb: source or None, the other sources). UsageError for two archives."""
    web = [s for s in sources if is_dicomweb(s)]
    if len(web) > 1:
        raise UsageError("give one dicomweb: source per run")
    return (web[0] if web else None), [s for s in sources if not is_dicomweb(s)]


# -- DICOMweb source -> predict engine ------------------------------------------------------------
def _run_identity(base: str, query: dict, model_path: PathLike, threshold: float | None) -> dict:
    """What makes a DICOMweb run folder resumable: the same source, query, model and threshold."""
    model = Path(model_path)
    return {
        "source": base,
        "query": query,
        "model_sha256": provenance.sha256_file(model) if model.is_file() else str(model.resolve()),
        "threshold": threshold,
    }


def _chunk_scorer(model_path: PathLike, options: PredictOptions) -> Callable[[Path, Path], tuple[dict, dict]]:
    """``score(spool folder, run folder)``: the predict engine over one fetched chunk,
    ``({SOP UID: prediction row}, {SOP UID: rejected row})``."""
    from cxr_cad.inference.predict import predict  # torch: imported when a chunk is scored

    def score(folder: Path, run_dir: Path) -> tuple[dict, dict]:
        predict([folder], run_dir, model_path, options.replace(overwrite=True))
        return _rows_by_stem(run_dir / PREDICTIONS), _rows_by_stem(run_dir / REJECTED)

    return score


def _rows_by_stem(path: Path) -> dict[str, dict]:
    """A predictions/rejected table of a spool run keyed by file stem (the SOP Instance UID)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {Path(r["path"]).stem: r for r in csv.DictReader(fh)}


def predict_dicomweb(
    url: str,
    out_dir: PathLike,
    model_path: PathLike,
    options: PredictOptions | None = None,
    *,
    query: dict | None = None,
    chunk_size: int = 128,
    fetch_threads: int = 4,
    dicom_out: DicomOutOptions | None = None,
) -> DicomwebResult:
    """Score every instance of the archive at ``url`` matching ``query`` into ``out_dir``
    (predictions.csv, rejected.csv, summary.json; :mod:`cxr_cad.pacs.source` says how every
    instance is accounted for and how a rerun resumes).

    ``options``: :class:`~cxr_cad.config.PredictOptions` (its ``overwrite`` discards an earlier
    run in ``out_dir``). ``dicom_out``: :class:`~cxr_cad.pacs.output.DicomOutOptions` or None.
    Raises ConfigError (bad URL/query/chunk size), UsageError (``out_dir`` holds another run),
    CxrCadError when the archive cannot be queried, and what the engine raises for a bad bundle.
    """
    t0 = time.perf_counter()
    options = options or PredictOptions()
    if chunk_size < 1:
        raise ConfigError(f"chunk size must be >= 1, not {chunk_size}")
    out = Path(out_dir).absolute()
    check_writable(out)
    base = parse_url(url)
    client = make_client(url)
    instances = list_remote(client, base, query or {})
    state_dir = out / STATE_DIR
    check_state(state_dir, _run_identity(base, query or {}, model_path, options.threshold), options.overwrite)
    writer = DicomOutput(dicom_out, model_path) if dicom_out is not None else None
    journal = Journal(state_dir / "journal.jsonl")
    done = {s for s, r in journal.records.items() if r.get("reason") not in NETWORK_REASONS}
    n_before = sum(1 for i in instances if i.sop_instance_uid in done)
    chunks = pending_chunks(instances, done, chunk_size)
    log.info(
        "%d instance(s) listed, %d done earlier, %d chunk(s) of <= %d to fetch and score",
        len(instances),
        n_before,
        len(chunks),
        chunk_size,
    )
    try:
        n_processed = stream_chunks(
            client,
            base,
            instances,
            chunks,
            journal,
            state_dir / "spool",
            _chunk_scorer(model_path, options),
            sink=writer,
            fetch_threads=fetch_threads,
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
    rows = [journal.records[i.sop_instance_uid] for i in instances if i.sop_instance_uid in journal.records]
    preds, rejs = write_tables(rows, out / PREDICTIONS, out / REJECTED)
    reasons = collections.Counter(r["reason"] for r in rejs)
    result.reasons, result.n_predicted, result.n_rejected = dict(sorted(reasons.items())), len(preds), len(rejs)
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "out_dir"}
    summary["images_per_s"] = round(result.images_per_s, 3)
    atomic.atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2, sort_keys=True))
    return result


def predict_sources(
    model: PathLike,
    sources: Sequence[str],
    out_dir: PathLike,
    options: PredictOptions,
    pacs: PacsOptions | None = None,
) -> list[str]:
    """``cxr-cad predict``: score folders, manifests, files or a ``dicomweb:`` archive, and with
    ``pacs.dicom_out`` write the DICOM SRs. Returns the summary lines for the terminal (none on
    ranks other than 0 of a torchrun job)."""
    pacs = pacs or PacsOptions()
    if not pacs_requested(sources, pacs):
        result = score(model, list(sources), out_dir, options)
        return [result.summary_line()] if result.runtime.get("rank", 0) == 0 else []
    web, local = split_sources(sources)
    dicom_out = dicom_out_options(pacs)
    if dicom_out is not None and options.backend != "torch":
        raise UsageError(
            "--dicom-out needs a model bundle (--backend torch): the SR records the bundle's "
            "SHA-256 and the Secondary Capture runs Grad-CAM on its network"
        )
    if web:
        if local:
            raise UsageError("a dicomweb: source cannot be mixed with folders or files in one run")
        web_result = predict_dicomweb(
            web,
            out_dir,
            model,
            options,
            query=parse_query(pacs.query),
            chunk_size=pacs.fetch_chunk,
            dicom_out=dicom_out,
        )
        return [web_result.summary_line()]
    if pacs.query:
        raise UsageError("--query needs a dicomweb: source")
    local_result = score(model, local, out_dir, options)
    lines = [local_result.summary_line()]
    if dicom_out is not None:
        lines.append(write_for_predictions(dicom_out, model, Path(out_dir) / PREDICTIONS).summary_line())
    return lines


def write_dicom_outputs(pacs: PacsOptions, model: PathLike, predictions_csv: Path) -> str | None:
    """``--dicom-out`` after a local scoring run (evaluate): returns the summary line, or None."""
    options = dicom_out_options(pacs)
    if options is None:
        return None
    return write_for_predictions(options, model, predictions_csv).summary_line()


# -- DICOMweb source -> files on disk (ingest, evaluate) -------------------------------------------
def materialise(
    source: str, folder: Path, query_items: Sequence[str] | None, *, failed_csv: Path, chunk: int = 128
) -> Path:
    """Fetch the instances of a dicomweb: source matching the query into ``folder`` (for ingest/evaluate).

    Ingest and evaluate build a cohort on disk by design; this copies only the selected
    instances, ``chunk`` at a time. Instances that cannot be fetched are listed in
    ``failed_csv`` with their reason codes. Returns ``folder``.
    """
    client = make_client(source)
    instances = list_instances(client, parse_query(query_items))
    folder.mkdir(parents=True, exist_ok=True)
    failed_all = {}
    for s in range(0, len(instances), chunk):
        todo = [i for i in instances[s : s + chunk] if not (folder / f"{i.sop_instance_uid}.dcm").exists()]
        failed_all.update(fetch_many(client, todo, folder)[1])
    failed_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(failed_csv, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["sop_instance_uid", "reason", "detail"])
        w.writerows([sop, *why] for sop, why in sorted(failed_all.items()))
    log.info("%d instance(s) fetched into %s, %d failed", len(instances) - len(failed_all), folder, len(failed_all))
    return folder


def fetch_sources(sources: Sequence[str], out_dir: PathLike, pacs: PacsOptions | None = None) -> list[str]:
    """``sources`` with a dicomweb: source replaced by ``pacs.fetch_to``, the folder its selected
    instances are fetched into (ingest writes a manifest of files on disk); failures go to
    ``out_dir/fetch_failed.csv``."""
    pacs = pacs or PacsOptions()
    web, local = split_sources(sources)
    if web is None:
        if pacs.query:
            raise UsageError("--query needs a dicomweb: source")
        return list(sources)
    if not pacs.fetch_to:
        raise UsageError("a dicomweb: source needs --fetch-to DIR: ingest writes a manifest of files on disk")
    fetched = Path(pacs.fetch_to).absolute()
    out = Path(out_dir).absolute()
    if fetched == out or out in fetched.parents:
        raise UsageError("--fetch-to must be outside --out (ingest does not scan its own output folder)")
    materialise(web, fetched, pacs.query, failed_csv=Path(out_dir) / "fetch_failed.csv")
    return local + [str(fetched)]


# -- C-STORE receiver -> predict engine (cxr-cad listen) -------------------------------------------
@dataclass(frozen=True)
class ListenOptions:
    """What the node is: AE title, address, model, output folder, where results go, and how it
    scores (``predict``: default ``PredictOptions(workers=0)``)."""

    model: Path
    out_dir: Path
    aet: str = "CXRCAD"
    host: str = "0.0.0.0"
    port: int = 11112
    stow_url: str | None = None
    forward: tuple[str, str, int] | None = None
    secondary_capture: bool = False
    batch_wait_s: float = 1.0
    max_batch: int = 32
    predict: PredictOptions | None = None


@dataclass(frozen=True)
class ListenResult:
    """What a stopped node did: instances journaled, scored, and the DICOM writer's summary."""

    n_journaled: int
    n_scored: int
    dicom: str


class Listener:
    """The scoring node behind ``cxr-cad listen``: :meth:`start`, then :meth:`stop` (blocks until
    the queue is scored).

    Layout of ``OUT``::

        OUT/journal.jsonl    one line per event, fsynced: "received" (SOP UIDs, calling AE, file),
                             then the result ("prediction" or "rejected" with a reason code)
        OUT/received/        the instances as received (<SOP Instance UID>.dcm, bytes unchanged)
        OUT/predictions.csv  rewritten after every scored batch (atomic), same columns as predict
        OUT/rejected.csv     path, reason, detail, sop_instance_uid
        OUT/dicom/           SR (+ SC) per scored image, objects.csv (cxr_cad.pacs.output)

    Scoring runs in its own thread, in batches of what arrived within ``batch_wait_s``, through
    :func:`cxr_cad.inference.predict.predict`; images the engine rejects keep its reason code
    (``NOT_AN_IMAGE_SOP_CLASS``, ``DECODE_FAILED``, ``LATERAL_VIEW``...), and an exception there
    becomes ``INTERNAL_ERROR`` rows, never a dead node. On restart, instances received but not
    yet scored are scored first.
    """

    def __init__(self, options: ListenOptions):
        self.options = options
        self.out = Path(options.out_dir).absolute()
        check_writable(self.out)
        self.received = self.out / "received"
        self.received.mkdir(exist_ok=True)
        self.predict_options = (options.predict or PredictOptions(workers=0)).replace(overwrite=True)
        self.journal = Journal(self.out / "journal.jsonl")
        self.writer = DicomOutput(
            DicomOutOptions(
                self.out / "dicom", options.secondary_capture, options.stow_url, options.forward, options.aet
            ),
            options.model,
        )
        self.queue: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._scp = StoreSCP(options.aet, options.host, options.port, self.received, self._on_event)
        self._scorer = threading.Thread(target=self._score_loop, name="cxr-cad-scorer", daemon=True)
        pending = [s for s, r in self.journal.records.items() if r["kind"] == "received"]
        for sop in pending:  # received by an earlier run, never scored
            self.queue.put(sop)

    def _on_event(self, record: dict) -> None:
        """A dataset arrived: journal it, and queue it for scoring when it was stored."""
        self.journal.append([record])
        if record["kind"] == "received":
            self.queue.put(record["sop_instance_uid"])

    def start(self) -> None:
        """Listen on (host, port) in background threads; returns at once."""
        self._scorer.start()
        self._scp.start()
        log.info(
            "listening as %s on %s:%d; results in %s", self.options.aet, self.options.host, self.options.port, self.out
        )

    def stop(self) -> None:
        """Stop accepting, score what is queued, write the CSVs."""
        self._scp.stop()
        self._stop.set()
        if self._scorer.is_alive():
            self._scorer.join()
        self._write_tables()
        self.journal.close()

    def result(self) -> ListenResult:
        n = sum(1 for r in self.journal.records.values() if r["kind"] == "prediction")
        return ListenResult(len(self.journal.records), n, self.writer.summary_line())

    # -- scoring -------------------------------------------------------------------------
    def _next_batch(self) -> list[str]:
        try:
            batch = [self.queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.options.batch_wait_s
        while len(batch) < self.options.max_batch and time.monotonic() < deadline and not self._stop.is_set():
            try:
                batch.append(self.queue.get(timeout=0.05))
            except queue.Empty:
                pass
        return list(dict.fromkeys(batch))

    def _score_loop(self) -> None:
        while not (self._stop.is_set() and self.queue.empty()):
            batch = self._next_batch()
            if not batch:
                continue
            try:
                self._score(batch)
            except Exception as exc:  # noqa: BLE001 - the node never dies on one batch
                log.exception("scoring %d instance(s) failed; they are rejected as INTERNAL_ERROR", len(batch))
                self.journal.append(
                    [
                        {
                            "sop_instance_uid": s,
                            "kind": "rejected",
                            "event": "scored",
                            "path": str(self.received / f"{s}.dcm"),
                            "reason": INTERNAL_ERROR,
                            "detail": f"{type(exc).__name__}: {str(exc)[:200]}",
                        }
                        for s in batch
                    ]
                )
            self._write_tables()

    def _score(self, sops: list[str]) -> None:
        from cxr_cad.inference.predict import predict  # torch: imported by the scoring thread

        run_dir = self.out / ".listen-run"
        paths = [self.received / f"{s}.dcm" for s in sops]
        predict([str(p) for p in paths], run_dir, self.options.model, self.predict_options)
        predictions, rejected = _rows_by_stem(run_dir / PREDICTIONS), _rows_by_stem(run_dir / REJECTED)
        records = []
        for sop, path in zip(sops, paths, strict=True):
            if sop in predictions:
                rec = dict(predictions[sop], kind="prediction")
            else:
                r = rejected.get(sop, {"reason": INTERNAL_ERROR, "detail": "no result from the engine"})
                rec = {"kind": "rejected", "reason": r["reason"], "detail": r["detail"]}
            rec.update(sop_instance_uid=sop, path=str(path), event="scored")
            records.append(rec)
        preds = [r for r in records if r["kind"] == "prediction"]
        self.writer.write((r, r["path"], 1) for r in preds)
        self.journal.append(records)
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("scored %d, rejected %d (%s)", len(preds), len(records) - len(preds), self.writer.summary_line())

    def _write_tables(self) -> None:
        rows = [r for r in self.journal.records.values() if r["kind"] in ("prediction", "rejected")]
        write_tables(rows, self.out / PREDICTIONS, self.out / REJECTED)


def listen(
    options: ListenOptions, stop: threading.Event, *, on_listening: Callable[[Path], None] | None = None
) -> ListenResult:
    """Run the node until ``stop`` is set (the CLI sets it on SIGTERM/SIGINT), then score what is
    queued and write the CSVs. ``on_listening(results folder)`` is called once it listens.

    Raises CxrCadError when the port cannot be opened; what :class:`Listener` raises for a bad
    bundle or an unwritable folder.
    """
    listener = Listener(options)
    try:
        try:
            listener.start()
        except OSError as exc:
            raise CxrCadError(
                f"cannot listen on {options.host}:{options.port} ({exc.strerror or exc}); choose another --port"
            ) from exc
        if on_listening is not None:
            on_listening(listener.out)
        while not stop.wait(0.5):
            pass
    finally:
        listener.stop()
    return listener.result()

"""``cxr-cad listen``: the C-STORE receiver (:class:`cxr_cad.pacs.scp.StoreSCP`) joined to the
predict engine. :class:`Listener` feeds a scoring thread; :func:`listen` runs it until stopped.

Access control (docs/pacs.md): the node binds 127.0.0.1 unless ``host`` says otherwise, accepts
only associations called with its own AE title and, with ``allowed_calling``, only those calling
AE titles; ``tls_cert``/``tls_key`` (and ``tls_ca`` for client certificates) make it DICOM TLS.
Every association, store and result sent is a record in ``OUT/audit.jsonl`` (or ``audit``);
every journal record carries its UTC time.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxr_cad.api._remote import audit_results, rows_by_stem
from cxr_cad.config import PredictOptions
from cxr_cad.errors import ConfigError, CxrCadError
from cxr_cad.inference.outputs import PREDICTIONS, REJECTED, check_writable
from cxr_cad.pacs.audit import AUDIT_FILE, AuditLog
from cxr_cad.pacs.client import parse_url
from cxr_cad.pacs.journal import Journal
from cxr_cad.pacs.output import DicomOutOptions, DicomOutput
from cxr_cad.pacs.scp import INTERNAL_ERROR, StoreSCP, server_tls_context
from cxr_cad.pacs.source import write_tables

__all__ = ["ListenOptions", "ListenResult", "Listener", "listen"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListenOptions:
    """What the node is: AE title, address, model, output folder, where results go, and how it
    scores (``predict``: default ``PredictOptions(workers=0)``).

    ``allowed_calling``: calling AE titles accepted (empty: any). ``tls_cert``/``tls_key``: DICOM
    TLS; ``tls_ca``: clients must present a certificate this CA signed. ``audit``: the audit log
    (default ``OUT/audit.jsonl``). ``min_free_mb``: stores are refused (0xA700) while the output
    folder's file system has less free space than this.
    """

    model: Path
    out_dir: Path
    aet: str = "CXRCAD"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    audit: Path | None = None
    min_free_mb: int = 64
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

        OUT/journal.jsonl    one line per event, fsynced, with its UTC time: "received" (SOP UIDs,
                             calling AE, peer address, file), then the result ("prediction" or
                             "rejected" with a reason code)
        OUT/audit.jsonl      associations, stores and results sent (cxr_cad.pacs.audit)
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
        if options.stow_url:
            parse_url(options.stow_url)  # a bad URL or a password in it: refused before anything is written
        if bool(options.tls_cert) != bool(options.tls_key) or (options.tls_ca and not options.tls_cert):
            raise ConfigError("DICOM TLS needs both --tls-cert and --tls-key (and --tls-ca only with them)")
        tls = (
            server_tls_context(
                str(options.tls_cert), str(options.tls_key), str(options.tls_ca) if options.tls_ca else None
            )
            if options.tls_cert and options.tls_key
            else None
        )
        check_writable(self.out)
        self.audit = AuditLog(Path(options.audit) if options.audit else self.out / AUDIT_FILE)
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
        self._scp = StoreSCP(
            options.aet,
            options.host,
            options.port,
            self.received,
            self._on_event,
            allowed_calling=tuple(options.allowed_calling),
            ssl_context=tls,
            audit=self.audit,
            min_free_bytes=max(0, options.min_free_mb) * 2**20,
        )
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
        o = self.options
        log.info(
            "listening as %s on %s:%d%s; calling AE titles: %s; results in %s",
            o.aet,
            o.host,
            o.port,
            " (DICOM TLS)" if o.tls_cert else "",
            ", ".join(o.allowed_calling) or "any",
            self.out,
        )
        if not o.allowed_calling and o.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning(
                "listening on %s with no --allow-calling list: any DICOM node that can reach it may send", o.host
            )

    def stop(self) -> None:
        """Stop accepting, score what is queued, write the CSVs."""
        self._scp.stop()
        self._stop.set()
        if self._scorer.is_alive():
            self._scorer.join()
        self._write_tables()
        self.journal.close()
        self.audit.close()

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
        predictions, rejected = rows_by_stem(run_dir / PREDICTIONS), rows_by_stem(run_dir / REJECTED)
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
        audit_results(self.audit, self.writer, [r["sop_instance_uid"] for r in preds])
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

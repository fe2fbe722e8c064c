"""``cxr-cad listen``: a DICOM C-STORE SCP (pynetdicom) that scores each radiograph on arrival.

Layout of ``OUT``::

    OUT/journal.jsonl    one line per event, fsynced: "received" (SOP UIDs, calling AE, file),
                         then the result ("prediction" or "rejected" with a reason code)
    OUT/received/        the instances as received (<SOP Instance UID>.dcm, bytes unchanged)
    OUT/predictions.csv  rewritten after every scored batch (atomic), same columns as predict
    OUT/rejected.csv     path, reason, detail, sop_instance_uid
    OUT/dicom/           SR (+ SC) per scored image, objects.csv (cxr_cad.pacs.output)

Answers (C-STORE response status)
    0x0000 for every dataset that could be stored, radiograph or not: non-images (SR, PDF,
    presentation states...) and images the engine then rejects are stored, journaled and
    rejected with the engine's reason code (``NOT_AN_IMAGE_SOP_CLASS``, ``DECODE_FAILED``,
    ``LATERAL_VIEW``...) rather than failed, so a PACS does not retry them forever.
    0xC210 (cannot understand) for a dataset that does not parse (journaled ``UNREADABLE``);
    0xA700 (out of resources) when it cannot be written to disk.
Robustness
    Scoring runs in its own thread, in batches of what arrived within ``batch_wait_s``,
    through :func:`cxr_cad.inference.predict.predict`; an exception there becomes
    ``INTERNAL_ERROR`` rows, never a dead node. pynetdicom runs each association in its own
    thread; one bad association does not touch the others. On restart, instances received
    but not yet scored are scored first.
Shutdown
    :meth:`Listener.stop` (``SIGTERM``/``SIGINT`` in the CLI) stops accepting associations,
    scores what is queued, writes the CSVs and returns.
"""

from __future__ import annotations

import io
import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_cad.core.atomic import atomic_write_bytes
from cxr_cad.errors import OutputError
from cxr_cad.pacs.journal import Journal

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

    from cxr_cad.inference.predict import PredictOptions

#: (0008,0016) of C-ECHO: the Verification SOP Class (PS3.4 A.4), answered so senders can test the node.
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

log = logging.getLogger(__name__)

UNREADABLE = "UNREADABLE"
INTERNAL_ERROR = "INTERNAL_ERROR"


@dataclass(frozen=True)
class ListenOptions:
    """What the node is: AE title, address, model, output folder, where results go."""

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


def parse_forward(text: str) -> tuple[str, str, int]:
    """``PACS@10.0.0.5:104`` -> ("PACS", "10.0.0.5", 104); ConfigError (a bad setting) when malformed."""
    from cxr_cad.errors import ConfigError

    aet, sep, rest = text.partition("@")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or not aet or not host or not port.isdigit() or len(aet) > 16:
        raise ConfigError(f"--forward {text!r} is not AET@HOST:PORT (e.g. PACS@10.0.0.5:104)")
    return aet, host, int(port)


class Listener:
    """The node: :meth:`start`, then :meth:`stop` (blocks until the queue is scored)."""

    def __init__(self, options: ListenOptions, predict_options: PredictOptions | None = None):
        from cxr_cad.inference.outputs import check_writable
        from cxr_cad.inference.predict import PredictOptions
        from cxr_cad.pacs.output import DicomOutOptions, DicomOutput

        self.options = options
        self.out = Path(options.out_dir).absolute()
        check_writable(self.out)
        self.received = self.out / "received"
        self.received.mkdir(exist_ok=True)
        self.predict_options = (predict_options or PredictOptions(workers=0)).model_copy(update={"overwrite": True})
        self.journal = Journal(self.out / "journal.jsonl")
        self.writer = DicomOutput(
            DicomOutOptions(
                self.out / "dicom", options.secondary_capture, options.stow_url, options.forward, options.aet
            ),
            options.model,
        )
        self.queue: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._server: ThreadedAssociationServer | None = None
        self._scorer = threading.Thread(target=self._score_loop, name="cxr-cad-scorer", daemon=True)
        self._order: dict[str, int] = {}
        pending = [s for s, r in self.journal.records.items() if r["kind"] == "received"]
        for sop in pending:  # received by an earlier run, never scored
            self.queue.put(sop)

    # -- receiving -----------------------------------------------------------------------
    def _on_store(self, event) -> int:
        """EVT_C_STORE handler: store the bytes as received, journal, queue for scoring."""
        import pydicom

        calling = str(event.assoc.requestor.ae_title).strip()
        req = event.request
        sop = str(req.AffectedSOPInstanceUID or "")
        try:
            data = event.encoded_dataset(include_meta=True)
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            sop = str(ds.SOPInstanceUID)
            if not sop or any(c not in "0123456789." for c in sop):
                raise ValueError("(0008,0018) SOP Instance UID is missing or malformed")
        except Exception as exc:  # noqa: BLE001 - any parse failure is answered, journaled and survived
            key = sop if sop else f"unparsed-{time.time_ns()}"
            self.journal.append(
                [
                    {
                        "sop_instance_uid": key,
                        "kind": "rejected",
                        "event": "received",
                        "calling_ae": calling,
                        "path": "",
                        "reason": UNREADABLE,
                        "detail": f"dataset does not parse ({type(exc).__name__}); ask the sender to check it",
                    }
                ]
            )
            log.warning(
                "C-STORE from %s: instance %s does not parse (%s); answered 0xC210", calling, key, type(exc).__name__
            )
            return 0xC210
        path = self.received / f"{sop}.dcm"
        try:
            atomic_write_bytes(path, data)
        except OutputError as exc:
            log.error("C-STORE from %s: %s; answered 0xA700", calling, exc)
            return 0xA700
        self.journal.append(
            [
                {
                    "sop_instance_uid": sop,
                    "kind": "received",
                    "event": "received",
                    "calling_ae": calling,
                    "sop_class_uid": str(req.AffectedSOPClassUID),
                    "path": str(path),
                }
            ]
        )
        self.queue.put(sop)
        return 0x0000

    def start(self) -> None:
        """Listen on (host, port) in background threads; returns at once."""
        from pydicom.uid import UID, ExplicitVRLittleEndian
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        ae = AE(ae_title=self.options.aet)
        # pynetdicom accepts the first of *our* syntaxes that the sender proposes. Compressed ones first: a
        # sender that proposes JPEG/JPEG 2000/... holds the image that way (dcmtk's storescu proposes the
        # file's syntax with uncompressed fallbacks and cannot transcode), so it is stored as it was made.
        syntaxes = sorted(
            ALL_TRANSFER_SYNTAXES, key=lambda ts: (not UID(ts).is_compressed, ts != ExplicitVRLittleEndian)
        )
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:  # always set for the storage contexts
                ae.add_supported_context(cx.abstract_syntax, syntaxes)
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        ae.maximum_associations = 16
        self._scorer.start()
        self._server = ae.start_server(
            (self.options.host, self.options.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        log.info(
            "listening as %s on %s:%d; results in %s", self.options.aet, self.options.host, self.options.port, self.out
        )

    def stop(self) -> None:
        """Stop accepting, score what is queued, write the CSVs."""
        if self._server is not None:
            self._server.shutdown()
        self._stop.set()
        if self._scorer.is_alive():
            self._scorer.join()
        self._write_tables()
        self.journal.close()

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
        import csv

        from cxr_cad.inference.predict import predict

        run_dir = self.out / ".listen-run"
        paths = [self.received / f"{s}.dcm" for s in sops]
        predict([str(p) for p in paths], run_dir, self.options.model, self.predict_options)
        tables = {}
        for name in ("predictions.csv", "rejected.csv"):
            with open(run_dir / name, newline="", encoding="utf-8") as fh:
                tables[name] = {Path(r["path"]).stem: r for r in csv.DictReader(fh)}
        records = []
        for sop, path in zip(sops, paths):
            if sop in tables["predictions.csv"]:
                rec = dict(tables["predictions.csv"][sop], kind="prediction")
            else:
                r = tables["rejected.csv"].get(sop, {"reason": INTERNAL_ERROR, "detail": "no result from the engine"})
                rec = {"kind": "rejected", "reason": r["reason"], "detail": r["detail"]}
            rec.update(sop_instance_uid=sop, path=str(path), event="scored")
            records.append(rec)
        preds = [r for r in records if r["kind"] == "prediction"]
        self.writer.write((r, r["path"], 1) for r in preds)
        self.journal.append(records)
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("scored %d, rejected %d (%s)", len(preds), len(records) - len(preds), self.writer.summary_line())

    def _write_tables(self) -> None:
        from cxr_cad.pacs.source import write_tables

        rows = [r for r in self.journal.records.values() if r["kind"] in ("prediction", "rejected")]
        write_tables(self.out, rows)

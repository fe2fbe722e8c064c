"""A DICOM C-STORE SCP (pynetdicom) that stores each received dataset and hands a record of it
to a callback: the receiving half of ``cxr-cad listen`` (the scoring half is
:class:`cxr_cad.api.Listener`; this package imports no engine).

Each dataset that parses is written, bytes unchanged, to ``<folder>/<SOP Instance UID>.dcm``
and reported as ``{"sop_instance_uid", "kind": "received", "event": "received", "calling_ae",
"sop_class_uid", "path"}``; one that does not parse is reported as a ``"rejected"`` record with
reason ``UNREADABLE``.

Answers (C-STORE response status)
    0x0000 for every dataset that could be stored, radiograph or not: non-images (SR, PDF,
    presentation states...) are stored and handed on like images, so a PACS does not retry
    them forever. 0xC210 (cannot understand) for a dataset that does not parse; 0xA700 (out
    of resources) when it cannot be kept: the folder's file system has less than
    ``min_free_bytes`` free, or writing the file or its journal record fails (a full disk:
    the partial file is removed, so the sender keeps the instance and retries; nothing is
    accepted and lost). C-ECHO (Verification) is answered. pynetdicom runs each association
    in its own thread; one bad association does not touch the others.
Access control
    ``host`` is the address listened on (the CLI's default is 127.0.0.1). The called AE title
    must be ours; with ``allowed_calling`` only those calling AE titles are accepted. Others
    get an A-ASSOCIATE-RJ, rejected-permanent, service-user, reason 7 (called AE title not
    recognised) or 3 (calling AE title not recognised) (PS3.8 9.3.4). ``ssl_context`` (see
    :func:`server_tls_context`) makes it DICOM TLS (PS3.15 B.1): only TLS connections, and with
    a CA, only clients whose certificate that CA signed.
Audit
    Every association (accepted, rejected with its reason, released, aborted) and every store
    is a record in ``audit`` (:class:`cxr_cad.pacs.audit.AuditLog`): AE titles, peer address,
    UIDs, status.
"""

from __future__ import annotations

import errno
import io
import logging
import shutil
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from cxr_cad.core.atomic import atomic_write_bytes
from cxr_cad.errors import ConfigError, OutputError
from cxr_cad.pacs.audit import AuditLog

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

__all__ = [
    "INTERNAL_ERROR",
    "OUT_OF_RESOURCES",
    "UNREADABLE",
    "VERIFICATION_SOP_CLASS",
    "StoreSCP",
    "accepted_syntaxes",
    "parse_forward",
    "server_tls_context",
]

#: (0008,0016) of C-ECHO: the Verification SOP Class (PS3.4 A.4), answered so senders can test the node.
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

log = logging.getLogger(__name__)

UNREADABLE = "UNREADABLE"
INTERNAL_ERROR = "INTERNAL_ERROR"
#: C-STORE status "Refused: Out of Resources" (PS3.4 Table GG.4-1).
OUT_OF_RESOURCES = 0xA700
#: A-ASSOCIATE-RJ reasons (result 1 rejected-permanent, source 1 service-user), PS3.8 9.3.4.
REJECT_REASONS = {3: "calling AE title not recognised", 7: "called AE title not recognised", 2: "local limit exceeded"}


def accepted_syntaxes() -> list[str]:
    """Every transfer syntax, compressed first: pynetdicom accepts the first of *ours* that the sender
    proposes, and a sender that proposes JPEG/JPEG 2000/... holds the image that way (dcmtk's storescu
    proposes the file's syntax with uncompressed fallbacks and cannot transcode), so it is kept as made."""
    return sorted(ALL_TRANSFER_SYNTAXES, key=lambda ts: (not UID(ts).is_compressed, ts != ExplicitVRLittleEndian))


def server_tls_context(cert: str, key: str, ca: str | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context for DICOM TLS: our certificate and key; with ``ca``, clients must
    present a certificate signed by it (mutual TLS). ConfigError naming the file that cannot be used."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-cert/--tls-key: cannot load {cert} with {key} ({exc})") from exc
    if ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--tls-ca: cannot load {ca} ({exc})") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _peer(assoc) -> str:
    return f"{assoc.requestor.address}:{assoc.requestor.port}"


def parse_forward(text: str) -> tuple[str, str, int]:
    """``PACS@10.0.0.5:104`` -> ("PACS", "10.0.0.5", 104); ConfigError (a bad setting) when malformed."""
    aet, sep, rest = text.partition("@")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or not aet or not host or not port.isdigit() or len(aet) > 16:
        raise ConfigError(f"--forward {text!r} is not AET@HOST:PORT (e.g. PACS@10.0.0.5:104)")
    return aet, host, int(port)


class StoreSCP:
    """The storage node: :meth:`start` listens on ``(host, port)`` in background threads,
    :meth:`stop` stops accepting associations. ``on_event(record)`` is called (from an
    association thread) for every dataset received, stored or not; when it raises (the journal
    cannot be written), the stored file is removed and the store answered 0xA700."""

    def __init__(
        self,
        aet: str,
        host: str,
        port: int,
        folder: Path,
        on_event: Callable[[dict], None],
        *,
        allowed_calling: tuple[str, ...] = (),
        ssl_context: ssl.SSLContext | None = None,
        audit: AuditLog | None = None,
        min_free_bytes: int = 0,
    ):
        self.aet, self.host, self.port = aet, host, port
        self.folder = folder
        self.on_event = on_event
        self.allowed_calling = tuple(allowed_calling)
        self.ssl_context = ssl_context
        self.audit = audit or AuditLog(None)
        self.min_free_bytes = min_free_bytes
        self._server: ThreadedAssociationServer | None = None

    def _who(self, event) -> dict:
        return {
            "calling_ae": str(event.assoc.requestor.ae_title).strip(),
            "called_ae": self.aet,
            "peer": _peer(event.assoc),
            "tls": self.ssl_context is not None,
        }

    def _refuse_store(self, who: dict, sop: str, detail: str) -> int:
        log.error("C-STORE from %s: instance %s refused, 0xA700 out of resources: %s", who["calling_ae"], sop, detail)
        self.audit.record("store", "failure", **who, sop_instance_uid=sop, status="0xA700", detail=detail)
        return OUT_OF_RESOURCES

    def _on_store(self, event) -> int:
        """EVT_C_STORE handler: store the bytes as received and report them."""
        who = self._who(event)
        calling = who["calling_ae"]
        req = event.request
        sop = str(req.AffectedSOPInstanceUID or "")
        if self.min_free_bytes:
            free = shutil.disk_usage(self.folder).free
            if free < self.min_free_bytes:
                return self._refuse_store(
                    who, sop, f"{free // 2**20} MiB free, below the reserve of {self.min_free_bytes // 2**20} MiB"
                )
        try:
            data = event.encoded_dataset(include_meta=True)
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            sop = str(ds.SOPInstanceUID)
            if not sop or any(c not in "0123456789." for c in sop):
                raise ValueError("(0008,0018) SOP Instance UID is missing or malformed")
        except Exception as exc:  # noqa: BLE001 - any parse failure is answered, reported and survived
            key = sop if sop else f"unparsed-{time.time_ns()}"
            self.on_event(
                {
                    "sop_instance_uid": key,
                    "kind": "rejected",
                    "event": "received",
                    "calling_ae": calling,
                    "peer": who["peer"],
                    "path": "",
                    "reason": UNREADABLE,
                    "detail": f"dataset does not parse ({type(exc).__name__}); ask the sender to check it",
                }
            )
            log.warning(
                "C-STORE from %s: instance %s does not parse (%s); answered 0xC210", calling, key, type(exc).__name__
            )
            self.audit.record("store", "failure", **who, sop_instance_uid=key, status="0xC210", detail=UNREADABLE)
            return 0xC210
        path = self.folder / f"{sop}.dcm"
        try:
            atomic_write_bytes(path, data)
        except OutputError as exc:
            return self._refuse_store(who, sop, str(exc))
        try:
            self.on_event(
                {
                    "sop_instance_uid": sop,
                    "kind": "received",
                    "event": "received",
                    "calling_ae": calling,
                    "peer": who["peer"],
                    "sop_class_uid": str(req.AffectedSOPClassUID),
                    "path": str(path),
                }
            )
        except OSError as exc:  # the journal cannot be written: not kept, so not accepted
            path.unlink(missing_ok=True)
            why = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            return self._refuse_store(who, sop, f"journal not written: {why}")
        self.audit.record(
            "store",
            "success",
            **who,
            sop_instance_uid=sop,
            sop_class_uid=str(req.AffectedSOPClassUID),
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            status="0x0000",
        )
        return 0x0000

    def _on_association(self, event) -> None:
        """EVT_ACCEPTED / EVT_REJECTED / EVT_RELEASED / EVT_ABORTED: one audit record each."""
        rq = event.assoc.requestor.primitive
        calling = str(getattr(rq, "calling_ae_title", "") or event.assoc.requestor.ae_title).strip()
        called = str(getattr(rq, "called_ae_title", "") or "").strip()
        who = {
            "calling_ae": calling,
            "called_ae": called,
            "peer": _peer(event.assoc),
            "tls": self.ssl_context is not None,
        }
        name = event.event.name
        if name == "EVT_REJECTED":
            if called != self.aet:
                reason = 7
            elif self.allowed_calling and calling not in self.allowed_calling:
                reason = 3
            else:
                reason = 2
            log.warning(
                "association from %s (%s -> %s) rejected: %s", who["peer"], calling, called, REJECT_REASONS[reason]
            )
            self.audit.record("association", "refused", **who, reason=REJECT_REASONS[reason], reject_reason=reason)
        else:
            outcome = {"EVT_ACCEPTED": "success", "EVT_RELEASED": "success", "EVT_ABORTED": "failure"}[name]
            state = {"EVT_ACCEPTED": "accepted", "EVT_RELEASED": "released", "EVT_ABORTED": "aborted"}[name]
            self.audit.record("association", outcome, **who, state=state)

    def start(self) -> None:
        """Listen on (host, port) in background threads; returns at once. OSError when the port is taken."""
        ae = AE(ae_title=self.aet)
        syntaxes = accepted_syntaxes()
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:  # always set for the storage contexts
                ae.add_supported_context(cx.abstract_syntax, syntaxes)
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        ae.maximum_associations = 16
        ae.require_called_aet = True
        if self.allowed_calling:
            ae.require_calling_aet = list(self.allowed_calling)
        handlers: list = [(evt.EVT_C_STORE, self._on_store)]
        handlers += [
            (e, self._on_association) for e in (evt.EVT_ACCEPTED, evt.EVT_REJECTED, evt.EVT_RELEASED, evt.EVT_ABORTED)
        ]
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=handlers, ssl_context=self.ssl_context
        )

    def stop(self) -> None:
        """Stop accepting associations (those in progress finish)."""
        if self._server is not None:
            self._server.shutdown()

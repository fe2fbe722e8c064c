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
    of resources) when it cannot be written to disk. C-ECHO (Verification) is answered.
    pynetdicom runs each association in its own thread; one bad association does not touch
    the others.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from cxr_cad.core.atomic import atomic_write_bytes
from cxr_cad.errors import ConfigError, OutputError

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

__all__ = ["INTERNAL_ERROR", "UNREADABLE", "VERIFICATION_SOP_CLASS", "StoreSCP", "parse_forward"]

#: (0008,0016) of C-ECHO: the Verification SOP Class (PS3.4 A.4), answered so senders can test the node.
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

log = logging.getLogger(__name__)

UNREADABLE = "UNREADABLE"
INTERNAL_ERROR = "INTERNAL_ERROR"


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
    association thread) for every dataset received, stored or not."""

    def __init__(self, aet: str, host: str, port: int, folder: Path, on_event: Callable[[dict], None]):
        self.aet, self.host, self.port = aet, host, port
        self.folder = folder
        self.on_event = on_event
        self._server: ThreadedAssociationServer | None = None

    def _on_store(self, event) -> int:
        """EVT_C_STORE handler: store the bytes as received and report them."""
        calling = str(event.assoc.requestor.ae_title).strip()
        req = event.request
        sop = str(req.AffectedSOPInstanceUID or "")
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
                    "path": "",
                    "reason": UNREADABLE,
                    "detail": f"dataset does not parse ({type(exc).__name__}); ask the sender to check it",
                }
            )
            log.warning(
                "C-STORE from %s: instance %s does not parse (%s); answered 0xC210", calling, key, type(exc).__name__
            )
            return 0xC210
        path = self.folder / f"{sop}.dcm"
        try:
            atomic_write_bytes(path, data)
        except OutputError as exc:
            log.error("C-STORE from %s: %s; answered 0xA700", calling, exc)
            return 0xA700
        self.on_event(
            {
                "sop_instance_uid": sop,
                "kind": "received",
                "event": "received",
                "calling_ae": calling,
                "sop_class_uid": str(req.AffectedSOPClassUID),
                "path": str(path),
            }
        )
        return 0x0000

    def start(self) -> None:
        """Listen on (host, port) in background threads; returns at once. OSError when the port is taken."""
        ae = AE(ae_title=self.aet)
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
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def stop(self) -> None:
        """Stop accepting associations (those in progress finish)."""
        if self._server is not None:
            self._server.shutdown()

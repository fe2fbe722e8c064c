"""C-GET and C-MOVE for :class:`cxr_cad.pacs.dimse.DimseSource`, and our C-MOVE destination.

C-GET: one association per chunk proposing, for each SOP Class of the chunk, one presentation
context per transfer syntax with the SCP role (PS3.7 D.3.3.4), so the archive sends each
instance in the syntax it holds it in; one C-GET per instance at IMAGE level.
C-MOVE: :class:`MoveDestination` is a storage SCP of ours on ``(AET, host, port)``; the archive,
which must know that AE title (Orthanc: ``DicomModalities``), is asked to C-MOVE each instance
there. Either way the bytes are written unchanged to ``<folder>/<SOP UID>.dcm``; what the final
status of each sub-operation means is :func:`final_status`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import by pynetdicom
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from cxr_cad.core.atomic import atomic_write_bytes
from cxr_cad.errors import CxrCadError
from cxr_cad.pacs.client import FETCH_FAILED, NOT_FOUND_IN_ARCHIVE
from cxr_cad.pacs.dimse_find import identifier
from cxr_cad.pacs.query import RemoteInstance
from cxr_cad.pacs.scp import accepted_syntaxes

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

__all__ = ["GET_SYNTAXES", "MoveDestination", "c_get", "c_move", "final_status", "get_requestor", "store_into"]

log = logging.getLogger(__name__)

#: Transfer syntaxes proposed for C-GET sub-operations, one presentation context each.
GET_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
MAX_CONTEXTS = 128

#: ``{SOP UID: (reason code, detail)}`` for instances a C-GET/C-MOVE says did not come; None when it did.
Statuses = dict[str, tuple[str, str] | None]


def store_into(folder_of: Callable[[str], Path | None]) -> Callable:
    """An ``EVT_C_STORE`` handler writing each instance asked for to ``folder_of(SOP UID)/<SOP UID>.dcm``."""

    def on_store(event) -> int:
        sop = str(event.request.AffectedSOPInstanceUID or "")
        folder = folder_of(sop)
        if folder is None:
            log.warning("DIMSE: the archive sent instance %s, which was not asked for; discarded", sop)
            return 0x0000
        try:
            atomic_write_bytes(folder / f"{sop}.dcm", event.encoded_dataset(include_meta=True))
        except Exception as exc:  # noqa: BLE001 - answered as out of resources; the instance is FETCH_FAILED
            log.error("DIMSE: cannot store instance %s: %s", sop, exc)
            return 0xA700
        return 0x0000

    return on_store


def get_requestor(calling_aet: str, instances: Sequence[RemoteInstance]) -> tuple[AE, list]:
    """The AE proposing C-GET and, per SOP Class of ``instances``, the storage contexts with the
    SCP role; and the role selection items (``ext_neg``) for the association."""
    classes = sorted({i.sop_class_uid for i in instances if i.sop_class_uid})
    per_class = max(1, min(len(GET_SYNTAXES), (MAX_CONTEXTS - 1) // max(1, len(classes))))
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for cls in classes:
        for ts in GET_SYNTAXES[:per_class]:
            ae.add_requested_context(cls, ts)
    return ae, [build_role(cls, scp_role=True) for cls in classes]


def _image_identifier(inst: RemoteInstance):
    keys = {
        "StudyInstanceUID": inst.study_instance_uid,
        "SeriesInstanceUID": inst.series_instance_uid,
        "SOPInstanceUID": inst.sop_instance_uid,
    }
    return identifier("IMAGE", keys, [])


def c_get(assoc, instances: Sequence[RemoteInstance]) -> Statuses:
    """One C-GET per instance over ``assoc`` (its C-STORE handler writes the files)."""
    return {
        inst.sop_instance_uid: final_status(
            "C-GET", assoc.send_c_get(_image_identifier(inst), StudyRootQueryRetrieveInformationModelGet)
        )
        for inst in instances
    }


def c_move(assoc, instances: Sequence[RemoteInstance], dest_aet: str) -> Statuses:
    """One C-MOVE per instance to ``dest_aet`` over ``assoc``."""
    return {
        inst.sop_instance_uid: final_status(
            "C-MOVE", assoc.send_c_move(_image_identifier(inst), dest_aet, StudyRootQueryRetrieveInformationModelMove)
        )
        for inst in instances
    }


class MoveDestination:
    """Our storage SCP receiving C-MOVE sub-operations into the folder each expected instance was asked for."""

    def __init__(self, aet: str, host: str, port: int):
        self.aet, self.host, self.port = aet, host, port
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()
        self._expected: dict[str, Path] = {}  # SOP UID -> folder

    def start(self) -> None:
        """Listen (once); CxrCadError when the port cannot be bound."""
        if self._server is not None:
            return
        ae = AE(ae_title=self.aet)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, accepted_syntaxes())
        ae.require_called_aet = True

        def folder_of(sop: str) -> Path | None:
            with self._lock:
                return self._expected.get(sop)

        handler = store_into(folder_of)
        try:
            self._server = ae.start_server(
                (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)]
            )
        except OSError as exc:
            raise CxrCadError(
                f"--move-to: cannot listen on {self.host}:{self.port} for C-MOVE ({exc.strerror or exc}); "
                "choose another port"
            ) from exc
        log.info("C-MOVE destination %s listening on %s:%d", self.aet, self.host, self.port)

    def expect(self, instances: Sequence[RemoteInstance], folder: Path) -> None:
        with self._lock:
            self._expected.update((i.sop_instance_uid, folder) for i in instances)

    def forget(self, instances: Sequence[RemoteInstance]) -> None:
        with self._lock:
            for i in instances:
                self._expected.pop(i.sop_instance_uid, None)

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def final_status(op: str, responses) -> tuple[str, str] | None:
    """The last status of a C-GET/C-MOVE as (reason, detail) when it says the instance did not come, else None."""
    code, status = -1, None
    for st, _ in responses:
        if st:
            status, code = st, int(getattr(st, "Status", -1))
    if status is None:
        raise ConnectionError(f"{op}: no response (association lost)")
    completed = int(getattr(status, "NumberOfCompletedSuboperations", 0) or 0)
    failed = int(getattr(status, "NumberOfFailedSuboperations", 0) or 0)
    warning = int(getattr(status, "NumberOfWarningSuboperations", 0) or 0)
    if completed + failed + warning == 0 and code not in (0xA701, 0xA702, 0xA801):
        return NOT_FOUND_IN_ARCHIVE, f"{op} status 0x{code & 0xFFFF:04X}: no instance matched"
    if code in (0x0000, 0xB000) and failed == 0:
        return None
    return FETCH_FAILED, f"{op} status 0x{code & 0xFFFF:04X} ({failed} failed sub-operation(s))"

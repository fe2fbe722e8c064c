"""An archive reached over DIMSE (pynetdicom) as a source: C-FIND selects, C-GET or C-MOVE fetches.

A source is written ``dimse://AET@HOST:PORT`` (the archive's AE title, address and port).

Query (C-FIND, Study Root Query/Retrieve Information Model, PS3.4 C.6.2)
    ``--query KEYWORD=VALUE`` filters are split by the level their attribute belongs to and
    sent down the hierarchy in one association: STUDY level (patient and study attributes,
    e.g. ``PatientID``, ``StudyDate``, ``AccessionNumber``), then SERIES level for each
    matching study (``Modality``, ``BodyPartExamined``...), then IMAGE level for each matching
    series (``SOPClassUID``, ``InstanceNumber``...). Values go as DICOM matching keys, so
    ``*`` and ``?`` are wildcards and ``20240101-20240131`` a range (PS3.4 C.2.2.2).
Retrieve
    C-GET (default): one association per chunk proposing, for each SOP Class of the chunk, one
    presentation context per transfer syntax with the SCP role (PS3.7 D.3.3.4), so the archive
    sends each instance in the syntax it holds it in; one C-GET per instance at IMAGE level.
    C-MOVE (``move_to``): a storage SCP of ours is started on ``(AET, host, port)`` and the
    archive, which must know that AE title (Orthanc: ``DicomModalities``), is asked to C-MOVE
    each instance there. Either way the bytes are written unchanged to ``<folder>/<SOP UID>.dcm``.
Failures
    An association that cannot be established is retried with back-off
    (``CXR_CAD_DIMSE_RETRIES``, default 4: 0.5, 1, 2, 4 s); after that the instances are
    ``NETWORK_ERROR``. A C-GET/C-MOVE that completes without the instance is ``FETCH_FAILED``
    (with the status), or ``NOT_FOUND_IN_ARCHIVE`` when nothing matched. A C-FIND that cannot
    run is a CxrCadError naming the archive (nothing can be accounted for without the list).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
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
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from cxr_cad.core.atomic import atomic_write_bytes
from cxr_cad.errors import ConfigError, CxrCadError
from cxr_cad.pacs.audit import AuditLog
from cxr_cad.pacs.client import FETCH_FAILED, NETWORK_ERROR, NOT_FOUND_IN_ARCHIVE
from cxr_cad.pacs.query import RemoteInstance
from cxr_cad.pacs.scp import accepted_syntaxes

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

_List = list  # ``list`` is a method name of DimseSource

__all__ = ["PREFIX", "DimseNode", "DimseOptions", "DimseSource", "is_dimse", "parse_dimse_url", "parse_move_to"]

log = logging.getLogger(__name__)

PREFIX = "dimse://"
RETRIES_ENV = "CXR_CAD_DIMSE_RETRIES"

#: Attributes matched at SERIES / IMAGE level; every other keyword is a STUDY-level key (with the
#: patient attributes, which the Study Root model carries at STUDY level).
SERIES_KEYS = frozenset(
    {
        "Modality",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesDescription",
        "SeriesDate",
        "SeriesTime",
        "BodyPartExamined",
        "ProtocolName",
        "Laterality",
        "PerformedProcedureStepStartDate",
    }
)
IMAGE_KEYS = frozenset(
    {
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "ContentDate",
        "ContentTime",
        "AcquisitionDate",
        "ImageType",
        "ViewPosition",
    }
)
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


def is_dimse(source: str | os.PathLike) -> bool:
    """True for a source written ``dimse://AET@HOST:PORT``."""
    return str(source).startswith(PREFIX)


def _aet_ok(aet: str) -> bool:
    return 0 < len(aet) <= 16 and aet.isprintable() and "\\" not in aet and aet.strip() == aet


@dataclass(frozen=True)
class DimseNode:
    """An archive's AE title, host and port."""

    aet: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"{PREFIX}{self.aet}@{self.host}:{self.port}"


def parse_dimse_url(source: str) -> DimseNode:
    """``dimse://PACS@10.0.0.5:104`` -> DimseNode; ConfigError (a UsageError) when malformed."""
    text = str(source)[len(PREFIX) :] if is_dimse(source) else str(source)
    aet, sep, rest = text.rstrip("/").partition("@")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or not host or not port.isdigit() or not _aet_ok(aet) or int(port) > 65535:
        raise ConfigError(
            f"{source!r} is not a DIMSE source; write dimse://AET@HOST:PORT (AE title of 1-16 "
            "characters), e.g. dimse://ORTHANC@127.0.0.1:4242"
        )
    return DimseNode(aet, host.strip("[]"), int(port))


def parse_move_to(text: str) -> tuple[str, str, int]:
    """``--move-to CXRCAD@11113`` or ``CXRCAD@0.0.0.0:11113`` -> (AE title, bind host, port).

    The AE title is the C-MOVE destination the archive must know; our storage SCP listens on
    ``host`` (default 127.0.0.1) and ``port``. ConfigError when malformed.
    """
    aet, sep, rest = str(text).partition("@")
    host, colon, port = rest.rpartition(":")
    host = host if colon else "127.0.0.1"
    if not sep or not _aet_ok(aet) or not port.isdigit() or not host or int(port) > 65535:
        raise ConfigError(f"--move-to {text!r} is not AET@PORT or AET@HOST:PORT (e.g. CXRCAD@11113)")
    return aet, host, int(port)


@dataclass(frozen=True)
class DimseOptions:
    """How we speak to the archive: our AE title, C-GET or C-MOVE (``move_to``), time-outs, retries."""

    calling_aet: str = "CXRCAD"
    move_to: tuple[str, str, int] | None = None
    timeout_s: float = 60.0
    retries: int | None = None

    def n_retries(self) -> int:
        if self.retries is not None:
            return max(0, self.retries)
        try:
            return max(0, int(os.environ.get(RETRIES_ENV, "4")))
        except ValueError as exc:
            raise ConfigError(f"{RETRIES_ENV} must be a whole number of retries") from exc


def split_levels(query: dict[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(STUDY, SERIES, IMAGE) level matching keys of ``query``."""
    study = {k: v for k, v in query.items() if k not in SERIES_KEYS and k not in IMAGE_KEYS}
    series = {k: v for k, v in query.items() if k in SERIES_KEYS}
    image = {k: v for k, v in query.items() if k in IMAGE_KEYS}
    return study, series, image


def _identifier(level: str, keys: dict[str, str], returned: Sequence[str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key in returned:
        setattr(ds, key, "")
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


class DimseSource:
    """A DIMSE archive for :func:`cxr_cad.pacs.source.stream_chunks` (``list``, ``fetch``, ``address``)."""

    kind = "DIMSE"

    def __init__(self, node: DimseNode, options: DimseOptions | None = None, audit: AuditLog | None = None):
        self.node = node
        self.options = options or DimseOptions()
        self.audit = audit or AuditLog(None)
        self.base = node.url
        self._move_scp: ThreadedAssociationServer | None = None
        self._move_lock = threading.Lock()
        self._expected: dict[str, Path] = {}  # SOP UID -> folder, for C-MOVE sub-operations
        self._n_retries = self.options.n_retries()

    def address(self, inst: RemoteInstance) -> str:
        """The instance's address in predictions.csv: ``dimse://AET@HOST:PORT/studies/.../instances/<SOP UID>``."""
        return (
            f"{self.base}/studies/{inst.study_instance_uid}/series/{inst.series_instance_uid}"
            f"/instances/{inst.sop_instance_uid}"
        )

    # -- associations ------------------------------------------------------------------------
    @contextmanager
    def _association(self, ae: AE, purpose: str, **kwargs) -> Iterator:
        """An established association (retried with back-off), released (or aborted) on exit."""
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.options.timeout_s
        assoc = None
        for attempt in range(self._n_retries + 1):
            assoc = ae.associate(self.node.host, self.node.port, ae_title=self.node.aet, **kwargs)
            if assoc.is_established:
                break
            if attempt < self._n_retries:
                time.sleep(0.5 * 2**attempt)
        assert assoc is not None
        outcome = "success" if assoc.is_established else "failure"
        self.audit.record(
            "association",
            outcome,
            role="requestor",
            purpose=purpose,
            calling_ae=self.options.calling_aet,
            called_ae=self.node.aet,
            peer=f"{self.node.host}:{self.node.port}",
            detail="" if assoc.is_established else _why_not(assoc),
        )
        if not assoc.is_established:
            raise ConnectionError(f"association with {self.node.url} for {purpose}: {_why_not(assoc)}")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    # -- C-FIND ------------------------------------------------------------------------------
    def list(self, query: dict[str, str]) -> _List[RemoteInstance]:
        """Every instance matching ``query`` (C-FIND STUDY -> SERIES -> IMAGE), sorted, each once.

        Raises CxrCadError when the archive cannot be reached or refuses the query.
        """
        study_keys, series_keys, image_keys = split_levels(query)
        ae = AE(ae_title=self.options.calling_aet)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        found: set[RemoteInstance] = set()
        try:
            with self._association(ae, "C-FIND") as assoc:
                for st in self._find(assoc, _identifier("STUDY", study_keys, ["StudyInstanceUID"])):
                    s_keys = {"StudyInstanceUID": st.StudyInstanceUID, **series_keys}
                    for se in self._find(assoc, _identifier("SERIES", s_keys, ["SeriesInstanceUID"])):
                        i_keys = {
                            "StudyInstanceUID": st.StudyInstanceUID,
                            "SeriesInstanceUID": se.SeriesInstanceUID,
                            **image_keys,
                        }
                        for im in self._find(assoc, _identifier("IMAGE", i_keys, ["SOPInstanceUID", "SOPClassUID"])):
                            found.add(
                                RemoteInstance(
                                    str(st.StudyInstanceUID),
                                    str(se.SeriesInstanceUID),
                                    str(im.SOPInstanceUID),
                                    str(im.get("SOPClassUID", "")),
                                )
                            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CxrCadError(
                f"C-FIND query of {self.node.url} failed ({exc}); check the AE titles (ours: "
                f"{self.options.calling_aet}, the archive must accept it), the address and that the archive is up"
            ) from exc
        log.info("C-FIND: %d instance(s) match %d filter(s)", len(found), len(query))
        return sorted(i for i in found if i.sop_instance_uid)

    def _find(self, assoc, identifier: Dataset) -> _List[Dataset]:
        out: _List[Dataset] = []
        for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            code = int(getattr(status, "Status", -1)) if status else -1
            if code in (0xFF00, 0xFF01) and ds is not None:
                out.append(ds)
            elif code != 0x0000:
                raise RuntimeError(
                    f"C-FIND at {identifier.QueryRetrieveLevel} level answered status 0x{code & 0xFFFF:04X}"
                )
        return out

    # -- C-GET / C-MOVE ----------------------------------------------------------------------
    def fetch(
        self, instances: Sequence[RemoteInstance], folder: Path
    ) -> tuple[dict[str, Path], dict[str, tuple[str, str]]]:
        """Fetch ``instances`` into ``folder``: ({SOP UID: file}, {SOP UID: (reason, detail)}). Never raises for one."""
        folder.mkdir(parents=True, exist_ok=True)
        if not instances:
            return {}, {}
        try:
            if self.options.move_to is not None:
                statuses = self._move(instances, folder)
            else:
                statuses = self._get(instances, folder)
        except (ConnectionError, RuntimeError, OSError) as exc:
            detail = f"{type(exc).__name__}: {str(exc)[:200]}"
            statuses = {i.sop_instance_uid: (NETWORK_ERROR, detail) for i in instances}
        files: dict[str, Path] = {}
        failed: dict[str, tuple[str, str]] = {}
        for inst in instances:
            sop = inst.sop_instance_uid
            path = folder / f"{sop}.dcm"
            if path.exists():
                files[sop] = path
            else:
                failed[sop] = statuses.get(sop) or (FETCH_FAILED, "the archive did not send it")
                log.warning("DIMSE: instance %s not fetched: %s (%s)", sop, *failed[sop])
        return files, failed

    def _store_into(self, folder_of: Callable[[str], Path | None]) -> Callable:
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

    def _get(self, instances: Sequence[RemoteInstance], folder: Path) -> dict[str, tuple[str, str] | None]:
        classes = sorted({i.sop_class_uid for i in instances if i.sop_class_uid})
        per_class = max(1, min(len(GET_SYNTAXES), (MAX_CONTEXTS - 1) // max(1, len(classes))))
        ae = AE(ae_title=self.options.calling_aet)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for cls in classes:
            for ts in GET_SYNTAXES[:per_class]:
                ae.add_requested_context(cls, ts)
        roles = [build_role(cls, scp_role=True) for cls in classes]
        wanted = {i.sop_instance_uid for i in instances}
        handler = self._store_into(lambda sop: folder if sop in wanted else None)
        statuses: dict[str, tuple[str, str] | None] = {}
        with self._association(ae, "C-GET", ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, handler)]) as assoc:
            for inst in instances:
                ident = _identifier(
                    "IMAGE",
                    {
                        "StudyInstanceUID": inst.study_instance_uid,
                        "SeriesInstanceUID": inst.series_instance_uid,
                        "SOPInstanceUID": inst.sop_instance_uid,
                    },
                    [],
                )
                statuses[inst.sop_instance_uid] = _final(
                    "C-GET", assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)
                )
        self.audit_retrieve("C-GET", instances, folder, statuses)
        return statuses

    def _move(self, instances: Sequence[RemoteInstance], folder: Path) -> dict[str, tuple[str, str] | None]:
        assert self.options.move_to is not None
        dest_aet = self.options.move_to[0]
        self._start_move_scp()
        with self._move_lock:
            self._expected.update((i.sop_instance_uid, folder) for i in instances)
        ae = AE(ae_title=self.options.calling_aet)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        statuses: dict[str, tuple[str, str] | None] = {}
        try:
            with self._association(ae, "C-MOVE") as assoc:
                for inst in instances:
                    ident = _identifier(
                        "IMAGE",
                        {
                            "StudyInstanceUID": inst.study_instance_uid,
                            "SeriesInstanceUID": inst.series_instance_uid,
                            "SOPInstanceUID": inst.sop_instance_uid,
                        },
                        [],
                    )
                    statuses[inst.sop_instance_uid] = _final(
                        "C-MOVE", assoc.send_c_move(ident, dest_aet, StudyRootQueryRetrieveInformationModelMove)
                    )
        finally:
            with self._move_lock:
                for i in instances:
                    self._expected.pop(i.sop_instance_uid, None)
        self.audit_retrieve("C-MOVE", instances, folder, statuses)
        return statuses

    def _start_move_scp(self) -> None:
        if self._move_scp is not None:
            return
        aet, host, port = self.options.move_to  # type: ignore[misc]
        ae = AE(ae_title=aet)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, accepted_syntaxes())
        ae.require_called_aet = True

        def folder_of(sop: str) -> Path | None:
            with self._move_lock:
                return self._expected.get(sop)

        handler = self._store_into(folder_of)
        try:
            self._move_scp = ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)])
        except OSError as exc:
            raise CxrCadError(
                f"--move-to: cannot listen on {host}:{port} for C-MOVE ({exc.strerror or exc}); choose another port"
            ) from exc
        log.info("C-MOVE destination %s listening on %s:%d", aet, host, port)

    def audit_retrieve(self, how: str, instances, folder: Path, statuses: dict) -> None:
        got = sum(1 for i in instances if (folder / f"{i.sop_instance_uid}.dcm").exists())
        self.audit.record(
            "retrieve",
            "success" if got == len(instances) else "failure",
            protocol=how,
            source=self.base,
            calling_ae=self.options.calling_aet,
            called_ae=self.node.aet,
            n_requested=len(instances),
            n_received=got,
            study_instance_uids=sorted({i.study_instance_uid for i in instances}),
        )

    def close(self) -> None:
        """Stop the C-MOVE destination, if one was started."""
        if self._move_scp is not None:
            self._move_scp.shutdown()
            self._move_scp = None


def _why_not(assoc) -> str:
    if assoc.is_rejected:
        return "association rejected by the archive (check the AE titles)"
    if assoc.is_aborted:
        return "association aborted"
    return "no association (connection refused or timed out)"


def _final(op: str, responses) -> tuple[str, str] | None:
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

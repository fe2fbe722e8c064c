"""An archive reached over DIMSE (pynetdicom) as a source: C-FIND selects, C-GET or C-MOVE fetches.

A source is written ``dimse://AET@HOST:PORT`` (the archive's AE title, address and port).
This module is the source class (:class:`DimseSource`), its addresses and options and the
associations; the query is :mod:`cxr_cad.pacs.dimse_find`, the retrieve (and our C-MOVE
destination) :mod:`cxr_cad.pacs.dimse_retrieve`.

Query (C-FIND, Study Root Query/Retrieve Information Model, PS3.4 C.6.2)
    ``--query KEYWORD=VALUE`` filters are split by the level their attribute belongs to and
    sent down the hierarchy in one association: STUDY, then SERIES for each matching study,
    then IMAGE for each matching series. Values go as DICOM matching keys, so ``*`` and ``?``
    are wildcards and ``20240101-20240131`` a range (PS3.4 C.2.2.2).
Retrieve
    C-GET (default): one association per chunk, the archive sends each instance in the syntax
    it holds it in. C-MOVE (``move_to``): a storage SCP of ours is started on
    ``(AET, host, port)`` and the archive, which must know that AE title (Orthanc:
    ``DicomModalities``), is asked to C-MOVE each instance there. Either way the bytes are
    written unchanged to ``<folder>/<SOP UID>.dcm``.
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
import ssl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import by pynetdicom
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from cxr_cad.errors import ConfigError, CxrCadError
from cxr_cad.pacs.audit import AuditLog
from cxr_cad.pacs.client import FETCH_FAILED, NETWORK_ERROR
from cxr_cad.pacs.dimse_find import find_instances
from cxr_cad.pacs.dimse_retrieve import MoveDestination, Statuses, c_get, c_move, get_requestor, store_into
from cxr_cad.pacs.query import RemoteInstance

_List = list  # ``list`` is a method name of DimseSource

__all__ = [
    "PREFIX",
    "DimseNode",
    "DimseOptions",
    "DimseSource",
    "client_tls_context",
    "is_dimse",
    "parse_dimse_url",
    "parse_move_to",
]

log = logging.getLogger(__name__)

PREFIX = "dimse://"
RETRIES_ENV = "CXR_CAD_DIMSE_RETRIES"


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
    """How we speak to the archive: our AE title, C-GET or C-MOVE (``move_to``), time-outs, retries,
    and DICOM TLS (:func:`client_tls_context`): ``tls_ca`` verifies the archive's certificate (the
    system's CAs when only ``tls_cert``/``tls_key`` are given), ``tls_cert``/``tls_key`` are ours
    for an archive that wants client certificates. Any of the three turns TLS on."""

    calling_aet: str = "CXRCAD"
    move_to: tuple[str, str, int] | None = None
    timeout_s: float = 60.0
    retries: int | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert or self.tls_key)

    def n_retries(self) -> int:
        if self.retries is not None:
            return max(0, self.retries)
        try:
            return max(0, int(os.environ.get(RETRIES_ENV, "4")))
        except ValueError as exc:
            raise ConfigError(f"{RETRIES_ENV} must be a whole number of retries") from exc


def client_tls_context(ca: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ client context for DICOM TLS (PS3.15 B.1): the archive's certificate is checked
    against ``ca`` (default: the system's CAs) and its host name; ``cert``/``key`` are our client
    certificate. ConfigError naming the file that cannot be used."""
    if bool(cert) != bool(key):
        raise ConfigError("DICOM TLS: --tls-cert and --tls-key go together")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-ca: cannot load {ca} ({exc})") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert and key:
        try:
            ctx.load_cert_chain(certfile=cert, keyfile=key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--tls-cert/--tls-key: cannot load {cert} with {key} ({exc})") from exc
    return ctx


class DimseSource:
    """A DIMSE archive for :func:`cxr_cad.pacs.source.stream_chunks` (``list``, ``fetch``, ``address``)."""

    kind = "DIMSE"

    def __init__(self, node: DimseNode, options: DimseOptions | None = None, audit: AuditLog | None = None):
        self.node = node
        self.options = options or DimseOptions()
        self.audit = audit or AuditLog(None)
        self.base = node.url
        self._move_scp: MoveDestination | None = None  # our C-MOVE destination, started on first use
        self._n_retries = self.options.n_retries()
        o = self.options
        self._tls = (client_tls_context(o.tls_ca, o.tls_cert, o.tls_key), node.host) if o.tls else None

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
            assoc = ae.associate(self.node.host, self.node.port, ae_title=self.node.aet, tls_args=self._tls, **kwargs)
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
            tls=self._tls is not None,
            detail="" if assoc.is_established else _why_not(assoc),
        )
        if not assoc.is_established:
            raise ConnectionError(f"association with {self.node.url} for {purpose}: {_why_not(assoc)}")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def echo(self) -> None:
        """C-ECHO (Verification): the archive answers over an association made as for a query
        (AE titles, TLS); ConnectionError when it cannot be reached or does not answer success."""
        ae = AE(ae_title=self.options.calling_aet)
        ae.add_requested_context(Verification)
        with self._association(ae, "C-ECHO") as assoc:
            status = assoc.send_c_echo()
        code = int(getattr(status, "Status", -1)) if status else -1
        if code != 0x0000:
            raise ConnectionError(f"C-ECHO to {self.node.url} answered status {code}")

    # -- C-FIND ------------------------------------------------------------------------------
    def list(self, query: dict[str, str]) -> _List[RemoteInstance]:
        """Every instance matching ``query`` (C-FIND STUDY -> SERIES -> IMAGE), sorted, each once.

        Raises CxrCadError when the archive cannot be reached or refuses the query.
        """
        ae = AE(ae_title=self.options.calling_aet)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        try:
            with self._association(ae, "C-FIND") as assoc:
                found = find_instances(assoc, query)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CxrCadError(
                f"C-FIND query of {self.node.url} failed ({exc}); check the AE titles (ours: "
                f"{self.options.calling_aet}, the archive must accept it), the address and that the archive is up"
            ) from exc
        log.info("C-FIND: %d instance(s) match %d filter(s)", len(found), len(query))
        return sorted(i for i in found if i.sop_instance_uid)

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

    def _get(self, instances: Sequence[RemoteInstance], folder: Path) -> Statuses:
        ae, roles = get_requestor(self.options.calling_aet, instances)
        wanted = {i.sop_instance_uid for i in instances}
        handler = store_into(lambda sop: folder if sop in wanted else None)
        with self._association(ae, "C-GET", ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, handler)]) as assoc:
            statuses = c_get(assoc, instances)
        self.audit_retrieve("C-GET", instances, folder, statuses)
        return statuses

    def _move(self, instances: Sequence[RemoteInstance], folder: Path) -> Statuses:
        assert self.options.move_to is not None
        if self._move_scp is None:
            self._move_scp = MoveDestination(*self.options.move_to)
        self._move_scp.start()
        self._move_scp.expect(instances, folder)
        ae = AE(ae_title=self.options.calling_aet)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        try:
            with self._association(ae, "C-MOVE") as assoc:
                statuses = c_move(assoc, instances, self.options.move_to[0])
        finally:
            self._move_scp.forget(instances)
        self.audit_retrieve("C-MOVE", instances, folder, statuses)
        return statuses

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

"""The results archive ``--dicom-out`` talks to: send the objects of a run (STOW-RS with
``--stow``, C-STORE with ``--forward``; the status of each object goes into its ``objects.csv``
row, so a rerun sends what was not sent), and find the latest revision of a result the archive
already holds (QIDO-RS + WADO-RS metadata, docs/conformance.md "Results that replace earlier
ones"). Used by :class:`cxr_cad.pacs.output.DicomOutput`; the objects themselves are built by
:mod:`cxr_cad.pacs.sr` and :mod:`cxr_cad.pacs.sc`."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage
from pynetdicom import AE

from cxr_cad.pacs.client import network_reason

log = logging.getLogger(__name__)

__all__ = ["STOW_FAILED", "FORWARD_FAILED", "forward_objects", "latest_in_archive", "stow_objects"]

STOW_FAILED = "STOW_FAILED"
FORWARD_FAILED = "FORWARD_FAILED"

#: What :meth:`~cxr_cad.pacs.output.DicomOutput.write` hands over: (``objects.csv`` row, the
#: datasets written for it) per source image; the row's ``stow`` (and ``reason``/``detail`` on
#: failure) are set here.
Records = list[tuple[dict, list]]


def stow_objects(client: Any, recs: Records) -> None:
    """STOW-RS the new objects of ``recs`` in one request; the status goes into each row."""
    datasets = [ds for _, sets in recs for ds in sets]
    try:
        client.store_instances(datasets)
        status, detail = "sent", ""
    except Exception as exc:  # noqa: BLE001 - recorded per object; the rerun sends them again
        reason, detail = network_reason(exc)
        status = STOW_FAILED
        log.warning(
            "STOW-RS of %d object(s) failed: %s (%s); rerun the same command to send them",
            len(datasets),
            reason,
            detail,
        )
    for rec, sets in recs:
        if sets:
            rec["stow"] = status
            if status != "sent":
                rec.update(reason=STOW_FAILED, detail=detail)


def forward_objects(forward: tuple[str, str, int], calling_aet: str, recs: Records) -> None:
    """C-STORE the new objects of ``recs`` to ``forward`` = (AE title, host, port) (pynetdicom
    SCU, one association); the status goes into each row."""
    aet, host, port = forward
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(ComprehensiveSRStorage)
    ae.add_requested_context(SecondaryCaptureImageStorage)
    assoc = ae.associate(host, port, ae_title=aet)
    try:
        for rec, sets in recs:
            if not sets:
                continue
            codes = []
            for ds in sets:
                status = assoc.send_c_store(ds) if assoc.is_established else None
                codes.append(getattr(status, "Status", None))
            ok = all(c == 0x0000 for c in codes)
            rec["stow"] = "forwarded" if ok else FORWARD_FAILED
            if not ok:
                rec.update(
                    reason=FORWARD_FAILED,
                    detail=f"C-STORE to {aet}@{host}:{port}: "
                    + ("association refused or aborted" if not assoc.is_established else f"status {codes}"),
                )
                log.warning("forward of the objects of %s failed: %s", rec["source_sop_instance_uid"], rec["detail"])
    finally:
        if assoc.is_established:
            assoc.release()


def latest_in_archive(
    client: Any, study: str, uid_of: Callable[[int], str], limit: int = 32
) -> tuple[int, str, str] | None:
    """The latest revision of a result in a DICOMweb archive: ``(k, SOP UID, result digest)`` of
    the highest ``k`` whose SR ``uid_of(k)`` the archive holds in ``study`` (QIDO-RS, then its
    metadata with WADO-RS), or None. Network errors count as "not found" (a new revision 1)."""
    found = None
    for k in range(1, limit + 1):
        uid = uid_of(k)
        try:
            hits = client.search_for_instances(study_instance_uid=study, search_filters={"SOPInstanceUID": uid})
        except Exception:  # noqa: BLE001 - an archive that cannot answer gets a fresh result
            return found
        hits = [h for h in hits if (h.get("00080018", {}).get("Value") or [""])[0] == uid]
        if not hits:
            return found
        series = hits[0]["0020000E"]["Value"][0]
        digest = ""
        try:
            meta = client.retrieve_instance_metadata(study, series, uid)
            found_digest = re.search(r"result digest ([0-9a-f]{16})", json.dumps(meta))
            digest = found_digest.group(1) if found_digest else ""
        except Exception:  # noqa: BLE001 - without its digest the archived one is replaced
            pass
        found = (k, uid, digest)
    return found

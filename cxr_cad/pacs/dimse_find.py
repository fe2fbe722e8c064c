"""C-FIND for :class:`cxr_cad.pacs.dimse.DimseSource`: the Study Root query down the hierarchy.

``--query KEYWORD=VALUE`` filters are split by the level their attribute belongs to
(:func:`split_levels`) and sent in one association: STUDY level (patient and study attributes,
e.g. ``PatientID``, ``StudyDate``, ``AccessionNumber``), then SERIES level for each matching
study (``Modality``, ``BodyPartExamined``...), then IMAGE level for each matching series
(``SOPClassUID``, ``InstanceNumber``...). Values go as DICOM matching keys, so ``*`` and ``?``
are wildcards and ``20240101-20240131`` a range (PS3.4 C.2.2.2).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import by pynetdicom
    StudyRootQueryRetrieveInformationModelFind,
)

from cxr_cad.pacs.query import RemoteInstance

__all__ = ["IMAGE_KEYS", "SERIES_KEYS", "find_instances", "identifier", "split_levels"]

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


def split_levels(query: dict[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(STUDY, SERIES, IMAGE) level matching keys of ``query``."""
    study = {k: v for k, v in query.items() if k not in SERIES_KEYS and k not in IMAGE_KEYS}
    series = {k: v for k, v in query.items() if k in SERIES_KEYS}
    image = {k: v for k, v in query.items() if k in IMAGE_KEYS}
    return study, series, image


def identifier(level: str, keys: dict[str, str], returned: Sequence[str]) -> Dataset:
    """A query/retrieve identifier at ``level``: the matching ``keys`` and empty ``returned`` keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key in returned:
        setattr(ds, key, "")
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


def find_instances(assoc, query: dict[str, str]) -> set[RemoteInstance]:
    """Every instance matching ``query`` over the established ``assoc`` (STUDY -> SERIES -> IMAGE).

    Raises RuntimeError when the archive answers a C-FIND with a failure status.
    """
    study_keys, series_keys, image_keys = split_levels(query)
    found: set[RemoteInstance] = set()
    for st in _find(assoc, identifier("STUDY", study_keys, ["StudyInstanceUID"])):
        s_keys = {"StudyInstanceUID": st.StudyInstanceUID, **series_keys}
        for se in _find(assoc, identifier("SERIES", s_keys, ["SeriesInstanceUID"])):
            i_keys = {
                "StudyInstanceUID": st.StudyInstanceUID,
                "SeriesInstanceUID": se.SeriesInstanceUID,
                **image_keys,
            }
            for im in _find(assoc, identifier("IMAGE", i_keys, ["SOPInstanceUID", "SOPClassUID"])):
                found.add(
                    RemoteInstance(
                        str(st.StudyInstanceUID),
                        str(se.SeriesInstanceUID),
                        str(im.SOPInstanceUID),
                        str(im.get("SOPClassUID", "")),
                    )
                )
    return found


def _find(assoc, ident: Dataset) -> list[Dataset]:
    out: list[Dataset] = []
    for status, ds in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind):
        code = int(getattr(status, "Status", -1)) if status else -1
        if code in (0xFF00, 0xFF01) and ds is not None:
            out.append(ds)
        elif code != 0x0000:
            raise RuntimeError(f"C-FIND at {ident.QueryRetrieveLevel} level answered status 0x{code & 0xFFFF:04X}")
    return out

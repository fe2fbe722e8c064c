"""Select instances in a DICOMweb archive with QIDO-RS, and fetch them with WADO-RS.

``--query`` filters are ``KEYWORD=VALUE`` pairs of DICOM attribute keywords, passed to the
archive as QIDO-RS search filters at the instance level, e.g. ``Modality=DX``,
``StudyDate=20240101-20240131`` (a DICOM date range), ``AccessionNumber=A123``,
``StudyInstanceUID=1.2.3``. Several filters must all match; a keyword pydicom does not know
is a usage error (listing every bad one).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.datadict import tag_for_keyword

from cxr_cad.core.atomic import atomic_write
from cxr_cad.errors import ConfigError
from cxr_cad.pacs.client import network_reason

if TYPE_CHECKING:
    from dicomweb_client import DICOMwebClient

log = logging.getLogger(__name__)

PAGE = 1000  # QIDO-RS results per request (limit/offset paging)
_UID_TAGS = {"study": "0020000D", "series": "0020000E", "sop": "00080018", "sop_class": "00080016"}


@dataclass(frozen=True, order=True)
class RemoteInstance:
    """One instance in the archive (sorted by study, series, SOP Instance UID)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""

    def url(self, base: str) -> str:
        """Its WADO-RS address: an identifier for predictions.csv (no credentials in it)."""
        return (
            f"dicomweb:{base}/studies/{self.study_instance_uid}/series/{self.series_instance_uid}"
            f"/instances/{self.sop_instance_uid}"
        )


def parse_query(items: Sequence[str] | None) -> dict[str, str]:
    """``["Modality=DX", "StudyDate=20240101-20240131"]`` -> a QIDO-RS filter dict.

    Raises ConfigError (a UsageError) listing every malformed item or unknown keyword.
    """
    out: dict[str, str] = {}
    problems: list[str] = []
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            problems.append(f"{item!r} is not KEYWORD=VALUE (e.g. Modality=DX)")
        elif tag_for_keyword(key) is None:
            problems.append(f"{key!r} is not a DICOM attribute keyword (e.g. StudyDate, AccessionNumber)")
        elif key in out and out[key] != value:
            problems.append(f"{key} is given twice ({out[key]!r} and {value!r})")
        else:
            out[key] = value
    if problems:
        raise ConfigError("--query: " + "; ".join(problems))
    return out


def _value(item: dict, key: str) -> str:
    values = item.get(_UID_TAGS[key], {}).get("Value") or [""]
    return str(values[0])


def list_instances(client: DICOMwebClient, filters: dict[str, str]) -> list[RemoteInstance]:
    """Every instance matching ``filters`` (QIDO-RS, paged), sorted, each once.

    Network failures after the client's retries propagate as ``requests`` exceptions; the
    caller turns them into an error naming the archive (nothing can be accounted for
    without the list).
    """
    found: set[RemoteInstance] = set()
    offset = 0
    while True:
        page = client.search_for_instances(
            search_filters=dict(filters), limit=PAGE, offset=offset, fields=["SOPClassUID"]
        )
        for item in page:
            inst = RemoteInstance(
                _value(item, "study"), _value(item, "series"), _value(item, "sop"), _value(item, "sop_class")
            )
            if inst.sop_instance_uid:
                found.add(inst)
        if len(page) < PAGE:
            break
        offset += len(page)
    log.info("QIDO-RS: %d instance(s) match %d filter(s)", len(found), len(filters))
    return sorted(found)


def fetch_to(client: DICOMwebClient, inst: RemoteInstance, folder: Path) -> Path:
    """WADO-RS one instance in its stored transfer syntax and write it to ``folder/<SOP UID>.dcm``.

    The dataset exists in memory only while it is written. Raises what the client raises.
    """
    ds = client.retrieve_instance(
        inst.study_instance_uid,
        inst.series_instance_uid,
        inst.sop_instance_uid,
        media_types=(("application/dicom", "*"),),
    )
    path = folder / f"{inst.sop_instance_uid}.dcm"
    atomic_write(path, lambda fh: ds.save_as(fh, enforce_file_format=True))
    return path


def fetch_many(
    client: DICOMwebClient, instances: Sequence[RemoteInstance], folder: Path, *, threads: int = 4
) -> tuple[dict[str, Path], dict[str, tuple[str, str]]]:
    """Fetch ``instances`` into ``folder`` with a few parallel requests.

    Returns ({SOP UID: file}, {SOP UID: (reason code, detail)} for the ones that failed
    after the retries). Never raises for one instance.
    """

    def one(inst):
        try:
            return inst, fetch_to(client, inst, folder), None
        except Exception as exc:  # noqa: BLE001 - every failure becomes a reason code, none stops the run
            return inst, None, network_reason(exc)

    files, failed = {}, {}
    folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for inst, path, why in pool.map(one, instances):
            if path is not None:
                files[inst.sop_instance_uid] = path
            else:
                failed[inst.sop_instance_uid] = why
                log.warning("WADO-RS: instance %s not fetched: %s (%s)", inst.sop_instance_uid, *why)
    return files, failed

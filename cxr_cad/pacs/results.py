"""The result outputs of a run together: ``--dicom-out`` (SR, SC, STOW-RS / C-STORE) and
``--fhir-out`` / ``--fhir-url``, fed the same scored rows, and what a rerun owes.

:class:`Outputs` hands each batch of scored rows to every sink with one cohort shift verdict.
:func:`record_outputs` keeps every output option a run folder was used with
(``OUT/.dicomweb/outputs.json``, credentials never); :func:`catch_up` produces, for instances
an earlier run scored, the outputs the current options ask for and they lack (a rerun with a
new ``--dicom-out``, ``--secondary-capture``, ``--stow`` or ``--fhir-out``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cxr_cad.core.atomic import atomic_write_text
from cxr_cad.pacs.client import parse_url
from cxr_cad.pacs.fhir import FhirOutOptions, FhirOutput
from cxr_cad.pacs.output import DicomOutOptions, DicomOutput, algorithm_info

if TYPE_CHECKING:
    from cxr_cad.pacs.query import RemoteInstance

log = logging.getLogger(__name__)

OUTPUTS_FILE = "outputs.json"


class ResultSink(Protocol):
    """What :class:`Outputs` and :func:`catch_up` need of an output."""

    def needs(self, sop: str) -> bool: ...

    def write(self, items: Iterable[tuple[dict, str, int]], cohort: dict | None = None) -> None: ...

    def summary_line(self) -> str: ...


class Outputs:
    """Several sinks fed the same scored rows with the same cohort verdict."""

    def __init__(self, sinks: Sequence[ResultSink]):
        self.sinks = list(sinks)

    def needs(self, sop: str) -> bool:
        return any(s.needs(sop) for s in self.sinks)

    def write(self, items: Iterable[tuple[dict, str, int]], cohort: dict | None = None) -> None:
        items = [i for i in items if self.needs(i[0]["sop_instance_uid"])]
        if not items:
            return
        if cohort is None:
            dicom = next((s for s in self.sinks if isinstance(s, DicomOutput)), None)
            if dicom is not None:
                cohort = dicom.cohort([row for row, _, _ in items])
        for sink in self.sinks:
            sink.write(items, cohort)

    def summary_line(self) -> str:
        return "; ".join(s.summary_line() for s in self.sinks)


def make_outputs(
    dicom: DicomOutOptions | None, fhir: FhirOutOptions | None, model_path: str | os.PathLike
) -> Outputs | None:
    """The sinks the options ask for (None: no output option)."""
    sinks: list[ResultSink] = []
    info = None
    if dicom is not None:
        writer = DicomOutput(dicom, model_path)
        info = writer.info
        sinks.append(writer)
    if fhir is not None:
        if info is None:
            from cxr_cad.model import load_bundle

            info = algorithm_info(load_bundle(model_path))
        sinks.append(FhirOutput(fhir, info))
    return Outputs(sinks) if sinks else None


def _public(url: str | None) -> str | None:
    """A URL as recorded: scheme, host, port and path only (no user, password or query)."""
    if not url:
        return None
    try:
        return parse_url(url) if url.startswith("dicomweb:") else url.split("?")[0].split("@")[-1]
    except Exception:  # noqa: BLE001 - a malformed one is refused elsewhere; never record it raw
        return "(unparsable)"


def record_outputs(state_dir: Path, dicom: DicomOutOptions | None, fhir: FhirOutOptions | None) -> dict:
    """Append this run's output options to ``state_dir/outputs.json`` (every option a run folder
    was used with, in order); returns them."""
    current = {
        "dicom_out": str(Path(dicom.out_dir).absolute()) if dicom else None,
        "secondary_capture": bool(dicom and dicom.secondary_capture),
        "stow": _public(dicom.stow_url) if dicom else None,
        "forward": list(dicom.forward) if dicom and dicom.forward else None,
        "fhir_out": str(Path(fhir.out_dir).absolute()) if fhir else None,
        "fhir_url": _public(fhir.url) if fhir else None,
    }
    path = state_dir / OUTPUTS_FILE
    history = json.loads(path.read_text()) if path.exists() else []
    if not history or history[-1] != current:
        history.append(current)
        atomic_write_text(path, json.dumps(history, indent=2))
    return current


class Fetcher(Protocol):
    """The part of :class:`cxr_cad.pacs.source.RemoteSource` :func:`catch_up` uses."""

    def fetch(
        self, instances: Sequence[RemoteInstance], folder: Path
    ) -> tuple[dict[str, Path], dict[str, tuple[str, str]]]: ...


def catch_up(
    sink: ResultSink,
    source: Fetcher,
    instances: Sequence[RemoteInstance],
    records: dict[str, dict],
    spool: Path,
    *,
    chunk_size: int = 32,
) -> int:
    """Produce the outputs ``sink`` lacks for instances an earlier run scored (``records``: the
    journal's prediction rows by SOP UID): fetch them again, ``chunk_size`` at a time, and
    write. Returns how many instances it fetched; one that cannot be fetched stays owed (the
    next rerun tries again)."""
    todo = [i for i in instances if i.sop_instance_uid in records and sink.needs(i.sop_instance_uid)]
    if not todo:
        return 0
    number = {i.sop_instance_uid: n + 1 for n, i in enumerate(instances)}
    log.info("%d instance(s) scored earlier lack outputs asked for now: fetching them again", len(todo))
    for s in range(0, len(todo), chunk_size):
        folder = spool / f"outputs-{s:06d}"
        files, failed = source.fetch(todo[s : s + chunk_size], folder)
        for sop, (reason, _detail) in failed.items():
            log.warning("cannot fetch instance %s again for its outputs (%s); rerun to retry", sop, reason)
        sink.write((records[sop], str(path), number[sop]) for sop, path in files.items())
        shutil.rmtree(folder, ignore_errors=True)
    return len(todo)


def write_predictions(sink: ResultSink, predictions_csv: Path) -> None:
    """The outputs of a finished local run: every row of ``predictions.csv``, with the cohort
    verdict of its ``shift.json`` when there is one."""
    with open(predictions_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    shift = Path(predictions_csv).with_name("shift.json")
    cohort = json.loads(shift.read_text()) if shift.exists() else None
    sink.write(((row, row["path"], k + 1) for k, row in enumerate(rows)), cohort)

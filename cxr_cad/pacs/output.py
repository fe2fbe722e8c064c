"""``--dicom-out``: one SR (and optionally one Secondary Capture) per scored DICOM image, and STOW-RS.

Layout of the output folder ``D``::

    D/<Study Instance UID>/SR_<SOP Instance UID>.dcm   TID 1500 report (cxr_cad.pacs.sr)
    D/<Study Instance UID>/SC_<SOP Instance UID>.dcm   Grad-CAM Secondary Capture (--secondary-capture)
    D/objects.csv          one row per source image: source SOP UID, what was written, STOW status, reason
    D/.run.json            this run's UID (seeds every series and instance UID written here)

UIDs are derived from the run UID and the source SOP Instance UID
(:func:`pydicom.uid.generate_uid` with ``entropy_srcs``), so a resumed run writes the same
objects again rather than duplicates, and a STOW-RS repeated after a failure replaces the same
instance. Each run (a new ``D``) gets new series: one SR series and one SC series per study.
A scored image that is not DICOM (PNG/JPEG) has no header to copy: ``objects.csv`` says
``NOT_DICOM_SOURCE`` and nothing is written for it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE

from cxr_cad.core.atomic import atomic_write, atomic_write_text
from cxr_cad.core.provenance import __version__
from cxr_cad.errors import OutputError, RejectedFile
from cxr_cad.pacs.client import make_client, network_reason
from cxr_cad.pacs.sc import build_sc, compose_overlay
from cxr_cad.pacs.sr import AlgorithmInfo, build_sr, evidence_header

if TYPE_CHECKING:
    from dicomweb_client import DICOMwebClient
    from pydicom.dataset import Dataset

    from cxr_cad.explain.gradcam import GradcamSource

log = logging.getLogger(__name__)

OBJECTS = "objects.csv"
OBJECT_COLUMNS = [
    "source_sop_instance_uid",
    "study_instance_uid",
    "sr_sop_instance_uid",
    "sr_file",
    "sc_sop_instance_uid",
    "sc_file",
    "stow",
    "reason",
    "detail",
]
NOT_DICOM_SOURCE = "NOT_DICOM_SOURCE"
STOW_FAILED = "STOW_FAILED"


@dataclass(frozen=True)
class DicomOutOptions:
    """``--dicom-out DIR`` [``--secondary-capture``] [``--stow URL``]."""

    out_dir: Path
    secondary_capture: bool = False
    stow_url: str | None = None
    forward: tuple[str, str, int] | None = None  # (AE title, host, port): C-STORE instead of STOW-RS
    calling_aet: str = "CXRCAD"


def _save_dataset(path: Path, ds: Dataset) -> None:
    """Write ``ds`` as a DICOM file (with File Meta) atomically."""
    atomic_write(path, lambda fh: ds.save_as(fh, enforce_file_format=True))


def _uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


class DicomOutput:
    """Writes the DICOM objects of one run; :meth:`write` takes scored rows with their source files."""

    def __init__(self, options: DicomOutOptions, model_path: str | os.PathLike):
        from cxr_cad.model import load_bundle

        self.options = options
        self.out = Path(options.out_dir).absolute()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create --dicom-out folder {self.out}: {exc.strerror}") from exc
        self.bundle = load_bundle(model_path)
        run_file = self.out / ".run.json"
        if run_file.exists():
            self.run_uid = json.loads(run_file.read_text())["run_uid"]
        else:
            self.run_uid = generate_uid()
            atomic_write_text(run_file, json.dumps({"run_uid": self.run_uid}))
        self.info = AlgorithmInfo(
            version=__version__,
            model_sha256=self.bundle.sha256,
            positive_class=str(self.bundle.positive_class),
            threshold=float(self.bundle.threshold),
            device_uid=_uid("cxr_cad device", self.bundle.sha256),
        )
        self.info.finding_code()  # fail now (UsageError) when the class has no SNOMED CT code
        self.client: DICOMwebClient | None = None
        if options.stow_url:
            self.client = make_client(options.stow_url)
        self._gradcam: GradcamSource | None = None
        self.rows: dict[str, dict] = self._read_objects()

    def _read_objects(self) -> dict[str, dict]:
        path = self.out / OBJECTS
        if not path.exists():
            return {}
        with open(path, newline="", encoding="utf-8") as fh:
            return {r["source_sop_instance_uid"]: r for r in csv.DictReader(fh)}

    def _save(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=OBJECT_COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows[k] for k in sorted(self.rows))
        atomic_write_text(self.out / OBJECTS, buf.getvalue())

    def _picture(self, path: str, probability: float, threshold: float):
        from cxr_cad.explain.gradcam import GradcamSource, gradcam_maps

        if self._gradcam is None:
            self._gradcam = GradcamSource.from_bundle(self.bundle)
        ((gray, heat),) = gradcam_maps(self._gradcam, [path])
        return compose_overlay(gray, heat, probability=probability, threshold=threshold)

    def _one(self, row: dict, source_path: str, number: int) -> tuple[dict, list]:
        """Build (and write) the objects of one scored row; returns its objects.csv row and datasets."""

        sop = row["sop_instance_uid"]
        rec = {
            "source_sop_instance_uid": sop,
            "study_instance_uid": row.get("study_instance_uid", ""),
            "stow": "",
            "reason": "",
            "detail": "",
        }
        header: Dataset
        try:
            header = pydicom.dcmread(source_path, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            rec.update(reason=NOT_DICOM_SOURCE, detail=f"{type(exc).__name__}: the source is not a DICOM file")
            return rec, []
        header = evidence_header(header)
        study = str(header.StudyInstanceUID)
        prob, thr = float(row["probability"]), float(row.get("threshold") or self.info.threshold)
        info = dataclasses.replace(self.info, threshold=thr)
        folder = self.out / study
        folder.mkdir(exist_ok=True)
        sr_uid = _uid(self.run_uid, sop, "SR")
        sr = build_sr(
            header,
            prob,
            info,
            series_instance_uid=_uid(self.run_uid, study, "SR series"),
            sop_instance_uid=sr_uid,
            instance_number=number,
        )
        datasets = [sr]
        rec.update(study_instance_uid=study, sr_sop_instance_uid=sr_uid, sr_file=f"{study}/SR_{sr_uid}.dcm")
        if self.options.secondary_capture:
            sc_uid = _uid(self.run_uid, sop, "SC")
            sc = build_sc(
                header,
                self._picture(source_path, prob, thr),
                series_instance_uid=_uid(self.run_uid, study, "SC series"),
                sop_instance_uid=sc_uid,
                instance_number=number,
            )
            datasets.append(sc)
            rec.update(sc_sop_instance_uid=sc_uid, sc_file=f"{study}/SC_{sc_uid}.dcm")
        for ds, name in zip(datasets, (rec["sr_file"], rec.get("sc_file"))):
            _save_dataset(self.out / name, ds)
        return rec, datasets

    def write(self, items: Iterable[tuple[dict, str, int]]) -> None:
        """Write the objects for ``items`` = (prediction row, source file, instance number), then STOW them.

        A row already written (and sent, with --stow) by an earlier run of this folder is skipped.
        """
        batch, recs = [], []
        for row, source_path, number in items:
            old = self.rows.get(row["sop_instance_uid"])
            sending = self.client is not None or self.options.forward is not None
            if (
                old
                and old["reason"] in (NOT_DICOM_SOURCE, "")
                and (old["stow"] in ("sent", "forwarded") or not sending)
            ):
                continue
            try:
                rec, datasets = self._one(row, source_path, number)
            except Exception as exc:  # noqa: BLE001 - one bad header must not stop the run; it is recorded
                reason = exc.reason if isinstance(exc, RejectedFile) else "DICOM_OUT_FAILED"
                rec, datasets = (
                    {
                        "source_sop_instance_uid": row["sop_instance_uid"],
                        "reason": str(reason),
                        "detail": f"{type(exc).__name__}: {str(exc)[:200]}",
                    },
                    [],
                )
                log.warning("--dicom-out: no SR for instance %s: %s", row["sop_instance_uid"], rec["detail"])
            batch += datasets
            recs.append((rec, datasets))
        if self.client is not None and batch:
            self._stow(recs)
        elif self.options.forward is not None and batch:
            self._forward(recs)
        for rec, _ in recs:
            self.rows[rec["source_sop_instance_uid"]] = rec
        self._save()

    def _stow(self, recs: list) -> None:
        datasets = [ds for _, sets in recs for ds in sets]
        try:
            assert self.client is not None  # _stow runs only with a STOW-RS client
            self.client.store_instances(datasets)
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

    def _forward(self, recs: list) -> None:
        """C-STORE the new objects to ``options.forward`` (pynetdicom SCU); status per object."""
        assert self.options.forward is not None  # _forward runs only with --forward
        aet, host, port = self.options.forward
        ae = AE(ae_title=self.options.calling_aet)
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
                rec["stow"] = "forwarded" if ok else "FORWARD_FAILED"
                if not ok:
                    rec.update(
                        reason="FORWARD_FAILED",
                        detail=f"C-STORE to {aet}@{host}:{port}: "
                        + ("association refused or aborted" if not assoc.is_established else f"status {codes}"),
                    )
                    log.warning(
                        "forward of the objects of %s failed: %s", rec["source_sop_instance_uid"], rec["detail"]
                    )
        finally:
            if assoc.is_established:
                assoc.release()

    def counts(self) -> dict[str, int]:
        """How many sources got an SR, how many were sent, and the reasons for the others."""
        out: dict[str, int] = {"sr_written": 0, "sc_written": 0, "stow_sent": 0}
        for rec in self.rows.values():
            out["sr_written"] += bool(rec.get("sr_file"))
            out["sc_written"] += bool(rec.get("sc_file"))
            out["stow_sent"] += rec.get("stow") in ("sent", "forwarded")
            if rec.get("reason"):
                out[rec["reason"]] = out.get(rec["reason"], 0) + 1
        return out

    def summary_line(self) -> str:
        c = self.counts()
        extra = ", ".join(
            f"{k} {v}" for k, v in sorted(c.items()) if k not in ("sr_written", "sc_written", "stow_sent")
        )
        sent = (
            f", {c['stow_sent']} sent with STOW-RS"
            if self.client
            else f", {c['stow_sent']} forwarded with C-STORE"
            if self.options.forward
            else ""
        )
        return (
            f"{c['sr_written']} SR, {c['sc_written']} Secondary Capture written{sent}"
            f"{' (' + extra + ')' if extra else ''} -> {self.out}"
        )


def write_for_predictions(
    options: DicomOutOptions, model_path: str | os.PathLike, predictions_csv: Path
) -> DicomOutput:
    """``--dicom-out`` for a finished local run: an SR (+SC) for each row of ``predictions.csv``."""
    with open(predictions_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    writer = DicomOutput(options, model_path)
    writer.write((row, row["path"], k + 1) for k, row in enumerate(rows))
    return writer

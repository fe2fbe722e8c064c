"""``--dicom-out``: one SR (and optionally one Secondary Capture) per scored DICOM image, and STOW-RS.

Layout of the output folder ``D``::

    D/<Study Instance UID>/SR_<SOP Instance UID>.dcm   TID 1500 report (cxr_cad.pacs.sr)
    D/<Study Instance UID>/SC_<SOP Instance UID>.dcm   Grad-CAM Secondary Capture (--secondary-capture)
    D/objects.csv          one row per source image: source SOP UID, what was written, STOW status, reason
    D/.run.json            this run's UID (seeds every series and instance UID written here)

UIDs are deterministic (docs/conformance.md, "Results that replace earlier ones"): the SR of
source instance ``S`` by model ``M`` (SHA-256) and cxr_cad version ``V`` in revision ``k`` is
``uid(S, M, V, "SR", k)``; its series ``uid(study, M, V, "SR series")``; the same for the SC.
A rerun that says the same (same result digest: findings, thresholds, decisions, shift
verdict) writes the same UIDs again, so archives hold one copy however often a run is
repeated; a rerun that says something else writes revision ``k + 1``, whose SR lists revision
``k`` in its Predecessor Documents Sequence. The earlier revision is found in this folder's
``objects.csv``, else (with ``--stow``) in the archive by its computable UID (QIDO-RS).
A scored image that is not DICOM (PNG/JPEG) has no header to copy: ``objects.csv`` says
``NOT_DICOM_SOURCE`` and nothing is written for it. :meth:`DicomOutput.needs` says which
scored instances lack an object the current options ask for, so a rerun with new options
(:func:`catch_up`) produces them for instances scored by an earlier run. Sending (STOW-RS,
C-STORE) and finding an earlier revision in the archive: :mod:`cxr_cad.pacs.archive`.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from cxr_cad.config import AcceptPolicy
from cxr_cad.core.atomic import atomic_write, atomic_write_text
from cxr_cad.core.provenance import __version__
from cxr_cad.errors import OutputError, RejectedFile
from cxr_cad.io import read_image
from cxr_cad.pacs.archive import forward_objects, latest_in_archive, stow_objects
from cxr_cad.pacs.client import make_client
from cxr_cad.pacs.findings import Finding, ShiftVerdict
from cxr_cad.pacs.sc import HEAT_SCALE, build_sc, compose_sc
from cxr_cad.pacs.sr import AlgorithmInfo, build_sr, evidence_header, predecessor_reference, result_digest
from cxr_cad.shift.stats import cohort_shift, summary_from_bundle

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
    "model_sha256",
    "version",
    "revision",
    "digest",
    "predecessor_sop_instance_uid",
    "shift_score",
    "heat_scale",
]
NOT_DICOM_SOURCE = "NOT_DICOM_SOURCE"


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


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def algorithm_info(bundle) -> AlgorithmInfo:
    """The identity of a loaded bundle as the results state it."""
    return AlgorithmInfo(
        version=__version__,
        model_sha256=bundle.sha256,
        positive_class=str(bundle.positive_class),
        threshold=float(bundle.threshold),
        device_uid=_uid("cxr_cad device", bundle.sha256),
        thresholds=dict(getattr(bundle, "thresholds", None) or {}),
    )


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
        self.info = algorithm_info(self.bundle)
        self.shift_summary = summary_from_bundle(self.bundle)
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

    # -- what is missing -------------------------------------------------------------------
    @property
    def sending(self) -> bool:
        return self.client is not None or self.options.forward is not None

    def needs(self, sop: str) -> bool:
        """True when the scored instance ``sop`` lacks an object (or a send) the options ask for."""
        old = self.rows.get(sop)
        if not old:
            return True
        if old.get("reason") == NOT_DICOM_SOURCE:
            return False
        if old.get("reason") or not old.get("sr_file") or not (self.out / old["sr_file"]).exists():
            return True
        if old.get("model_sha256", self.info.model_sha256) != self.info.model_sha256:
            return True
        if self.options.secondary_capture and not (old.get("sc_file") and (self.out / old["sc_file"]).exists()):
            return True
        return self.sending and old.get("stow") not in ("sent", "forwarded")

    # -- the cohort's shift verdict --------------------------------------------------------
    def cohort(self, rows: list[dict]) -> dict | None:
        """:func:`cohort_shift` of every image this folder has a result for, with ``rows``."""
        if self.shift_summary is None:
            return None
        scores = {s: r.get("shift_score", "") for s, r in self.rows.items() if not r.get("reason")}
        scores.update({r["sop_instance_uid"]: r.get("shift_score", "") for r in rows})
        return cohort_shift(list(scores.values()), self.shift_summary)

    # -- revisions -------------------------------------------------------------------------
    def _revision(self, sop: str, study: str, digest: str) -> tuple[int, str | None]:
        """(revision to write, SOP UID of the SR it replaces or None) for a result with ``digest``."""
        sha, version = self.info.model_sha256, self.info.version
        old = self.rows.get(sop)
        if old and old.get("sr_sop_instance_uid") and old.get("model_sha256") == sha and old.get("version") == version:
            rev = int(old.get("revision") or 1)
            if old.get("digest") == digest:
                return rev, old.get("predecessor_sop_instance_uid") or None
            return rev + 1, old["sr_sop_instance_uid"]
        if self.client is None:
            return 1, None
        found = latest_in_archive(self.client, study, lambda k: _uid(sop, sha, version, "SR", k))
        if found is None:
            return 1, None
        rev, uid, old_digest = found
        return (rev, None) if old_digest == digest else (rev + 1, uid)

    # -- building --------------------------------------------------------------------------
    def _picture(self, path: str, findings: list[Finding], not_validated: bool) -> np.ndarray:
        from cxr_cad.explain.gradcam import GradcamSource, logodds_maps

        spec = self.bundle.transform_spec
        film, _ = read_image(path, policy=AcceptPolicy(apply_voi=spec.apply_voi))
        cam = None
        if any(f.positive for f in findings) and len(findings) == 1:
            if self._gradcam is None:
                self._gradcam = GradcamSource.from_bundle(self.bundle)
            (result,) = logodds_maps(self._gradcam, [path])
            cam = result.cam
        return compose_sc(film, findings, cam, aspect=spec.aspect, not_validated=not_validated)

    def _one(self, row: dict, source_path: str, number: int, cohort: dict | None) -> tuple[dict, list]:
        """Build (and write) the objects of one scored row; returns its objects.csv row and datasets."""

        sop = row["sop_instance_uid"]
        rec = {
            "source_sop_instance_uid": sop,
            "study_instance_uid": row.get("study_instance_uid", ""),
            "stow": "",
            "reason": "",
            "detail": "",
            "shift_score": row.get("shift_score", ""),
        }
        header: Dataset
        try:
            header = pydicom.dcmread(source_path, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            rec.update(reason=NOT_DICOM_SOURCE, detail=f"{type(exc).__name__}: the source is not a DICOM file")
            return rec, []
        header = evidence_header(header)
        study = str(header.StudyInstanceUID)
        findings = self.info.findings(row)
        shift = ShiftVerdict.from_row(row, cohort)
        digest = result_digest(findings, shift)
        rev, predecessor = self._revision(sop, study, digest)
        sha, version = self.info.model_sha256, self.info.version
        sr_series = _uid(study, sha, version, "SR series")
        folder = self.out / study
        folder.mkdir(exist_ok=True)
        sr_uid = _uid(sop, sha, version, "SR", rev)
        sr = build_sr(
            header,
            findings,
            self.info,
            series_instance_uid=sr_series,
            sop_instance_uid=sr_uid,
            instance_number=number,
            shift=shift,
            predecessors=[predecessor_reference(study, sr_series, predecessor)] if predecessor else None,
        )
        datasets = [sr]
        rec.update(
            study_instance_uid=study,
            sr_sop_instance_uid=sr_uid,
            sr_file=f"{study}/SR_{sr_uid}.dcm",
            model_sha256=sha,
            version=version,
            revision=str(rev),
            digest=digest,
            predecessor_sop_instance_uid=predecessor or "",
        )
        if self.options.secondary_capture:
            sc_uid = _uid(sop, sha, version, "SC", rev)
            sc = build_sc(
                header,
                self._picture(source_path, findings, shift.not_validated),
                series_instance_uid=_uid(study, sha, version, "SC series"),
                sop_instance_uid=sc_uid,
                instance_number=number,
            )
            datasets.append(sc)
            rec.update(sc_sop_instance_uid=sc_uid, sc_file=f"{study}/SC_{sc_uid}.dcm", heat_scale=f"{HEAT_SCALE:g}")
        for ds, name in zip(datasets, (rec["sr_file"], rec.get("sc_file"))):
            _save_dataset(self.out / name, ds)
        return rec, datasets

    def write(self, items: Iterable[tuple[dict, str, int]], cohort: dict | None = None) -> None:
        """Write the objects for ``items`` = (prediction row, source file, instance number), then STOW them.

        A row whose objects this folder already holds (and sent, when sending) is skipped.
        ``cohort``: the cohort's shift verdict; None: :meth:`cohort` of what this folder holds.
        """
        todo = [(row, path, number) for row, path, number in items if self.needs(row["sop_instance_uid"])]
        if not todo:
            return
        if cohort is None:
            cohort = self.cohort([row for row, _, _ in todo])
        batch, recs = [], []
        for row, source_path, number in todo:
            try:
                rec, datasets = self._one(row, source_path, number, cohort)
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
            stow_objects(self.client, recs)
        elif self.options.forward is not None and batch:
            forward_objects(self.options.forward, self.options.calling_aet, recs)
        for rec, _ in recs:
            self.rows[rec["source_sop_instance_uid"]] = rec
        self._save()

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
    from cxr_cad.pacs.results import write_predictions

    writer = DicomOutput(options, model_path)
    write_predictions(writer, predictions_csv)
    return writer

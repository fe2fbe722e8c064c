"""The column lists of the tables cxr_cad writes: the one place each is defined."""

from __future__ import annotations

__all__ = ["IDENTIFIER_COLUMNS", "PREDICTION_COLUMNS", "REJECTED_COLUMNS"]

#: Every rejected input, wherever it was rejected (scan, predict, PACS): the file and why.
REJECTED_COLUMNS: list[str] = ["path", "reason", "detail"]

#: predictions.csv, in this order (engine writes it; report, workflow and PACS read it).
PREDICTION_COLUMNS: list[str] = [
    "path",
    "sop_instance_uid",
    "study_instance_uid",
    "probability",
    "decision",
    "threshold",
    "model_sha256",
    "shift_score",
    "shift_flag",
]  # shift: docs/shift.md

#: Columns that identify a patient or a file: never copied into reports, logs or DICOM outputs
#: unless the user asks for them.
IDENTIFIER_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "patient_name",
    "path",
    "study_instance_uid",
    "series_instance_uid",
    "accession_number",
    "patient_key",
)

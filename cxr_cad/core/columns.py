"""The column lists of the tables cxr_cad writes: the one place each is defined."""

from __future__ import annotations

__all__ = [
    "FLOAT_COLUMNS",
    "IDENTIFIER_COLUMNS",
    "INT_COLUMNS",
    "MANIFEST_COLUMNS",
    "META_KEYS",
    "METADATA_COLUMNS",
    "PREDICTION_COLUMNS",
    "REJECTED_COLUMNS",
    "REQUIRED_COLUMNS",
    "SUBGROUP_COLUMNS",
]

#: Keys of the ``meta`` dict the readers return (``cxr_cad.io``), in manifest column order.
META_KEYS: tuple[str, ...] = (
    "path",
    "format",
    "sop_instance_uid",
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_class_uid",
    "modality",
    "view_position",
    "body_part",
    "photometric_interpretation",
    "bits_stored",
    "rows",
    "columns",
    "transfer_syntax",
    "manufacturer",
    "patient_sex",
    "patient_age",
    "accession_number",  # (0008,0050): an identifier, a label key; never in reports
)

#: Every column ``cxr-cad ingest`` writes, in this order: the reader's keys with ``label`` after the
#: UIDs, the age in years and the file's SHA-256. Other columns are kept as text.
MANIFEST_COLUMNS: list[str] = [
    *META_KEYS[: META_KEYS.index("sop_class_uid") + 1],
    "label",
    *META_KEYS[META_KEYS.index("sop_class_uid") + 1 :],
    "patient_age_years",
    "sha256",
]
#: Columns a manifest must have to be read at all.
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "sop_instance_uid", "patient_id")
#: Whole-number columns (nullable ``Int64``); everything else but :data:`FLOAT_COLUMNS` is text.
INT_COLUMNS: tuple[str, ...] = ("bits_stored", "rows", "columns")
#: Real-number columns (``float64``, NaN when unknown).
FLOAT_COLUMNS: tuple[str, ...] = ("patient_age_years",)

#: Columns summarised in a report's cohort summary and subgroup table (label shown in reports).
SUBGROUP_COLUMNS: dict[str, str] = {
    "view_position": "View position",
    "patient_sex": "Sex",
    "age_band": "Age band",
    "manufacturer": "Manufacturer",
}

#: Manifest columns joined onto predictions for the report (ids, and what its subgroup tables and
#: cohort summary use: :data:`SUBGROUP_COLUMNS`, age, modality).
METADATA_COLUMNS: tuple[str, ...] = (
    "sop_instance_uid",
    "patient_id",
    "view_position",
    "patient_sex",
    "patient_age",
    "patient_age_years",
    "manufacturer",
    "modality",
    "rows",
    "columns",
)


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

"""Manifests: schema, validation, label joins and patient-grouped folds (no torch).

A manifest is a CSV with one row per accepted image (``data_manifests/README.md``).
Validation collects every problem and raises :class:`~cxr_cad.errors.ManifestError` once.
"""

from cxr_cad.io.age import age_in_years
from cxr_cad.manifest.folds import (
    grouped_split,
    iterative_group_assign,
    multilabel_grouped_split,
    multilabel_patient_folds,
    patient_folds,
)
from cxr_cad.manifest.labels import (
    LABEL_KEYS,
    LabelJoinReport,
    detect_label_key,
    explain_unmatched,
    join_labels,
    labels_from_folders,
    read_labels,
)
from cxr_cad.manifest.schema import (
    FLOAT_COLUMNS,
    INT_COLUMNS,
    MANIFEST_COLUMNS,
    REQUIRED_COLUMNS,
    manifest_hash,
    manifest_text,
    normalise_manifest,
    read_manifest,
    relative_paths,
    resolve_paths,
    table_text,
    validate_manifest,
    write_manifest,
    write_table,
)

__all__ = [
    "MANIFEST_COLUMNS",
    "REQUIRED_COLUMNS",
    "INT_COLUMNS",
    "FLOAT_COLUMNS",
    "LABEL_KEYS",
    "LabelJoinReport",
    "read_manifest",
    "write_manifest",
    "validate_manifest",
    "normalise_manifest",
    "join_labels",
    "explain_unmatched",
    "read_labels",
    "detect_label_key",
    "labels_from_folders",
    "manifest_hash",
    "patient_folds",
    "grouped_split",
    "iterative_group_assign",
    "multilabel_patient_folds",
    "multilabel_grouped_split",
    "resolve_paths",
    "relative_paths",
    "age_in_years",
    "write_table",
    "table_text",
    "manifest_text",
]

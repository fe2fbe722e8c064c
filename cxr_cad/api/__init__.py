"""The Python API: the one place that orchestrates ingest, training, cross-validation,
prediction, evaluation and reports. The ``cxr-cad`` commands and the workflow steps call
these functions; a notebook can too (docs/api.md)::

    import cxr_cad
    manifest, rejected = cxr_cad.ingest(["dicom/"], labels="labels.csv", classes=["NORMAL", "PNEUMONIA"])
    bundle = cxr_cad.train(manifest, {"epochs": 1, "model": {"init": "none"}}, "runs/m")
    predictions, rejected = cxr_cad.predict(bundle, test_manifest)
    metrics = cxr_cad.evaluate(predictions, bundle=bundle)

Importing this module is light (no torch); the functions import what they need.
"""

from cxr_cad.api._cohort import Cohort, labelled_cohort
from cxr_cad.api._ingest import INGEST_FILES, IngestOutcome, ingest, run_ingest
from cxr_cad.api._models import as_config, crossval, read_labelled, run_training, train, write_cv_report
from cxr_cad.api._scoring import (
    cohort_shift,
    evaluate,
    join_metadata,
    predict,
    read_scores,
    read_table,
    score,
    write_report,
)
from cxr_cad.core.columns import METADATA_COLUMNS
from cxr_cad.io.policy import AcceptPolicy

__all__ = [
    "AcceptPolicy",
    "CVResult",
    "Cohort",
    "INGEST_FILES",
    "IngestOutcome",
    "METADATA_COLUMNS",
    "as_config",
    "cohort_shift",
    "crossval",
    "evaluate",
    "ingest",
    "join_metadata",
    "labelled_cohort",
    "predict",
    "read_labelled",
    "read_scores",
    "read_table",
    "run_ingest",
    "run_training",
    "score",
    "train",
    "write_cv_report",
    "write_report",
]


def __getattr__(name: str) -> object:  # CVResult lives in the engine, which imports torch
    if name == "CVResult":
        from cxr_cad.crossval.run import CrossvalResult

        return CrossvalResult
    raise AttributeError(f"module 'cxr_cad.api' has no attribute {name!r}")

"""The Python API: the one place that orchestrates ingest, training, cross-validation,
prediction, evaluation, reports and the PACS round trip. The ``cxr-cad`` commands and the
workflow steps call these functions; a notebook can too (docs/api.md)::

    import cxr_cad
    manifest, rejected = cxr_cad.ingest(["dicom/"], labels="labels.csv", classes=["NORMAL", "PNEUMONIA"])
    bundle = cxr_cad.train(manifest, {"epochs": 1, "model": {"init": "none"}}, "runs/m")
    predictions, rejected = cxr_cad.predict(bundle, test_manifest)
    metrics = cxr_cad.evaluate(predictions, bundle=bundle)

Importing this module imports no torch: the functions import the engine when they run. The
names that live in the engine itself (``CVResult``, the cross-validation file names,
``ReportOptions``) are looked up on first use (the module ``__getattr__`` below); this module only re-exports.
"""

from typing import TYPE_CHECKING

from cxr_cad.api._cohort import Cohort, labelled_cohort
from cxr_cad.api._ingest import INGEST_FILES, IngestOutcome, ingest, run_ingest
from cxr_cad.api._models import as_config, crossval, read_labelled, run_training, train, write_cv_report
from cxr_cad.api._pacs import (
    DicomOutOptions,
    Listener,
    ListenOptions,
    ListenResult,
    PacsOptions,
    fetch_sources,
    listen,
    predict_dicomweb,
    predict_sources,
)
from cxr_cad.api._report import INGESTED_SOURCE, EvaluateResult, cohort_info, evaluate_cohort, report_cohort
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
from cxr_cad.config import AcceptPolicy, PredictOptions
from cxr_cad.core.columns import METADATA_COLUMNS

if TYPE_CHECKING:
    from cxr_cad.crossvalidation.run import METRICS_FILE, OOF_FILE
    from cxr_cad.crossvalidation.run import CrossvalResult as CVResult
    from cxr_cad.report.options import ReportOptions

__all__ = [
    "INGESTED_SOURCE",
    "INGEST_FILES",
    "METADATA_COLUMNS",
    "METRICS_FILE",
    "OOF_FILE",
    "AcceptPolicy",
    "ReportOptions",
    "CVResult",
    "Cohort",
    "DicomOutOptions",
    "EvaluateResult",
    "IngestOutcome",
    "ListenOptions",
    "ListenResult",
    "Listener",
    "PacsOptions",
    "PredictOptions",
    "as_config",
    "cohort_info",
    "cohort_shift",
    "crossval",
    "evaluate",
    "evaluate_cohort",
    "fetch_sources",
    "ingest",
    "join_metadata",
    "labelled_cohort",
    "listen",
    "predict",
    "predict_dicomweb",
    "predict_sources",
    "read_labelled",
    "read_scores",
    "read_table",
    "report_cohort",
    "run_ingest",
    "run_training",
    "score",
    "train",
    "write_cv_report",
    "write_report",
]

#: Names defined in the engine (which imports torch): ``name -> (module, attribute)``.
_ENGINE_NAMES = {
    "CVResult": ("cxr_cad.crossvalidation.run", "CrossvalResult"),
    "OOF_FILE": ("cxr_cad.crossvalidation.run", "OOF_FILE"),
    "METRICS_FILE": ("cxr_cad.crossvalidation.run", "METRICS_FILE"),
    "ReportOptions": ("cxr_cad.report.options", "ReportOptions"),  # the report package imports torch
}


def __getattr__(name: str) -> object:
    if name in _ENGINE_NAMES:
        import importlib

        module, attribute = _ENGINE_NAMES[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'cxr_cad.api' has no attribute {name!r}")

"""The Python API: the one place that orchestrates ingest, training, cross-validation,
prediction, evaluation, reports, site adaptation and the PACS round trip. The ``cxr-cad``
commands and the workflow steps call these functions; a notebook can too (docs/api.md)::

    import cxr_cad
    manifest, rejected = cxr_cad.ingest(["dicom/"], labels="labels.csv", classes=["NORMAL", "PNEUMONIA"])
    bundle = cxr_cad.train(manifest, {"epochs": 1, "model": {"init": "none"}}, "runs/m")
    predictions, rejected = cxr_cad.predict(bundle, test_manifest)
    metrics = cxr_cad.evaluate(predictions, bundle=bundle)

Every name is imported on first use (the module ``__getattr__`` below), so ``import
cxr_cad.api`` costs nothing: ``cxr-cad --help`` and a command that fails its argument checks
never load pandas, the PACS libraries or torch. ``dir(cxr_cad.api)`` lists every name.

To export a new name, add ONE line to :data:`_EXPORTS` (``"name": "cxr_cad.api._module",``);
for type checkers also add it to the ``TYPE_CHECKING`` imports (a test checks that every name
there is exported, and that every exported name resolves).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Every public name of the API -> the module that defines it (imported when first used).
_EXPORTS: dict[str, str] = {
    # ingest
    "ingest": "cxr_cad.api._ingest",
    "run_ingest": "cxr_cad.api._ingest",
    "IngestOutcome": "cxr_cad.api._ingest",
    "INGEST_FILES": "cxr_cad.api._ingest",
    # train and cross-validate
    "train": "cxr_cad.api._models",
    "run_training": "cxr_cad.api._models",
    "crossval": "cxr_cad.api._crossval",
    "crossval_fold": "cxr_cad.api._crossval",
    "crossval_merge": "cxr_cad.api._crossval",
    "write_cv_report": "cxr_cad.api._crossval",
    "as_config": "cxr_cad.api._models",
    "read_labelled": "cxr_cad.api._models",
    "CrossvalResult": "cxr_cad.crossvalidation.run",  # the engine's class (imports torch)
    "FoldResult": "cxr_cad.crossvalidation.run",
    "OOF_FILE": "cxr_cad.crossvalidation.run",
    "METRICS_FILE": "cxr_cad.crossvalidation.run",
    # score, evaluate, report
    "predict": "cxr_cad.api._scoring",
    "score": "cxr_cad.api._scoring",
    "evaluate": "cxr_cad.api._scoring",
    "write_report": "cxr_cad.api._scoring",
    "join_metadata": "cxr_cad.api._scoring",
    "read_scores": "cxr_cad.api._scoring",
    "read_table": "cxr_cad.api._scoring",
    "cohort_shift": "cxr_cad.api._scoring",
    "report_cohort": "cxr_cad.api._report",
    "evaluate_cohort": "cxr_cad.api._report_evaluate",
    "cohort_info": "cxr_cad.api._report",
    "EvaluateResult": "cxr_cad.api._report_evaluate",
    "INGESTED_SOURCE": "cxr_cad.api._report",
    "Cohort": "cxr_cad.api._cohort",
    "labelled_cohort": "cxr_cad.api._cohort",
    "ReportOptions": "cxr_cad.report.options",  # the report package imports torch
    # PACS: DICOMweb sources, DICOM outputs, the listen node
    "predict_sources": "cxr_cad.api._pacs",
    "predict_dicomweb": "cxr_cad.api._pacs",
    "fetch_sources": "cxr_cad.api._pacs",
    "predict_dimse": "cxr_cad.api._pacs",
    "listen": "cxr_cad.api._listen",
    "Listener": "cxr_cad.api._listen",
    "ListenOptions": "cxr_cad.api._listen",
    "ListenResult": "cxr_cad.api._listen",
    "PacsOptions": "cxr_cad.api._pacs",
    "DicomOutOptions": "cxr_cad.api._pacs",
    "DicomwebResult": "cxr_cad.api._pacs",
    # site adaptation
    "adapt": "cxr_cad.api._adapt",
    "AdaptResult": "cxr_cad.api._adapt",
    # typed options and table columns
    "AcceptPolicy": "cxr_cad.config",
    "PredictOptions": "cxr_cad.config",
    "METADATA_COLUMNS": "cxr_cad.core.columns",
}

#: Names whose attribute in the defining module is spelled differently.
_ALIASES: dict[str, tuple[str, str]] = {
    "CVResult": ("cxr_cad.crossvalidation.run", "CrossvalResult"),  # the older name, kept
}

__all__ = sorted([*_EXPORTS, *_ALIASES])

if TYPE_CHECKING:  # the names for type checkers (re-exported by __getattr__ at run time)
    from cxr_cad.api._adapt import AdaptResult, adapt  # noqa: F401
    from cxr_cad.api._cohort import Cohort, labelled_cohort  # noqa: F401
    from cxr_cad.api._crossval import crossval, crossval_fold, crossval_merge, write_cv_report  # noqa: F401
    from cxr_cad.api._ingest import INGEST_FILES, IngestOutcome, ingest, run_ingest  # noqa: F401
    from cxr_cad.api._listen import Listener, ListenOptions, ListenResult, listen  # noqa: F401
    from cxr_cad.api._models import as_config, read_labelled, run_training, train  # noqa: F401
    from cxr_cad.api._pacs import (  # noqa: F401
        DicomOutOptions,
        DicomwebResult,
        PacsOptions,
        fetch_sources,
        predict_dicomweb,
        predict_dimse,
        predict_sources,
    )
    from cxr_cad.api._report import INGESTED_SOURCE, cohort_info, report_cohort  # noqa: F401
    from cxr_cad.api._report_evaluate import EvaluateResult, evaluate_cohort  # noqa: F401
    from cxr_cad.api._scoring import (  # noqa: F401
        cohort_shift,
        evaluate,
        join_metadata,
        predict,
        read_scores,
        read_table,
        score,
        write_report,
    )
    from cxr_cad.config import AcceptPolicy, PredictOptions  # noqa: F401
    from cxr_cad.core.columns import METADATA_COLUMNS  # noqa: F401
    from cxr_cad.crossvalidation.run import METRICS_FILE, OOF_FILE, CrossvalResult, FoldResult  # noqa: F401
    from cxr_cad.crossvalidation.run import CrossvalResult as CVResult  # noqa: F401
    from cxr_cad.report.options import ReportOptions  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name], name
    elif name in _ALIASES:
        module, attribute = _ALIASES[name]
    else:
        raise AttributeError(f"module 'cxr_cad.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

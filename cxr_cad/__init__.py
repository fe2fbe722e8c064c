"""cxr_cad: chest-radiograph computer-aided classification.

DICOM/PNG/JPEG ingestion into manifests, MONAI transforms, transfer-learned networks,
patient-grouped cross-validation, ROC statistics and clinical reports. The commands are
``cxr-cad --help``; the Python API (:mod:`cxr_cad.api`, docs/api.md) is at the top level:

Build and score
    ``ingest(sources, out_dir=None, **options) -> (manifest_df, rejected_df)``
    ``train(manifest, config, out_dir=None) -> Bundle``
    ``crossval(manifest, config, out_dir=None, folds=5) -> CrossvalResult`` (alias ``CVResult``)
    ``predict(bundle, sources_or_manifest_df, out_dir=None, **options) -> (predictions_df, rejected_df)``
    ``adapt(...)``: a bundle adapted to a site (threshold, recalibration, head, fine-tuning)
Evaluate and report
    ``evaluate(predictions_df, bundle=None, **options) -> metrics dict``
    ``write_report(predictions_df, out_dir, bundle=None, **options) -> ReportResult``
    ``write_cv_report(crossval_result, out_dir, positive_class=...)``
    ``report_cohort(predictions, out_dir, options, bundle=...)``: ``cxr-cad report``
    ``evaluate_cohort(model, out_dir, options, manifest=... | folder=...)``: ``cxr-cad evaluate``
    ``cohort_info(name, info=..., manifest=...)``: the cohort fields of a report
PACS
    ``predict_sources(model, sources, out_dir, options, pacs)``: ``cxr-cad predict`` (dicomweb:)
    ``predict_dicomweb(url, out_dir, model_path, ...)``, ``fetch_sources(...)``
    ``listen(ListenOptions(...), stop_event)``: ``cxr-cad listen``
More control
    ``run_ingest``, ``run_training``, ``score``, ``as_config``, ``read_labelled``
Options and results
    ``AcceptPolicy``, ``PredictOptions``, ``ReportOptions``, ``PacsOptions``,
    ``ListenOptions``, ``CrossvalResult``, ``EvaluateResult``, ``IngestOutcome``

Everything is imported on first use: ``import cxr_cad`` loads neither torch nor pandas, and
``dir(cxr_cad)`` (tab completion) lists the API without importing it.
"""

from typing import Any as _Any

from cxr_cad.core.provenance import __version__


def _api_names() -> list[str]:
    from cxr_cad import api  # light: every api name is imported on first use

    return list(api.__all__)


__all__ = ["__version__", *_api_names()]


def __getattr__(name: str) -> _Any:
    if name in __all__:
        from cxr_cad import api

        return getattr(api, name)
    raise AttributeError(f"module 'cxr_cad' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

"""cxr_cad: chest-radiograph computer-aided classification.

DICOM/PNG/JPEG ingestion into manifests, MONAI transforms, transfer-learned networks,
patient-grouped cross-validation, ROC statistics and clinical reports.

The Python API (:mod:`cxr_cad.api`, docs/api.md) is available at the top level:
``cxr_cad.ingest``, ``train``, ``crossval``, ``predict``, ``evaluate``, ``write_report``.
It is imported on first use, so ``import cxr_cad`` stays light.
"""

from cxr_cad.core.provenance import __version__

#: Names re-exported from :mod:`cxr_cad.api` on first use.
_API = ("ingest", "train", "crossval", "predict", "evaluate", "write_report", "CVResult", "AcceptPolicy")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        from cxr_cad import api

        return getattr(api, name)
    raise AttributeError(f"module 'cxr_cad' has no attribute {name!r}")

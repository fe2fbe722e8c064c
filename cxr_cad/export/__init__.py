"""Export cxr_cad bundles for other runtimes, and run the exported models.

Public API (docs/export.md)::

    export_model(model_path, fmt, out, *, int8=False, calibration=None, ...) -> ExportResult
    load_exported(path, backend) -> ExportedModel          # backend: onnxruntime | openvino | torchscript
    FORMATS, BACKENDS, MissingExtraError, Int8Refused

Formats: one :class:`~cxr_cad.export.formats.ExportFormat` each in
:data:`cxr_cad.export.formats.EXPORT_FORMATS` (``monai-bundle`` :mod:`.monai_bundle`, ``onnx``
:mod:`.onnx`, ``openvino`` :mod:`.openvino`, ``torchscript`` :mod:`.torchscript`; int8 by
:mod:`.quantize`); runtimes: one :class:`~cxr_cad.export.backends.Backend` each in
:data:`cxr_cad.export.backends.BACKEND_REGISTRY`. ``MissingExtraError`` is
:class:`cxr_cad.errors.MissingExtraError`.
ONNX, onnxruntime and OpenVINO are the optional extra ``export``.
"""

from __future__ import annotations

import importlib
from typing import Any

from cxr_cad.errors import MissingExtraError
from cxr_cad.export.names import BACKENDS, EXPORT_FILE, FORMATS, INT8_FORMATS, PARITY_TOLERANCE

#: Names that need PyTorch, imported on first use (``cxr-cad --help`` must not load torch).
_LAZY = {
    "ExportResult": "cxr_cad.export.exporter",
    "export_model": "cxr_cad.export.exporter",
    "read_export_record": "cxr_cad.export.common",
    "Int8Refused": "cxr_cad.export.quantize",
    "Int8Report": "cxr_cad.export.quantize",
    "ExportedModel": "cxr_cad.export.backends",
    "load_exported": "cxr_cad.export.backends",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "EXPORT_FILE",
    "FORMATS",
    "INT8_FORMATS",
    "PARITY_TOLERANCE",
    "ExportResult",
    "ExportedModel",
    "Int8Refused",
    "Int8Report",
    "MissingExtraError",
    "export_model",
    "load_exported",
    "read_export_record",
]

"""Export cxr_cad bundles for other runtimes, and run the exported models.

Public API (docs/export.md)::

    export_model(model_path, fmt, out, *, int8=False, calibration=None, ...) -> ExportResult
    load_exported(path, backend) -> ExportedModel          # backend: onnxruntime | openvino | torchscript
    FORMATS, BACKENDS, MissingExtraError, Int8Refused

Formats: ``monai-bundle`` (:mod:`.monai_bundle`), ``onnx`` (:mod:`.onnx`), ``openvino``
(:mod:`.openvino`), ``torchscript`` (:mod:`.torchscript`); int8 by :mod:`.quantize`.
ONNX, onnxruntime and OpenVINO are the optional extra ``export``.
"""

from cxr_cad.export.api import FORMATS, INT8_FORMATS, PARITY_TOLERANCE, ExportResult, export_model
from cxr_cad.export.common import EXPORT_FILE, MissingExtraError, read_export_record
from cxr_cad.export.quantize import Int8Refused, Int8Report
from cxr_cad.export.runtime import BACKENDS, ExportedModel, load_exported

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

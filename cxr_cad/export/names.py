"""The export choices as plain names (no torch import): formats, backends, calibration methods and
the accuracy limits. The CLI builds its ``--help`` from these without loading PyTorch."""

from __future__ import annotations

FORMATS = ("monai-bundle", "onnx", "openvino", "torchscript")
INT8_FORMATS = ("onnx", "openvino")
BACKENDS = ("onnxruntime", "openvino", "torchscript")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
#: Largest AUC drop (on the calibration images) an int8 model may show before it is refused.
MAX_AUC_DROP = 0.005
#: Largest |logit| difference between an export and the source bundle.
PARITY_TOLERANCE = 1e-4
EXPORT_FILE = "export.json"

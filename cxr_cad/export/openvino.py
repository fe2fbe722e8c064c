"""OpenVINO IR (``model.xml`` + ``model.bin``) converted from the exported ONNX file.

``openvino.convert_model`` reads the ONNX graph (fp32, or the int8 QDQ graph written by
:mod:`cxr_cad.export.quantize`, which OpenVINO turns into int8 kernels) and
``openvino.save_model`` writes the IR with ``compress_to_fp16=False``: the default would
store fp32 weights as fp16 and break the 1e-4 parity with torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxr_cad.errors import OutputError
from cxr_cad.export.common import require

log = logging.getLogger(__name__)

EXTRA = "export"


def convert_to_openvino(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """Convert ``onnx_path`` into OpenVINO IR at ``xml_path`` (the ``.bin`` goes beside it)."""
    ov = require("openvino", EXTRA)
    xml_path = Path(xml_path)
    try:
        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
    except RuntimeError as exc:
        raise OutputError(f"OpenVINO could not convert {onnx_path}: {exc}") from exc
    log.info("wrote OpenVINO IR %s", xml_path)
    return xml_path

"""ONNX export with a dynamic batch axis, through PyTorch's own exporter (``torch.onnx``).

The graph takes ``image`` ``(batch, C, S, S)`` float32 (the output of the bundle's eval
chain) and returns ``logits`` ``(batch, K)``; softmax is left to the caller, as for the torch
model. Opset :data:`OPSET` (the torch.export-based exporter's default) runs on onnxruntime
>= 1.14 and OpenVINO >= 2023.0 on CPU. The exported file is checked by ``onnx.checker``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from cxr_cad.errors import OutputError
from cxr_cad.export.common import INPUT_NAME, OUTPUT_NAME, require

log = logging.getLogger(__name__)

OPSET = 18
EXTRA = "export"


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    *,
    in_channels: int,
    image_size: int,
    opset: int = OPSET,
    output_name: str = OUTPUT_NAME,
) -> Path:
    """Write ``model`` (eval mode, fp32) as ONNX with a dynamic batch axis; returns the path.

    ``output_name``: the graph output's name (``logits``; ``features`` for a network without its
    classifier, :mod:`cxr_cad.export.variant`).

    Raises MissingExtraError (onnx/onnxscript not installed) or OutputError.
    """
    onnx = require("onnx", EXTRA)
    require("onnxscript", EXTRA)  # the torch.export-based exporter is written on it
    path = Path(path)
    model = model.float().eval()
    example = (torch.zeros(2, in_channels, image_size, image_size),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():  # the exporter's progress chatter and deprecations of its internals
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        try:
            program = torch.onnx.export(
                model,
                example,
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[output_name],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
        except Exception as exc:  # the exporter raises its own error types
            raise OutputError(f"torch.onnx.export failed: {exc}") from exc
    if program is None:  # only the legacy (dynamo=False) exporter returns None
        raise OutputError("torch.onnx.export returned no program")
    program.optimize()
    try:
        program.save(str(path), external_data=False)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc
    onnx.checker.check_model(str(path), full_check=True)
    log.info("wrote ONNX model %s (opset %d, dynamic batch)", path, opset)
    return path

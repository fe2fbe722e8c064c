"""The export formats: one :class:`ExportFormat` per ``cxr-cad export --format`` value.

An entry holds everything that differs between formats: how the fp32 model files are written
(``write``), which written file the parity check runs and with which backend (``checked``,
``backend``: :data:`cxr_cad.export.backends.BACKEND_REGISTRY`), how the int8 twin is written
(``write_int8``; None = no ``--int8``) and whether the exporter writes the model card as
``model_card.md`` beside the model (a MONAI bundle's writer puts it in ``docs/README.md``). :func:`cxr_cad.export.exporter.export_model` runs the same steps for every entry.

Adding a format is one entry in :data:`EXPORT_FORMATS`, its name in
:data:`cxr_cad.export.names.FORMATS` (the torch-free list the CLI offers), plus its test
(``tests/export``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch

from cxr_cad.export.common import bundle_record
from cxr_cad.export.monai_bundle import write_monai_bundle
from cxr_cad.export.names import FORMATS, INT8_FORMATS
from cxr_cad.export.onnx import export_onnx
from cxr_cad.export.openvino import convert_to_openvino
from cxr_cad.export.quantize import quantize_onnx
from cxr_cad.export.torchscript import export_torchscript

if TYPE_CHECKING:
    from cxr_cad.model.bundle import Bundle

__all__ = ["EXPORT_FORMATS", "ExportFormat", "Target"]


@dataclass
class Target:
    """Where one export goes: the loaded bundle (fp32, eval mode), the output folder, a scratch
    folder for intermediates (removed afterwards), the model card's text
    (:func:`cxr_cad.modelcard.card_for_export`) and the fp32 ONNX file once one is written."""

    bundle: Bundle
    out: Path
    scratch: Path
    card_text: str = ""
    onnx_path: Path | None = None


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes:
        name: the ``--format`` value (``export.json``'s ``export_format``).
        write: writes the fp32 model into ``target.out``; returns the files written,
            ``{role: path relative to out}``.
        checked: the role of the file the parity check runs.
        backend: the backend (:data:`~cxr_cad.export.backends.BACKEND_REGISTRY`) that runs it.
        label: the format as the parity-check error names it.
        write_int8: ``(target, calibration images, method) -> (int8 model file, files written)``;
            quantises ``target.onnx_path``. None = the format has no int8 variant.
        copy_card: the exporter writes the model card as ``model_card.md`` beside the model
            (False for a MONAI bundle, whose writer puts the card in ``docs/README.md``).
    """

    name: str
    write: Callable[[Target], dict[str, str]]
    checked: str
    backend: str
    label: str
    write_int8: Callable[[Target, torch.Tensor, str], tuple[Path, dict[str, str]]] | None = None
    copy_card: bool = True


def _write_monai_bundle(t: Target) -> dict[str, str]:
    return write_monai_bundle(t.bundle, t.out, card_text=t.card_text)


def _write_torchscript(t: Target) -> dict[str, str]:
    spec = t.bundle.transform_spec
    export_torchscript(
        t.bundle.model,
        t.out / "model.ts",
        in_channels=spec.in_channels,
        image_size=spec.image_size,
        meta=bundle_record(t.bundle),
    )
    return {"model": "model.ts"}


def _onnx(t: Target, folder: Path) -> Path:
    """The fp32 ONNX file in ``folder`` (remembered in ``t.onnx_path`` for int8)."""
    spec = t.bundle.transform_spec
    t.onnx_path = folder / "model.onnx"
    export_onnx(t.bundle.model, t.onnx_path, in_channels=spec.in_channels, image_size=spec.image_size)
    return t.onnx_path


def _write_onnx(t: Target) -> dict[str, str]:
    _onnx(t, t.out)
    return {"model": "model.onnx"}


def _write_openvino(t: Target) -> dict[str, str]:
    convert_to_openvino(_onnx(t, t.scratch), t.out / "model.xml")
    return {"model": "model.xml", "weights": "model.bin"}


def _int8_onnx(t: Target, images: torch.Tensor, method: str) -> tuple[Path, dict[str, str]]:
    assert t.onnx_path is not None  # written by _write_onnx
    q_onnx = t.out / "model.int8.onnx"
    quantize_onnx(t.onnx_path, q_onnx, images, method=method)
    return q_onnx, {"model_int8": "model.int8.onnx"}


def _int8_openvino(t: Target, images: torch.Tensor, method: str) -> tuple[Path, dict[str, str]]:
    assert t.onnx_path is not None  # written by _write_openvino
    q_onnx = t.scratch / "model.int8.onnx"
    quantize_onnx(t.onnx_path, q_onnx, images, method=method)
    convert_to_openvino(q_onnx, t.out / "model.int8.xml")
    return t.out / "model.int8.xml", {"model_int8": "model.int8.xml", "weights_int8": "model.int8.bin"}


#: Every export format, by name, in the order of :data:`cxr_cad.export.names.FORMATS`.
EXPORT_FORMATS: Mapping[str, ExportFormat] = MappingProxyType(
    {
        f.name: f
        for f in (
            # MONAI's bundle layout; its models/model.ts is what the parity check runs
            ExportFormat(
                "monai-bundle", _write_monai_bundle, "torchscript", "torchscript", "TorchScript", copy_card=False
            ),
            ExportFormat("onnx", _write_onnx, "model", "onnxruntime", "onnx", write_int8=_int8_onnx),
            # OpenVINO IR converted from the ONNX export (kept in the scratch folder)
            ExportFormat("openvino", _write_openvino, "model", "openvino", "openvino", write_int8=_int8_openvino),
            ExportFormat("torchscript", _write_torchscript, "model", "torchscript", "TorchScript"),
        )
    }
)
if tuple(EXPORT_FORMATS) != FORMATS or tuple(f.name for f in EXPORT_FORMATS.values() if f.write_int8) != INT8_FORMATS:
    raise RuntimeError(
        f"export formats {tuple(EXPORT_FORMATS)} differ from cxr_cad.export.names.FORMATS {FORMATS} "
        f"(or their int8 variants from INT8_FORMATS {INT8_FORMATS})"
    )

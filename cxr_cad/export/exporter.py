"""``export_model``: one cxr_cad bundle -> a MONAI bundle, ONNX, OpenVINO IR or TorchScript folder.

Every exported folder holds ``export.json`` (:mod:`cxr_cad.export.common`) and a copy of the
bundle's model card. The exported fp32 model is checked against the torch model (fp32,
probabilities within :data:`PARITY_TOLERANCE`) before the call returns; with ``int8`` the
model is quantised on the calibration manifest and refused if it loses more than
``max_auc_drop`` AUC on the manifest's held-out patients (:mod:`cxr_cad.export.quantize`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cxr_cad.errors import ConfigError, OutputError, UsageError
from cxr_cad.export.common import (
    Cohort,
    batched,
    cohort_from_manifest,
    prepare_out,
    softmax_positive,
    write_export_record,
)

if TYPE_CHECKING:
    from cxr_cad.model.bundle import Bundle

from cxr_cad.export.names import FORMATS, INT8_FORMATS, PARITY_TOLERANCE

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    out: Path
    format: str
    files: dict[str, str]
    parity: dict
    int8: dict | None = None
    rejected: list = field(default_factory=list)


def _parity(
    torch_fn: Callable, other_fn: Callable, images: torch.Tensor, positive_index: int, what: str, source: str
) -> dict:
    """Max |probability difference| of two logits functions; OutputError above the tolerance."""
    a = softmax_positive(batched(torch_fn, images), positive_index)
    b = softmax_positive(batched(other_fn, images), positive_index)
    diff = float(np.abs(a - b).max())
    if not diff <= PARITY_TOLERANCE:
        raise OutputError(
            f"the exported {what} model disagrees with the torch model: max probability difference "
            f"{diff:.3g} > {PARITY_TOLERANCE} on {len(images)} {source} image(s); not exported"
        )
    return {"n_images": len(images), "inputs": source, "max_abs_prob_diff": diff, "tolerance": PARITY_TOLERANCE}


def _check_images(bundle: Bundle, cohort: Cohort | None) -> tuple[torch.Tensor, str]:
    """Real preprocessed radiographs when a calibration manifest is given, else a seeded random batch."""
    if cohort is not None and len(cohort.images):
        return cohort.images[:64], "calibration-manifest"
    spec = bundle.transform_spec
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, spec.in_channels, spec.image_size, spec.image_size, generator=g), "random"


@dataclass
class _Job:
    """One export: the loaded bundle, where it goes, what it is checked on, the int8 options."""

    bundle: Bundle
    fmt: str
    out: Path
    result: ExportResult
    check_images: torch.Tensor
    source: str  # what the check images are ("calibration-manifest" or "random")
    cohort: Cohort | None
    int8: bool = False
    method: str = "minmax"
    force: bool = False
    max_auc_drop: float = 0.005
    heldout_fraction: float = 0.5

    def parity(self, other_fn: Callable, what: str) -> dict:
        return _parity(self.bundle.model, other_fn, self.check_images, self.bundle.positive_index, what, self.source)


def _check_options(fmt: str, int8: bool, calibration: object) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}, not {fmt!r}")
    if int8 and fmt not in INT8_FORMATS:
        raise UsageError(f"--int8 is offered for {INT8_FORMATS}, not {fmt}")
    if int8 and calibration is None:
        raise UsageError("--int8 needs --calibration MANIFEST (a labelled manifest of representative radiographs)")


def export_model(
    model_path: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str],
    *,
    int8: bool = False,
    calibration: str | os.PathLike[str] | None = None,
    calibration_method: str = "minmax",
    force: bool = False,
    overwrite: bool = False,
    max_auc_drop: float | None = None,
    heldout_fraction: float = 0.5,
) -> ExportResult:
    """Export the bundle at ``model_path`` as ``fmt`` into the folder ``out``.

    Raises ConfigError (a bad ``fmt``), UsageError (options that do not go together, a
    non-empty ``out``), BundleError, MissingExtraError, OutputError (writing or the parity
    check failed), Int8Refused (int8 AUC drop too large).
    """
    from cxr_cad.export.quantize import MAX_AUC_DROP
    from cxr_cad.model import load_bundle
    from cxr_cad.modelcard import model_card_path

    _check_options(fmt, int8, calibration)
    bundle = load_bundle(model_path)
    bundle.model.float().eval()
    folder = prepare_out(out, overwrite=overwrite)
    spec, positive = bundle.transform_spec, bundle.positive_class
    cohort = cohort_from_manifest(calibration, spec, positive) if calibration is not None else None
    check_images, source = _check_images(bundle, cohort)
    result = ExportResult(
        out=folder, format=fmt, files={}, parity={}, rejected=list(cohort.rejected) if cohort is not None else []
    )
    job = _Job(
        bundle=bundle,
        fmt=fmt,
        out=folder,
        result=result,
        check_images=check_images,
        source=source,
        cohort=cohort,
        int8=int8,
        method=calibration_method,
        force=force,
        max_auc_drop=MAX_AUC_DROP if max_auc_drop is None else float(max_auc_drop),
        heldout_fraction=heldout_fraction,
    )
    if fmt in ("monai-bundle", "torchscript"):
        _export_torchscript_like(job)
    else:
        _export_onnx_like(job)
    card = model_card_path(bundle.path)
    if card.is_file() and fmt != "monai-bundle":
        shutil.copyfile(card, folder / "model_card.md")
        result.files["card"] = "model_card.md"
    write_export_record(
        folder,
        bundle,
        fmt,
        result.files,
        parity=result.parity,
        int8=result.int8,
        calibration_rejected=len(result.rejected),
    )
    return result


def _export_torchscript_like(job: _Job) -> None:
    """A MONAI bundle (its ``models/model.ts``) or a bare TorchScript file, parity-checked."""
    from cxr_cad.export.backends import TorchScriptModel

    bundle, out = job.bundle, job.out
    if job.fmt == "monai-bundle":
        from cxr_cad.export.monai_bundle import write_monai_bundle
        from cxr_cad.modelcard import model_card_path

        job.result.files = write_monai_bundle(bundle, out, card=model_card_path(bundle.path))
        ts = out / job.result.files["torchscript"]
    else:
        from cxr_cad.export.common import bundle_record
        from cxr_cad.export.torchscript import export_torchscript

        spec = bundle.transform_spec
        ts = out / "model.ts"
        export_torchscript(
            bundle.model, ts, in_channels=spec.in_channels, image_size=spec.image_size, meta=bundle_record(bundle)
        )
        job.result.files = {"model": "model.ts"}
    job.result.parity = job.parity(TorchScriptModel(ts), "TorchScript")


def _export_onnx_like(job: _Job) -> None:
    """ONNX (kept, or converted to OpenVINO IR) and its optional int8 twin."""
    from cxr_cad.export.backends import OnnxRuntimeModel, OpenVinoModel
    from cxr_cad.export.onnx import export_onnx
    from cxr_cad.export.openvino import convert_to_openvino

    spec, fmt, out, files = job.bundle.transform_spec, job.fmt, job.out, job.result.files
    tmp = Path(tempfile.mkdtemp(prefix="cxr-cad-export-"))
    try:
        onnx_path = (out if fmt == "onnx" else tmp) / "model.onnx"
        export_onnx(job.bundle.model, onnx_path, in_channels=spec.in_channels, image_size=spec.image_size)
        runner: Callable[[Path], Callable[[torch.Tensor], torch.Tensor]]
        if fmt == "onnx":
            files["model"] = "model.onnx"
            runner = OnnxRuntimeModel
        else:
            convert_to_openvino(onnx_path, out / "model.xml")
            files.update(model="model.xml", weights="model.bin")
            runner = OpenVinoModel
        fp32 = runner(out / files["model"])
        job.result.parity = job.parity(fp32, fmt)
        if job.int8:
            _int8_twin(job, onnx_path, tmp, fp32, runner)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _int8_twin(job: _Job, onnx_path: Path, tmp: Path, fp32: Callable, runner: Callable) -> None:
    """Quantise on the calibration part, check on the held-out part, keep it only if accepted."""
    from cxr_cad.export.openvino import convert_to_openvino
    from cxr_cad.export.quantize import check_int8, int8_report, quantize_onnx, split_calibration

    cohort, fmt, out = job.cohort, job.fmt, job.out
    assert cohort is not None  # --int8 needs --calibration (_check_options)
    calib_idx, held_idx = split_calibration(cohort, heldout_fraction=job.heldout_fraction)
    q_onnx = (out if fmt == "onnx" else tmp) / "model.int8.onnx"
    quantize_onnx(onnx_path, q_onnx, cohort.images[calib_idx], method=job.method)
    if fmt == "openvino":
        convert_to_openvino(q_onnx, out / "model.int8.xml")
        q_file = out / "model.int8.xml"
    else:
        q_file = q_onnx
    held = Cohort(
        images=cohort.images[held_idx],
        labels=cohort.labels[held_idx],
        groups=cohort.groups[held_idx],
        paths=[cohort.paths[i] for i in held_idx],
        rejected=[],
    )
    report = int8_report(
        fp32,
        runner(q_file),
        held,
        job.bundle.positive_index,
        n_calibration=len(calib_idx),
        max_auc_drop=job.max_auc_drop,
        method=job.method,
    )
    try:
        check_int8(report, force=job.force)
    except BaseException:  # a refused (or interrupted) check leaves no int8 model behind; re-raised
        for f in (q_file, q_file.with_suffix(".bin")):
            f.unlink(missing_ok=True)
        raise
    job.result.int8 = report.to_dict()
    if fmt == "onnx":
        job.result.files["model_int8"] = "model.int8.onnx"
    else:
        job.result.files.update(model_int8="model.int8.xml", weights_int8="model.int8.bin")

"""``export_model``: one cxr_cad bundle -> a MONAI bundle, ONNX, OpenVINO IR or TorchScript folder
(the formats: :data:`cxr_cad.export.formats.EXPORT_FORMATS`; every one goes through the same steps).

Every exported folder holds ``export.json`` (:mod:`cxr_cad.export.common`) and the full model
card (``model_card.md``; ``docs/README.md`` in a MONAI bundle): the one beside the bundle, else
one rendered from the bundle itself (:func:`cxr_cad.modelcard.card_for_export`). The exported fp32 model is checked against the torch model (fp32,
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
from cxr_cad.export.backends import BACKEND_REGISTRY
from cxr_cad.export.common import (
    Cohort,
    batched,
    cohort_from_manifest,
    prepare_out,
    softmax_positive,
    write_export_record,
)
from cxr_cad.export.formats import EXPORT_FORMATS, ExportFormat, Target
from cxr_cad.export.names import FORMATS, INT8_FORMATS, MAX_AUC_DROP, PARITY_TOLERANCE
from cxr_cad.export.quantize import (
    calibration_overlap,
    check_calibration_overlap,
    check_int8,
    int8_report,
    split_calibration,
)
from cxr_cad.manifest import read_manifest
from cxr_cad.model import load_bundle
from cxr_cad.modelcard import CARD_NAME, card_for_export

if TYPE_CHECKING:
    from cxr_cad.model.bundle import Bundle

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
    card_text: str = ""
    int8: bool = False
    method: str = "minmax"
    force: bool = False
    max_auc_drop: float = 0.005
    heldout_fraction: float = 0.5

    def parity(self, other_fn: Callable, what: str) -> dict:
        return _parity(self.bundle.model, other_fn, self.check_images, self.bundle.positive_index, what, self.source)


def _check_options(fmt: str, int8: bool, calibration: object) -> None:
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}, not {fmt!r}")
    if int8 and EXPORT_FORMATS[fmt].write_int8 is None:
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
    _check_options(fmt, int8, calibration)
    bundle = load_bundle(model_path)
    bundle.model.float().eval()
    overlap = None
    if int8 and calibration is not None:  # its own training/validation images: refused unless --force
        overlap = calibration_overlap(bundle.path, bundle.manifest_hash, read_manifest(calibration))
        check_calibration_overlap(overlap, force=force)
    folder = prepare_out(out, overwrite=overwrite)
    spec, positive = bundle.transform_spec, bundle.positive_class
    cohort = cohort_from_manifest(calibration, spec, positive) if calibration is not None else None
    card_text, card_source = card_for_export(bundle.path, bundle.meta)
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
        card_text=card_text,
    )
    entry = EXPORT_FORMATS[fmt]
    _export(job, entry)
    if result.int8 is not None and overlap is not None:
        result.int8["calibration_overlap"] = overlap["n_overlap"]
    if entry.copy_card:
        try:
            (folder / CARD_NAME).write_text(card_text, encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write the model card into {folder}: {exc}") from exc
        result.files["card"] = CARD_NAME
    if card_source != "beside the bundle":
        log.info("no model card beside %s: the export carries one generated from the bundle", bundle.path)
    write_export_record(
        folder,
        bundle,
        fmt,
        result.files,
        parity=result.parity,
        int8=result.int8,
        calibration_rejected=len(result.rejected),
        calibration_overlap=overlap,
    )
    return result


def _runner(entry: ExportFormat) -> Callable[[Path], Callable[[torch.Tensor], torch.Tensor]]:
    """Loads a written model file of ``entry`` with its backend (default threads, fp32)."""
    load = BACKEND_REGISTRY[entry.backend].load
    return lambda path: load(path, None, "f32")


def _export(job: _Job, entry: ExportFormat) -> None:
    """Write the fp32 model, check it against torch, and write its int8 twin when asked."""
    scratch = Path(tempfile.mkdtemp(prefix="cxr-cad-export-"))
    try:
        target = Target(job.bundle, job.out, scratch, card_text=job.card_text)
        job.result.files.update(entry.write(target))
        runner = _runner(entry)
        fp32 = runner(job.out / job.result.files[entry.checked])
        job.result.parity = job.parity(fp32, entry.label)
        if job.int8:
            _int8_twin(job, target, entry, fp32, runner)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _int8_twin(job: _Job, target: Target, entry: ExportFormat, fp32: Callable, runner: Callable) -> None:
    """Quantise on the calibration part, check on the held-out part, keep it only if accepted."""
    cohort = job.cohort
    assert cohort is not None and entry.write_int8 is not None  # checked by _check_options
    calib_idx, held_idx = split_calibration(cohort, heldout_fraction=job.heldout_fraction)
    q_file, files = entry.write_int8(target, cohort.images[calib_idx], job.method)
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
    job.result.files.update(files)

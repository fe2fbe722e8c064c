"""Which backend and runtime a :func:`~cxr_cad.inference.predict.predict` run uses.

:func:`run_backend` turns the options into a backend (``auto`` becomes ``torch`` when a precision
is set or ``compile`` is on), :func:`run_runtime` into a runtime; with ``--backend auto``
:func:`load_bundle_for_auto` loads the bundle and :func:`auto_model` has
:func:`cxr_cad.inference.backend.choose_backend` choose among the candidates on the run's first
readable inputs (the check batch), returning the chosen forward and the run record for
``summary.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cxr_cad import runtime
from cxr_cad.config import AcceptPolicy, PredictOptions
from cxr_cad.errors import ConfigError, UsageError
from cxr_cad.export.names import EXPORT_FILE
from cxr_cad.inference.backend import CHECK_IMAGES, choose_backend
from cxr_cad.inference.inputs import PredictDataset, PredictInput
from cxr_cad.inference.model import Forward
from cxr_cad.model import Bundle, load_bundle
from cxr_cad.shift.monitor import ShiftScorer

if TYPE_CHECKING:
    from cxr_cad.transforms import TransformSpec

__all__ = ["auto_model", "load_bundle_for_auto", "run_backend", "run_runtime"]

#: predict's logger: its warnings are prefixed per model by ``cxr_cad.api._report.named_warnings``.
log = logging.getLogger("cxr_cad.inference.predict")


def run_backend(options: PredictOptions) -> str:
    """The backend a run uses: ``auto`` becomes ``torch`` when a precision is set (``--precision``
    or ``CXR_CAD_PRECISION``) or ``compile`` is on. ConfigError for ``allow_int8`` without auto."""
    backend = options.backend
    if backend == "auto" and (options.precision != "auto" or runtime.precision_override() or options.compile):
        backend = "torch"
    if options.allow_int8 and backend != "auto":
        raise ConfigError(
            "--allow-int8 needs --backend auto (the default) and --precision auto, without --compile "
            f"(this run uses --backend {options.backend}, --precision {options.precision})"
        )
    return backend


def run_runtime(options: PredictOptions, backend: str) -> runtime.RuntimeInfo:
    """The runtime of ``options`` (ConfigError for a setting predict does not offer)."""
    if options.precision == "fp16":
        raise ConfigError("--precision fp16 is not offered for predict; use auto, fp32 or bf16")
    return runtime.resolve_runtime(options.device, options.precision if backend == "torch" else "fp32")


def _check_batch(inputs: Sequence[PredictInput], policy: AcceptPolicy, spec: TransformSpec) -> torch.Tensor | None:
    """The first :data:`~cxr_cad.inference.backend.CHECK_IMAGES` readable inputs, preprocessed."""
    data = PredictDataset(inputs[: 4 * CHECK_IMAGES], policy, spec)
    images = [s["image"] for s in (data[i] for i in range(len(data))) if "image" in s][:CHECK_IMAGES]
    return torch.stack(images) if images else None


def auto_model(
    bundle: Bundle,
    info: runtime.RuntimeInfo,
    inputs: Sequence[PredictInput],
    n_todo: int,
    policy: AcceptPolicy,
    options: PredictOptions,
) -> tuple[Forward, runtime.RuntimeInfo, ShiftScorer, dict[str, Any]]:
    """``--backend auto``: the chosen forward, its runtime, the shift scorer and the run record."""
    chosen = choose_backend(
        bundle,
        info,
        lambda: _check_batch(inputs, policy, bundle.transform_spec),
        allow_int8=options.allow_int8,
        n_todo=n_todo,
    )
    choice = chosen.choice
    record = {
        **chosen.info.to_dict(),
        "backend": choice.backend,
        "precision": choice.precision,
        "backend_requested": "auto",
        "allow_int8": options.allow_int8,
        "backend_choice": choice.to_dict(),
    }
    if info.is_main:
        log.info("backend auto: %s %s; %s", chosen.info.device, choice.name, choice.reason)
    return chosen.forward, chosen.info, ShiftScorer(bundle, chosen.tap_model), record


def load_bundle_for_auto(model_path: str | os.PathLike[str]) -> Bundle:
    """The bundle ``--backend auto`` scores (UsageError for a folder written by ``cxr-cad export``)."""
    p = Path(model_path)
    folder = p if p.is_dir() else p.parent
    if (folder / EXPORT_FILE).is_file():
        raise UsageError(
            f"--model {model_path} is an exported model; --backend auto chooses among runtimes for a "
            "bundle. Give the bundle, or name the export's runtime (--backend onnxruntime|openvino|torchscript)"
        )
    return load_bundle(model_path, map_location="cpu")

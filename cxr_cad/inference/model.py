"""The inference model of a prediction run: load it, fold BatchNorm, keep the first convolution
in fp32 under autocast, move it to the device.

Nothing here names a network's layers: BatchNorm folding comes from
:func:`cxr_cad.model.fold_batchnorm` (traced with ``torch.fx``, for every registered
architecture), and the first convolution is found by walking the module tree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

from cxr_cad import runtime
from cxr_cad.errors import BundleError
from cxr_cad.export.backends import load_exported
from cxr_cad.metrics.recalibration import LOGIT_EPS, Calibration
from cxr_cad.model import fold_batchnorm as model_fold_batchnorm
from cxr_cad.model import load_bundle
from cxr_cad.shift.monitor import ShiftScorer

if TYPE_CHECKING:
    from cxr_cad.transforms import TransformSpec

log = logging.getLogger(__name__)

__all__ = [
    "Fp32Module",
    "ScoringModel",
    "calibrated_probability",
    "fold_batchnorm",
    "load_model",
    "model_calibration",
    "prepare_for_inference",
]


class ScoringModel(Protocol):
    """What prediction needs from a model: a bundle (:class:`cxr_cad.model.Bundle`) or an
    exported model (:class:`cxr_cad.export.backends.ExportedModel`)."""

    @property
    def sha256(self) -> str: ...
    @property
    def classes(self) -> Sequence[str]: ...
    @property
    def positive_class(self) -> str: ...
    @property
    def positive_index(self) -> int: ...
    @property
    def threshold(self) -> float: ...
    @property
    def transform_spec(self) -> TransformSpec: ...


def model_calibration(bundle: Any) -> Calibration | None:
    """The calibration a bundle (or an exported model's ``export.json``) stores in
    ``threshold_selection.params.calibration`` (a ``calibrated`` threshold or a ``cxr-cad adapt
    --method recalibrate`` child), or None: a bundle without one is scored as before.
    BundleError when the record is there but unusable."""
    sel = getattr(bundle, "threshold_selection", None)
    if sel is None:
        sel = (getattr(bundle, "record", None) or {}).get("threshold_selection")
    record = ((sel or {}).get("params") or {}).get("calibration")
    if record is None:
        return None
    try:
        return Calibration.from_dict(record)
    except ValueError as exc:
        raise BundleError(f"{getattr(bundle, 'path', 'the model')}: {exc}") from exc


def calibrated_probability(logits: torch.Tensor, positive_index: int, calibration: Calibration | None) -> torch.Tensor:
    """Positive-class probability ``(N,)`` of ``(N, K)`` logits: the float32 softmax column,
    or with a calibration ``sigmoid(a * s + b)`` of the positive-class log-odds ``s`` computed
    from the float32 softmax probability and clipped exactly as :func:`cxr_cad.metrics.log_odds`
    (so it is the same function of the probability the calibration was fitted on), in float64."""
    p = torch.softmax(logits.float(), dim=1)[:, positive_index]
    if calibration is None:  # exactly as before calibrations existed
        return p
    p = p.double()  # the float32 probability, as the calibration was fitted on
    q = p.clamp(LOGIT_EPS, 1.0 - LOGIT_EPS)
    s = torch.log(q) - torch.log1p(-q)
    return torch.sigmoid(calibration.a * s + calibration.b)


#: The forward of the inference model: a batch (N, C, S, S) -> logits (N, K).
Forward = Callable[[torch.Tensor], torch.Tensor]


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (eval mode) with each BatchNorm2d folded into the Conv2d before it
    (:func:`cxr_cad.model.fold_batchnorm`: found by tracing, for every registered network;
    the model is returned unfolded when folding would change its outputs)."""
    return model_fold_batchnorm(model)


class Fp32Module(torch.nn.Module):
    """Runs the wrapped module in fp32 even inside an autocast region.

    Used for the first convolution under bf16: the input image keeps its fp32 precision
    (bf16 would round it to about 1/500 of its range before the first layer, the largest
    single source of bf16-vs-fp32 difference in ResNet18), at the cost of one small layer.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.module(x.float())


def _keep_first_conv_fp32(net: torch.nn.Module) -> None:
    """Wrap the first convolution of ``net`` (depth first, first children) in :class:`Fp32Module`."""
    for parent in net.modules():
        first = next(iter(parent.named_children()), None)
        if first is not None and isinstance(first[1], torch.nn.Conv2d):
            setattr(parent, first[0], Fp32Module(first[1]))
            return


def prepare_for_inference(model: torch.nn.Module, info: runtime.RuntimeInfo) -> torch.nn.Module:
    """Fold BatchNorm, keep the first convolution in fp32 under autocast, move to the device."""
    model = fold_batchnorm(model.eval())
    if info.autocast_dtype is not None:
        members = getattr(model, "members", None)  # every network of an ensemble / TTA bundle
        for net in list(members) if members is not None else [model]:
            _keep_first_conv_fp32(net)
    return runtime.prepare_model(model, info)


def load_model(
    model_path: str | os.PathLike[str], info: runtime.RuntimeInfo, use_compile: bool, backend: str = "torch"
) -> tuple[ScoringModel, Any, ShiftScorer]:
    """``(model record, forward callable, shift scorer)`` for a bundle (``backend="torch"``) or an
    exported model (another backend; no features: empty shift columns).

    Raises:
        BundleError: the bundle is missing, corrupt or cannot be honoured.
    """
    if backend != "torch":  # an exported model replaces the torch forward; everything else is the same path
        exported = load_exported(model_path, backend)
        return exported, exported.model, ShiftScorer(exported, exported.model)
    bundle = load_bundle(model_path, map_location="cpu")
    model: Any = prepare_for_inference(bundle.model, info)
    shift = ShiftScorer(bundle, model)  # hooks the head; before torch.compile
    if use_compile:
        model = torch.compile(model)
    return bundle, model, shift

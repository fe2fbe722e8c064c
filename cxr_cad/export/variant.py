"""The int8 variant stored beside a bundle (``train --int8``): a network split at its classifier,
quantised on training images, verified on the validation split.

A bundle ``RUN/model.pt`` gets the folder ``RUN/model.int8/``:

* ``backbone.int8.onnx``: the network up to (not including) its classifier, int8 (QDQ, calibrated by
  :func:`cxr_cad.export.quantize.quantize_onnx` on up to 256 training images). Its output is the
  classifier's input (``features``); the classifier itself stays the bundle's fp32 ``nn.Linear``, so
  the dataset-shift score (which reads the classifier's input) works unchanged.
* ``int8.json``: the verification on the validation split against the fp32 torch model: AUC of both
  and their change, decisions changed at the bundle's stored threshold (count and fraction), max and
  99th-percentile probability change; ``accepted`` and the reasons of a refusal; the SHA-256 of the
  bundle it belongs to and of the model file. A refused variant keeps only ``int8.json`` (the
  reasons), no model file.

It is accepted when the AUC drops by at most :data:`~cxr_cad.export.names.MAX_AUC_DROP` and at most
:data:`MAX_DECISION_CHANGE` of the validation decisions change. ``cxr-cad predict --backend auto
--allow-int8`` is the only user of the variant (:mod:`cxr_cad.inference.backend`); a variant whose
``int8.json`` names another bundle's SHA-256 is ignored.

:func:`split_head` is shared with the automatic backend choice: a registered single network (no
ensemble, no test-time augmentation) splits into ``(backbone, classifier)``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr_cad.core.atomic import atomic_write_text
from cxr_cad.core.provenance import sha256_file, software_versions
from cxr_cad.export.common import EXPORT_PACKAGES, Cohort, batched, load_cohort
from cxr_cad.export.names import MAX_AUC_DROP
from cxr_cad.export.onnx import export_onnx
from cxr_cad.export.quantize import MAX_CALIBRATION_IMAGES, quantize_onnx
from cxr_cad.metrics import roc_auc
from cxr_cad.metrics.recalibration import LOGIT_EPS, Calibration
from cxr_cad.model import load_bundle
from cxr_cad.model.networks import ProbabilityAverage, layout_arch, unwrap_model
from cxr_cad.modelcard import model_card_path, write_card_for_bundle

log = logging.getLogger(__name__)

__all__ = [
    "BACKBONE_INT8",
    "FEATURES_NAME",
    "MAX_DECISION_CHANGE",
    "VARIANT_FILE",
    "HybridForward",
    "classifier_of",
    "Int8Verification",
    "find_int8_variant",
    "split_head",
    "store_int8_variant",
    "variant_dir",
]

VARIANT_FILE = "int8.json"
BACKBONE_INT8 = "backbone.int8.onnx"
FEATURES_NAME = "features"
#: Largest fraction of validation decisions (at the stored threshold) the int8 variant may change.
MAX_DECISION_CHANGE = 0.005
VARIANT_FORMAT = "cxr_cad.int8_variant"


def variant_dir(bundle_path: str | os.PathLike[str]) -> Path:
    """``RUN/model.pt`` -> ``RUN/model.int8`` (the folder of its int8 variant)."""
    p = Path(bundle_path)
    return p.with_name(p.stem + ".int8")


def classifier_of(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The classifier (``nn.Linear``) of a registered single network, also after BatchNorm
    folding; None for an ensemble / TTA bundle or an unknown layout."""
    net = unwrap_model(model)
    spec = layout_arch(net)
    if spec is None or isinstance(net, ProbabilityAverage):
        return None
    head = net.get_submodule(spec.head)
    return head if isinstance(head, torch.nn.Linear) else None


def split_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """``(backbone, classifier)`` of a registered single network: the backbone is a copy whose
    classifier is ``nn.Identity`` (its output is the classifier's input), the classifier is the
    model's own ``nn.Linear`` (not a copy). None for an ensemble / TTA bundle or an unknown layout."""
    head = classifier_of(model)
    if head is None:
        return None
    net = unwrap_model(model)
    spec = layout_arch(net)
    assert spec is not None  # classifier_of found it
    backbone = copy.deepcopy(net).eval()
    parent_name, _, leaf = spec.head.rpartition(".")
    setattr(backbone.get_submodule(parent_name) if parent_name else backbone, leaf, torch.nn.Identity())
    return backbone, head


class HybridForward:
    """``classifier(runtime(x))``: an exported backbone (any logits-like callable returning the
    classifier's input) followed by the bundle's fp32 classifier in torch. The classifier is the
    torch model's own module, so a forward hook on it (the shift score) sees the features."""

    def __init__(self, backbone: Any, head: torch.nn.Linear):
        self.backbone, self.head = backbone, head

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x).float().flatten(1).to(self.head.weight.device)
        return self.head(feats)


def _probability(logits: np.ndarray, positive_index: int, calibration: Calibration | None) -> np.ndarray:
    """Positive-class probability (the bundle's calibration applied, as predict does)."""
    p = torch.softmax(torch.as_tensor(logits).float(), dim=1)[:, positive_index].double()
    if calibration is not None:
        q = p.clamp(LOGIT_EPS, 1.0 - LOGIT_EPS)
        p = torch.sigmoid(calibration.a * (torch.log(q) - torch.log1p(-q)) + calibration.b)
    return p.numpy()


@dataclass
class Int8Verification:
    """int8 variant vs the fp32 torch model on the validation split (``int8.json``)."""

    accepted: bool
    reasons: list[str]
    n_calibration: int = 0
    n_validation: int = 0
    threshold: float = float("nan")
    auc_fp32: float = float("nan")
    auc_int8: float = float("nan")
    auc_change: float = float("nan")  # int8 - fp32 (negative: int8 worse)
    decisions_changed: int = 0
    decisions_changed_fraction: float = float("nan")
    prob_change_max: float = float("nan")
    prob_change_p99: float = float("nan")
    max_auc_drop: float = MAX_AUC_DROP
    max_decision_change: float = MAX_DECISION_CHANGE
    calibration_method: str = "minmax"
    calibrated_on: str = "training images"
    verified_on: str = "validation split"
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        if not self.n_validation:
            return f"int8 variant refused: {'; '.join(self.reasons)}"
        head = "int8 variant accepted" if self.accepted else "int8 variant refused"
        return (
            f"{head}: on {self.n_validation} validation image(s) (calibrated on {self.n_calibration} training "
            f"image(s)) AUC {self.auc_fp32:.4f} -> {self.auc_int8:.4f} ({self.auc_change:+.4f}), "
            f"{self.decisions_changed} decision(s) changed ({self.decisions_changed_fraction:.2%}) at threshold "
            f"{self.threshold:.4g}, probability change max {self.prob_change_max:.4f}, p99 {self.prob_change_p99:.4f}"
            + (f"; {'; '.join(self.reasons)}" if self.reasons else "")
        )


def _verify(
    p32: np.ndarray, p8: np.ndarray, labels: np.ndarray, threshold: float, max_auc_drop: float, max_change: float
) -> Int8Verification:
    diff = np.abs(p8 - p32)
    a32, a8 = float(roc_auc(labels, p32)), float(roc_auc(labels, p8))
    changed = int(np.sum((p32 >= threshold) != (p8 >= threshold)))
    frac = changed / len(diff)
    reasons = []
    if not np.isfinite(a8 - a32):
        reasons.append("the AUC is undefined on the validation split (one class only)")
    elif a32 - a8 > max_auc_drop:
        reasons.append(f"AUC drop {a32 - a8:.4f} > {max_auc_drop}")
    if frac > max_change:
        reasons.append(f"{frac:.2%} of decisions changed > {max_change:.2%}")
    return Int8Verification(
        accepted=not reasons,
        reasons=reasons,
        n_validation=len(diff),
        threshold=float(threshold),
        auc_fp32=a32,
        auc_int8=a8,
        auc_change=a8 - a32,
        decisions_changed=changed,
        decisions_changed_fraction=frac,
        prob_change_max=float(diff.max()),
        prob_change_p99=float(np.percentile(diff, 99)),
        max_auc_drop=max_auc_drop,
        max_decision_change=max_change,
    )


def _cohort(df: pd.DataFrame, bundle: Any, *, n: int | None, seed: int) -> Cohort:
    if n is not None and len(df) > n:
        df = df.sample(n=n, random_state=seed).sort_index()
    return load_cohort(
        df["path"].astype(str).tolist(),
        bundle.transform_spec,
        labels=df["label"].astype(str).tolist() if "label" in df else None,
        positive=bundle.positive_class,
    )


def store_int8_variant(
    bundle_path: str | os.PathLike[str],
    train_df: pd.DataFrame,
    val_df: pd.DataFrame | None,
    *,
    method: str = "minmax",
    max_auc_drop: float = MAX_AUC_DROP,
    max_decision_change: float = MAX_DECISION_CHANGE,
    seed: int = 0,
) -> Int8Verification:
    """Quantise the bundle's network on ``train_df`` images, verify it on ``val_df`` (``path`` and
    ``label`` columns) and write ``model.int8/`` beside the bundle (a refused variant: only its
    ``int8.json`` with the reasons). Returns the verification; also appended to the model card.

    Raises MissingExtraError (the ``export`` extra is not installed) and OutputError.
    """
    from cxr_cad.export.backends import OnnxRuntimeModel  # backends imports this module's names lazily

    bundle = load_bundle(bundle_path)
    bundle.model.float().eval()
    folder = variant_dir(bundle_path)
    parts = split_head(bundle.model)
    if val_df is None or len(val_df) == 0:
        result = Int8Verification(
            False, ["no validation split to verify it on (calibration images are training images)"]
        )
    elif parts is None:
        result = Int8Verification(
            False, ["ensemble / test-time-augmentation bundles have no single classifier to keep"]
        )
    else:
        result = _build(
            bundle, parts, train_df, val_df, folder, method, max_auc_drop, max_decision_change, seed, OnnxRuntimeModel
        )
    _write_record(folder, bundle, result)
    _append_to_card(bundle_path, result)
    (log.info if result.accepted else log.warning)("%s", result.line())
    return result


def _build(
    bundle, parts, train_df, val_df, folder, method, max_auc_drop, max_change, seed, ort_model
) -> Int8Verification:
    backbone, head = parts
    spec = bundle.transform_spec
    calib = _cohort(train_df, bundle, n=MAX_CALIBRATION_IMAGES, seed=seed)
    val = _cohort(val_df, bundle, n=None, seed=seed)
    sel = bundle.threshold_selection or {}
    record = ((sel.get("params") or {}).get("calibration")) or None
    calibration = Calibration.from_dict(record) if record else None
    scratch = Path(tempfile.mkdtemp(prefix="cxr-cad-int8-", dir=folder.parent))
    try:
        fp32_onnx = scratch / "backbone.onnx"
        export_onnx(
            backbone, fp32_onnx, in_channels=spec.in_channels, image_size=spec.image_size, output_name=FEATURES_NAME
        )
        quantize_onnx(fp32_onnx, scratch / BACKBONE_INT8, calib.images, method=method)
        fp32_onnx.unlink()
        int8 = HybridForward(ort_model(scratch / BACKBONE_INT8), head)
        p32 = _probability(batched(bundle.model, val.images), bundle.positive_index, calibration)
        p8 = _probability(batched(int8, val.images), bundle.positive_index, calibration)
        result = _verify(p32, p8, val.labels, bundle.threshold, max_auc_drop, max_change)
        result.n_calibration = len(calib.images)
        result.calibration_method = method
        result.extra = {"unreadable_calibration": len(calib.rejected), "unreadable_validation": len(val.rejected)}
        shutil.rmtree(folder, ignore_errors=True)
        if result.accepted:
            os.replace(scratch, folder)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_record(folder: Path, bundle: Any, result: Int8Verification) -> None:
    folder.mkdir(exist_ok=True)
    model = folder / BACKBONE_INT8
    record = {
        "format": VARIANT_FORMAT,
        "format_version": 1,
        "bundle_sha256": bundle.sha256,
        "bundle_file": Path(bundle.path).name,
        "model": {"path": BACKBONE_INT8, "sha256": sha256_file(model), "output": FEATURES_NAME}
        if result.accepted and model.is_file()
        else None,
        "verification": asdict(result),
        "versions": software_versions(EXPORT_PACKAGES),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(folder / VARIANT_FILE, json.dumps(record, indent=2, sort_keys=True, default=float) + "\n")


def _append_to_card(bundle_path: str | os.PathLike[str], result: Int8Verification) -> None:
    """Rewrite the bundle's model card: it shows the variant from ``int8.json``
    (:func:`cxr_cad.modelcard.render_model_card`), on this and every later rewrite."""
    if model_card_path(bundle_path).is_file():
        write_card_for_bundle(bundle_path)


def find_int8_variant(bundle: Any) -> tuple[Path | None, dict | None, str]:
    """``(model file, verification, reason)`` of the accepted int8 variant beside ``bundle``;
    ``(None, verification or None, why not)`` when there is none to use."""
    folder = variant_dir(bundle.path)
    path = folder / VARIANT_FILE
    if not path.is_file():
        return None, None, f"no int8 variant beside the bundle (train with --int8 to store one in {folder.name}/)"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, None, f"{path} is unreadable ({exc})"
    ver = record.get("verification") or {}
    if record.get("bundle_sha256") != bundle.sha256:
        return None, ver, f"{path} belongs to another bundle (SHA-256 differs)"
    model = record.get("model")
    if not ver.get("accepted") or not model:
        return None, ver, "the int8 variant was refused: " + "; ".join(ver.get("reasons") or ["no reason recorded"])
    file = folder / model["path"]
    if not file.is_file() or sha256_file(file) != model.get("sha256"):
        return None, ver, f"{file} is missing or altered (SHA-256 differs from {VARIANT_FILE})"
    return file, ver, "verified int8 variant"

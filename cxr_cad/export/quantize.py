"""Post-training static int8 quantisation with onnxruntime's own tool, and its safety check.

:func:`quantize_onnx` runs ``onnxruntime.quantization.quantize_static`` (QDQ format,
per-channel int8 weights, uint8 activations: the U8S8 layout onnxruntime recommends for
x86 VNNI/AMX) with a calibration reader over preprocessed radiographs. The first
convolution and the classifier stay in fp32, as in the bf16 torch path: quantising the raw
input image and the final logits costs the most accuracy for the least time. OpenVINO reads
the same QDQ graph and runs it with its own int8 kernels (:mod:`cxr_cad.export.openvino`).

:func:`split_calibration` splits a labelled cohort by patient into a calibration part and
a held-out part; :func:`int8_report` compares fp32 and int8 probabilities on the held-out
part (max and 99th-percentile absolute change, AUC of both). :func:`check_int8` refuses an
int8 model whose AUC drops by more than ``max_auc_drop`` unless forced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_cad.errors import ConfigError, CxrCadError, UsageError
from cxr_cad.export.common import INPUT_NAME, Cohort, batched, require, softmax_positive
from cxr_cad.export.names import CALIBRATION_METHODS, MAX_AUC_DROP
from cxr_cad.manifest import grouped_split
from cxr_cad.metrics import roc_auc

log = logging.getLogger(__name__)

EXTRA = "export"
#: At most this many calibration images (onnxruntime keeps every batch's activations to find ranges).
MAX_CALIBRATION_IMAGES = 256


class Int8Refused(CxrCadError):
    """The int8 model lost more AUC than allowed on the held-out part; nothing was written."""


@dataclass
class Int8Report:
    """fp32 vs int8 on the held-out part of the calibration cohort."""

    n_calibration: int
    n_heldout: int
    prob_change_max: float
    prob_change_p99: float
    auc_fp32: float
    auc_int8: float
    auc_change: float  # int8 - fp32 (negative = int8 worse)
    max_auc_drop: float
    accepted: bool
    forced: bool = False
    calibration_method: str = "minmax"
    #: calibration rows that are the bundle's training/validation images (exported with --force)
    calibration_overlap: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (
            f"int8 vs fp32 on {self.n_heldout} held-out image(s) (calibrated on {self.n_calibration}): "
            f"probability change max {self.prob_change_max:.4f}, p99 {self.prob_change_p99:.4f}; "
            f"AUC {self.auc_fp32:.4f} -> {self.auc_int8:.4f} ({self.auc_change:+.4f})"
            + (
                f"; NOT held out: {self.calibration_overlap} calibration image(s) are the bundle's training or "
                "validation images (--force)"
                if self.calibration_overlap
                else ""
            )
        )


def split_calibration(cohort: Cohort, *, heldout_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(calibration_idx, heldout_idx): a patient-grouped, label-stratified split of ``cohort``."""
    if len(cohort.labels) < 4 or len(set(cohort.labels.tolist())) < 2:
        raise UsageError(
            "--calibration needs a labelled manifest with both classes and at least 4 readable "
            f"images; got {len(cohort.labels)} image(s), labels {sorted(set(cohort.labels.tolist()))}"
        )
    df = pd.DataFrame({"label": cohort.labels.astype(str), "patient_id": cohort.groups.astype(str)})
    calib, held = grouped_split(df, heldout_fraction, seed=seed)
    return np.asarray(calib), np.asarray(held)


#: The training run's split table beside a bundle (``cxr_cad.training.rundir.SPLIT_FILE``).
SPLIT_FILE = "split.csv"


def _image_keys(df: pd.DataFrame) -> list[set[str]]:
    """Per row, the identities of its image: SOP Instance UID and ``sha256:<hex>`` of the file."""
    uids = df["sop_instance_uid"].astype(str) if "sop_instance_uid" in df else pd.Series([""] * len(df))
    shas = df["sha256"].astype(str) if "sha256" in df else pd.Series([""] * len(df))
    return [
        {k for k in (u, f"sha256:{h}" if h and not h.startswith("sha256:") else h) if k and k != "nan"}
        for u, h in zip(uids.tolist(), shas.tolist())
    ]


def calibration_overlap(bundle_path: str | Path, manifest_hash_: str, calibration: pd.DataFrame) -> dict:
    """Which calibration rows are the bundle's own training or validation images.

    Compares SOP Instance UIDs and file SHA-256 (``sha256:<hex>``, the UID of PNG/JPEG images) with
    the run's ``split.csv`` beside the bundle; without one, only a calibration manifest whose hash
    equals the bundle's training-manifest hash is recognised. Returns ``{"checked_against", "n_rows",
    "n_overlap", "n_train", "n_val", "examples"}`` (``examples``: up to 5 paths).
    """
    from cxr_cad.manifest import manifest_hash

    split_path = Path(bundle_path).parent / SPLIT_FILE
    keys = _image_keys(calibration)
    paths = calibration["path"].astype(str).tolist()
    out = {"n_rows": len(keys), "n_overlap": 0, "n_train": 0, "n_val": 0, "examples": []}
    if split_path.is_file():
        split = pd.read_csv(split_path, dtype=str, keep_default_na=False)
        role = {}
        for ks, part in zip(_image_keys(split), split.get("split", pd.Series(["train"] * len(split))).tolist()):
            for k in ks:
                role[k] = "val" if part == "val" else "train"
        hits = [(p, next((role[k] for k in ks if k in role), None)) for p, ks in zip(paths, keys)]
        hits = [(p, r) for p, r in hits if r is not None]
        out.update(
            checked_against=f"{SPLIT_FILE} beside the bundle",
            n_overlap=len(hits),
            n_train=sum(r == "train" for _, r in hits),
            n_val=sum(r == "val" for _, r in hits),
            examples=[p for p, _ in hits[:5]],
        )
    elif manifest_hash_ and manifest_hash(calibration) == manifest_hash_:
        out.update(checked_against="the bundle's training-manifest hash", n_overlap=len(keys), n_train=len(keys))
        out["examples"] = paths[:5]
    else:
        out["checked_against"] = f"nothing: no {SPLIT_FILE} beside the bundle and the manifest hashes differ"
    return out


def check_calibration_overlap(overlap: dict, *, force: bool) -> None:
    """UsageError when calibration rows are the bundle's training/validation images, unless ``force``."""
    n = overlap["n_overlap"]
    if not n:
        return
    what = (
        f"{n} of the {overlap['n_rows']} calibration image(s) are the bundle's own training ({overlap['n_train']}) "
        f"or validation ({overlap['n_val']}) images (by SOP Instance UID / SHA-256, checked against "
        f"{overlap['checked_against']}), e.g. {', '.join(overlap['examples'][:3])}"
    )
    if not force:
        raise UsageError(
            f"--calibration: {what}; the int8 check would not be held out. Give images the model never saw, "
            "or --force to quantise anyway (the overlap is recorded)"
        )
    log.warning("int8 calibration overlaps the training data (--force): %s", what)


def _nodes_to_keep_fp32(onnx_path: Path) -> list[str]:
    """Names of the first Conv and the last Gemm/MatMul node of the graph."""
    onnx = require("onnx", EXTRA)
    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    first = next((n.name for n in nodes if n.op_type == "Conv"), None)
    last = next((n.name for n in reversed(nodes) if n.op_type in ("Gemm", "MatMul")), None)
    return [n for n in (first, last) if n]


def quantize_onnx(
    fp32_path: str | Path, int8_path: str | Path, images: torch.Tensor, *, method: str = "minmax", batch_size: int = 16
) -> Path:
    """Static QDQ int8 quantisation of ``fp32_path`` calibrated on ``images`` ``(N, C, S, S)``."""
    q = require("onnxruntime.quantization", EXTRA)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration method must be one of {CALIBRATION_METHODS}, not {method!r}")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    images = images[:MAX_CALIBRATION_IMAGES]

    class Reader(q.CalibrationDataReader):  # type: ignore[name-defined]  # q: the optional extra, imported at run time
        def __init__(self):
            self.batches = iter([images[i : i + batch_size].numpy() for i in range(0, len(images), batch_size)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    pre = int8_path.with_name(int8_path.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    cal = {
        "minmax": q.CalibrationMethod.MinMax,
        "percentile": q.CalibrationMethod.Percentile,
        "entropy": q.CalibrationMethod.Entropy,
    }[method]
    try:
        q.quantize_static(
            str(pre),
            str(int8_path),
            Reader(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            nodes_to_exclude=_nodes_to_keep_fp32(pre),
            calibrate_method=cal,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    finally:
        pre.unlink(missing_ok=True)
    log.info("wrote int8 ONNX model %s (calibrated on %d image(s), %s)", int8_path, len(images), method)
    return int8_path


def int8_report(
    fp32_fn: Callable,
    int8_fn: Callable,
    heldout: Cohort,
    positive_index: int,
    *,
    n_calibration: int,
    max_auc_drop: float = MAX_AUC_DROP,
    method: str = "minmax",
) -> Int8Report:
    """Compare two logits functions on ``heldout`` (labels 0/1)."""
    p32 = softmax_positive(batched(fp32_fn, heldout.images), positive_index)
    p8 = softmax_positive(batched(int8_fn, heldout.images), positive_index)
    diff = np.abs(p8 - p32)
    a32, a8 = roc_auc(heldout.labels, p32), roc_auc(heldout.labels, p8)
    change = float(a8 - a32)
    return Int8Report(
        n_calibration=n_calibration,
        n_heldout=len(diff),
        prob_change_max=float(diff.max()),
        prob_change_p99=float(np.percentile(diff, 99)),
        auc_fp32=float(a32),
        auc_int8=float(a8),
        auc_change=change,
        max_auc_drop=max_auc_drop,
        accepted=bool(np.isfinite(change) and -change <= max_auc_drop),
        calibration_method=method,
    )


def check_int8(report: Int8Report, *, force: bool) -> Int8Report:
    """Raise :class:`Int8Refused` when the AUC drop exceeds the limit and ``force`` is off."""
    if report.accepted:
        return report
    if not force:
        raise Int8Refused(
            f"{report.line()}: the AUC drop exceeds {report.max_auc_drop}; no int8 model written. "
            "Try --calibration-method percentile or a larger calibration manifest, or --force "
            "to write it anyway"
        )
    report.forced = True
    log.warning("int8 model written despite an AUC drop above %s (--force): %s", report.max_auc_drop, report.line())
    return report

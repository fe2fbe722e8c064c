"""The candidates of ``predict --backend auto`` (:mod:`cxr_cad.inference.backend`): every backend
this machine and bundle offer (:func:`list_candidates`), each verified against torch fp32 on the check
batch and timed (:func:`measure`)."""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cxr_cad import runtime
from cxr_cad.errors import CxrCadError
from cxr_cad.export.backends import OnnxRuntimeModel, OpenVinoModel
from cxr_cad.export.onnx import export_onnx
from cxr_cad.export.variant import FEATURES_NAME, HybridForward, classifier_of, find_int8_variant, split_head
from cxr_cad.inference.backend_cache import cpu_identity
from cxr_cad.inference.model import calibrated_probability, model_calibration, prepare_for_inference

__all__ = ["TOLERANCE", "Candidate", "Context", "list_candidates", "measure"]

#: Largest |probability difference| from torch fp32 on the check batch.
TOLERANCE = 1e-3
TIMING_REPEATS = 3


@dataclass
class Candidate:
    name: str  # "openvino int8"
    build: Callable[[], tuple[Callable[[torch.Tensor], torch.Tensor], runtime.RuntimeInfo, torch.nn.Module]]
    tolerance: float = TOLERANCE


class Context:
    """Lazily built shared parts: the fp32 torch model, its split, the exported backbone."""

    def __init__(self, bundle: Any, info: runtime.RuntimeInfo, folder: Path):
        self.bundle, self.info, self.folder = bundle, dataclasses.replace(info, precision="fp32"), folder
        self.info = dataclasses.replace(self.info, channels_last=info.device.startswith("cuda"))
        self._fp32: torch.nn.Module | None = None

    def torch_model(self, info: runtime.RuntimeInfo) -> torch.nn.Module:
        """The bundle's network prepared for ``info`` (a copy: BatchNorm folding copies it in fp32;
        under autocast the first convolution is wrapped, so it is copied first)."""
        model = self.bundle.model if info.autocast_dtype is None else copy.deepcopy(self.bundle.model)
        return prepare_for_inference(model, info)

    def fp32(self) -> torch.nn.Module:
        if self._fp32 is None:
            self._fp32 = self.torch_model(self.info)
        return self._fp32

    def head(self) -> torch.nn.Linear:
        head = classifier_of(self.fp32())
        assert head is not None  # exported candidates are offered only for splittable networks
        return head

    def backbone_onnx(self) -> Path:
        """The cached fp32 backbone ONNX file (exported once, atomically)."""
        path = self.folder / "backbone.onnx"
        if not path.is_file():
            parts = split_head(self.bundle.model)
            assert parts is not None
            spec = self.bundle.transform_spec
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".backbone-", suffix=".onnx", dir=self.folder)
            os.close(fd)
            try:
                export_onnx(
                    parts[0],
                    tmp,
                    in_channels=spec.in_channels,
                    image_size=spec.image_size,
                    output_name=FEATURES_NAME,
                )
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        return path

    def hybrid(self, backbone: Any) -> tuple[Callable, runtime.RuntimeInfo, torch.nn.Module]:
        return HybridForward(backbone, self.head()), self.info, self.fp32()


def list_candidates(ctx: Context, allow_int8: bool) -> tuple[list[Candidate], dict | None, str]:
    """Every candidate this machine and bundle offer; the int8 variant's verification and a note."""
    info, bundle = ctx.info, ctx.bundle
    out = [Candidate("torch fp32", lambda: (ctx.fp32(), info, ctx.fp32()))]

    def torch_at(precision: str) -> Candidate:
        def build():
            i = dataclasses.replace(info, precision=precision, channels_last=True)
            m = ctx.torch_model(i)
            return m, i, m

        return Candidate(f"torch {precision}", build)

    if info.device.startswith("cuda"):
        out.append(torch_at("bf16" if torch.cuda.is_bf16_supported() else "fp16"))
        return out, None, ""
    if runtime.cpu_has_native_bf16():
        out.append(torch_at("bf16"))
    if classifier_of(bundle.model) is None:
        return out, None, "ensemble / TTA bundle: torch only"
    out.append(Candidate("onnxruntime fp32", lambda: ctx.hybrid(OnnxRuntimeModel(ctx.backbone_onnx()))))
    ov_cache = ctx.folder / "openvino"
    out.append(Candidate("openvino fp32", lambda: ctx.hybrid(OpenVinoModel(ctx.backbone_onnx(), cache_dir=ov_cache))))
    if "amx_bf16" in cpu_identity()["flags"].split():
        out.append(
            Candidate(
                "openvino bf16",
                lambda: ctx.hybrid(OpenVinoModel(ctx.backbone_onnx(), precision="bf16", cache_dir=ov_cache)),
            )
        )
    note, ver = "", None
    if allow_int8:
        file, ver, note = find_int8_variant(bundle)
        if file is not None and ver is not None:
            tol = max(TOLERANCE, float(ver.get("prob_change_max") or 0.0))
            out.append(Candidate("onnxruntime int8", lambda: ctx.hybrid(OnnxRuntimeModel(file)), tol))
            out.append(Candidate("openvino int8", lambda: ctx.hybrid(OpenVinoModel(file, cache_dir=ov_cache)), tol))
    return out, ver, note


def _probs(run: Callable, images: torch.Tensor, info: runtime.RuntimeInfo, bundle: Any) -> torch.Tensor:
    with torch.inference_mode(), runtime.autocast(info):
        logits = run(runtime.to_device(images, info))
    return calibrated_probability(logits.float().cpu(), bundle.positive_index, model_calibration(bundle))


def _speed(run: Callable, images: torch.Tensor, info: runtime.RuntimeInfo) -> float:
    """Images/s on ``images`` (best of :data:`TIMING_REPEATS` after the verification's warm-up)."""
    best = float("inf")
    x = runtime.to_device(images, info)
    with torch.inference_mode(), runtime.autocast(info):
        for _ in range(TIMING_REPEATS):
            t = time.perf_counter()
            run(x)
            if info.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
    return len(images) / best


def measure(ctx: Context, candidates: list[Candidate], images: torch.Tensor) -> tuple[list[dict], dict]:
    """Verify and time every candidate; returns the table and the built ones by name."""
    table, built = [], {}
    ref = None
    for cand in candidates:
        row: dict[str, Any] = {"name": cand.name, "tolerance": cand.tolerance}
        try:
            fwd, info, tap = cand.build()
            p = _probs(fwd, images, info, ctx.bundle)
            ref = p if ref is None else ref  # torch fp32 is the first candidate
            diff = float((p.double() - ref.double()).abs().max())
            row["max_abs_prob_diff"] = diff
            row["verified"] = diff <= cand.tolerance
            if row["verified"]:
                row["images_per_s"] = round(_speed(fwd, images, info), 2)
                built[cand.name] = (fwd, info, tap)
            else:
                row["reason"] = f"probabilities differ from torch fp32 by {diff:.2g} > {cand.tolerance:g}"
        except (CxrCadError, RuntimeError, OSError, ValueError, ImportError) as exc:  # each runtime's own errors
            if ref is None:
                raise  # torch fp32 itself failed: nothing to compare against
            row["verified"] = False
            row["reason"] = (
                f"failed to load or run: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
            )
        table.append(row)
    return table, built

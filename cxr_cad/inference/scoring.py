"""What turns a batch of decoded images into journal records: the model's forward, the
probability (calibrated where the bundle says so), the decision, the shift columns and the
rejections; and how the main process keeps its own small per-batch work off the runtime's threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from cxr_cad import runtime
from cxr_cad.inference.inputs import Batch, Sample
from cxr_cad.inference.model import Forward, calibrated_probability
from cxr_cad.inference.outputs import multilabel_fields
from cxr_cad.shift.monitor import ShiftScorer

if TYPE_CHECKING:
    from cxr_cad.metrics.recalibration import Calibration

__all__ = ["Scoring", "small_ops_on_one_thread"]


@dataclass
class Scoring:
    """What turns a batch into journal records: the model and how its outputs are written."""

    forward: Forward
    info: runtime.RuntimeInfo
    positive_index: int
    threshold: float
    names: tuple[str, str]
    sha256: str
    labels: dict[int, str]
    paths: Sequence[str]
    shift: ShiftScorer | None = None
    calibration: Calibration | None = None  # the bundle's; applied to every probability
    findings: list[tuple[str, float]] | None = None  # multi-label: (finding, threshold) per sigmoid output

    def records(self, batch: Batch) -> list[dict[str, Any]]:
        """Journal records of one batch: a prediction per accepted image, then the rejections."""
        records: list[dict[str, Any]] = []
        if batch["images"] is not None:
            x = runtime.to_device(batch["images"], self.info)
            with runtime.autocast(self.info):
                logits = self.forward(x)
            if self.findings is not None:  # multi-label: one sigmoid per finding (inference/outputs.py)
                probs = torch.sigmoid(logits.float()).cpu().tolist()
            else:
                probs = calibrated_probability(logits.float(), self.positive_index, self.calibration).cpu().tolist()
            shift_cols = self.shift.columns(len(probs)) if self.shift is not None else [{}] * len(probs)
            for rec, p, cols in zip(batch["accepted"], probs, shift_cols):
                records.append(self._prediction(rec, p, cols))
        for rej in batch["rejected"]:
            i = rej["index"]
            records.append(
                {
                    "index": i,
                    "kind": "rejected",
                    "path": self.paths[i],
                    "reason": rej["reason"],
                    "detail": rej["detail"],
                }
            )
        return records

    def _prediction(self, rec: Sample, p: Any, cols: dict[str, str]) -> dict[str, Any]:
        i = rec["index"]
        if self.findings is not None:
            cols = {**multilabel_fields(p, self.findings), **cols}
            p = float("nan")
        return {
            "index": i,
            "kind": "prediction",
            "path": self.paths[i],
            "sop_instance_uid": rec["sop_instance_uid"],
            "study_instance_uid": rec["study_instance_uid"],
            "probability": f"{p:.6f}",
            "decision": self.names[0] if p >= self.threshold else self.names[1],
            "threshold": f"{self.threshold:g}",
            "model_sha256": self.sha256,
            "label": self.labels.get(i, ""),
            **cols,
        }


@contextlib.contextmanager
def small_ops_on_one_thread(enabled: bool) -> Iterator[None]:
    """With a runtime that has its own thread pool (OpenVINO, onnxruntime) on the CPU, run the
    per-batch torch and numpy work of the main process (softmax, the head, the shift score's
    distances) on one thread: their pools otherwise spin against the runtime's threads and the
    decode workers on the same cores (15-45 ms per batch of 32 on 2 cores for operations of well
    under 1 ms; docs/benchmarks.md). Same numbers: these are row-wise operations on small arrays.
    """
    if not enabled:
        yield
        return
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)

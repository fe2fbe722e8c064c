"""The settings and the result of a batch prediction (:func:`cxr_cad.inference.predict.predict`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydantic import ConfigDict, Field

from cxr_cad.config.base import StrictModel
from cxr_cad.config.choices import Precision
from cxr_cad.inference.outputs import PREDICTIONS, REJECTED
from cxr_cad.io import AcceptPolicy

__all__ = ["PredictOptions", "PredictResult"]


class PredictOptions(StrictModel):
    """Settings of a prediction run (frozen; unknown fields and bad values raise ConfigError).

    Attributes:
        batch_size: images per forward pass (>= 1).
        workers: DataLoader decode processes; 0 decodes in the main process; None = one per
            CPU core (at most 8).
        device: "auto", "cpu", "cuda" or "cuda:N".
        precision: "auto" (bf16 on CPUs with native bf16 and on CUDA, else fp32), "fp32", "bf16".
        threshold: decision threshold on the positive-class probability in [0, 1]; None =
            the bundle's.
        policy: which files are accepted (``cxr_cad.io.AcceptPolicy``); its ``apply_voi`` is
            always taken from the bundle's transform spec. None = the default policy.
        overwrite: discard an earlier run in the output folder instead of resuming it.
        compile: ``torch.compile`` the model (on a 2-core CPU measured: ~80 s to compile, no
            steady-state gain over eager bf16; may pay off on GPUs and very large runs).
        backend: "torch" (``model_path`` is a bundle) or "onnxruntime" / "openvino" /
            "torchscript" (``model_path`` is a folder or file from ``cxr-cad export``; fp32 input,
            ``precision`` ignored; see :mod:`cxr_cad.export.backends`).

    Construct with keywords as before (``PredictOptions(batch_size=8, workers=0)``); a changed
    copy is ``options.replace(overwrite=True)`` (validated again).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    error_prefix: ClassVar[str] = "predict"

    batch_size: int = Field(32, ge=1)
    workers: int | None = Field(None, ge=0)
    device: str = "auto"
    precision: Precision = "auto"
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    policy: AcceptPolicy | None = None
    overwrite: bool = False
    compile: bool = False
    backend: str = "torch"


@dataclass
class PredictResult:
    """What a run did (rank 0's view after the merge; other ranks get their own counts)."""

    out_dir: Path
    n_inputs: int
    n_predicted: int
    n_rejected: int
    n_positive: int
    reasons: dict[str, int]
    n_done_before: int  # inputs already finished by an earlier, interrupted run
    n_processed: int  # inputs this invocation (this rank) processed
    seconds: float
    model_sha256: str
    threshold: float
    runtime: dict = field(default_factory=dict)
    shift: dict | None = None  # cohort shift result (cxr_cad.shift.monitor.cohort_shift); None: no summary

    @property
    def images_per_s(self) -> float:
        return self.n_processed / self.seconds if self.seconds > 0 else 0.0

    def summary_line(self) -> str:
        """One line for the terminal: counts, reasons, speed, where the CSVs are."""
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items()))
        resumed = f", {self.n_done_before} from an earlier run" if self.n_done_before else ""
        return (
            f"{self.n_inputs} file(s): {self.n_predicted} scored ({self.n_positive} positive at "
            f"threshold {self.threshold:g}), {self.n_rejected} rejected"
            f"{' (' + reasons + ')' if reasons else ''}{resumed}; "
            f"{self.n_processed} in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s, "
            f"{self.runtime.get('device', '?')} {self.runtime.get('precision', '?')}); "
            f"-> {self.out_dir / PREDICTIONS}, {self.out_dir / REJECTED}"
        )

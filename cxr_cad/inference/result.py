"""The result of a batch prediction (:func:`cxr_cad.inference.predict.predict`); its settings are
:class:`cxr_cad.config.predict.PredictOptions`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxr_cad.inference.outputs import PREDICTIONS, REJECTED

__all__ = ["PredictResult"]


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
    calibration: dict | None = None  # the bundle's calibration applied to the probabilities; None: raw softmax
    positives_by_finding: dict[str, int] | None = None  # multi-label model: images called present per finding

    @property
    def images_per_s(self) -> float:
        return self.n_processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def runtime_label(self) -> str:
        """Where and how the network ran, e.g. ``cpu openvino int8``, ``cpu torch bf16``."""
        rt = self.runtime
        return f"{rt.get('device', '?')} {rt.get('backend', 'torch')} {rt.get('precision', '?')}"

    def summary_line(self) -> str:
        """One line for the terminal: counts, reasons, speed, where the CSVs are."""
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items()))
        resumed = f", {self.n_done_before} from an earlier run" if self.n_done_before else ""
        calls = f"{self.n_positive} positive at threshold {self.threshold:g}"
        if self.positives_by_finding is not None:  # one threshold per finding, stored in the bundle
            calls = "present: " + ", ".join(f"{f} {n}" for f, n in self.positives_by_finding.items())
        return (
            f"{self.n_inputs} file(s): {self.n_predicted} scored ({calls}), {self.n_rejected} rejected"
            f"{' (' + reasons + ')' if reasons else ''}{resumed}; "
            f"{self.n_processed} in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s, "
            f"{self.runtime_label}); "
            f"-> {self.out_dir / PREDICTIONS}, {self.out_dir / REJECTED}"
        )

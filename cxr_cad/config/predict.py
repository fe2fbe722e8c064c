"""The settings of a batch prediction (:func:`cxr_cad.inference.predict.predict`): a typed option,
so the CLI, the API and workflow steps build it without importing the inference package."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from cxr_cad.config.accept import AcceptPolicy
from cxr_cad.config.base import StrictModel
from cxr_cad.config.choices import Precision

__all__ = ["PredictOptions"]


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
        policy: which files are accepted (:class:`~cxr_cad.config.accept.AcceptPolicy`); its ``apply_voi`` is
            always taken from the bundle's transform spec. None = the default policy.
        overwrite: discard an earlier run in the output folder instead of resuming it.
        compile: ``torch.compile`` the model (on a 2-core CPU measured: ~80 s to compile, no
            steady-state gain over eager bf16; may pay off on GPUs and very large runs).
        backend: "auto" (default; ``model_path`` is a bundle): the fastest backend whose
            probabilities equal torch fp32 within 1e-3, chosen once per machine and bundle and
            cached (:mod:`cxr_cad.inference.backend`); an explicit ``precision`` or ``compile``
            means torch. "torch": the bundle in torch at ``precision``. "onnxruntime" /
            "openvino" / "torchscript": ``model_path`` is a folder or file from ``cxr-cad
            export`` (fp32 input, ``precision`` ignored; see :mod:`cxr_cad.export.backends`).
        allow_int8: with ``backend="auto"``, the bundle's verified int8 variant (``train
            --int8``) may be chosen too.

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
    backend: Literal["auto", "torch", "onnxruntime", "openvino", "torchscript"] = "auto"
    allow_int8: bool = False

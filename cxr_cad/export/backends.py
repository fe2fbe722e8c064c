"""Exported models as drop-in replacements for the torch forward pass.

:func:`load_exported` returns an :class:`ExportedModel` with the same attributes the
prediction engine reads from a :class:`~cxr_cad.model.Bundle` (``classes``,
``positive_class``, ``positive_index``, ``transform_spec``, ``threshold``, ``sha256``) and a
``model`` that maps a ``(N, C, S, S)`` float32 tensor to ``(N, K)`` logits like the torch
module, so the engine's code path (decode, preprocess, reasons, resume, sharding, CSVs) is
the same for every backend.

Backends: ``onnxruntime`` (an ``.onnx`` file), ``openvino`` (OpenVINO IR ``.xml``, or an
``.onnx`` file, which OpenVINO reads directly) and ``torchscript`` (``.ts``). A folder
written by ``cxr-cad export`` is read through its ``export.json``; when it holds an int8
model as well as the fp32 one, the int8 model is used (pass the ``.onnx``/``.xml`` file to
choose).
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from monai.data import load_net_with_metadata

from cxr_cad.core.provenance import sha256_file
from cxr_cad.errors import BundleError, ConfigError, UsageError
from cxr_cad.export.common import EXPORT_FILE, INPUT_NAME, read_export_record, require
from cxr_cad.export.names import BACKENDS
from cxr_cad.transforms import TransformSpec

log = logging.getLogger(__name__)


class _Callable(ABC):
    """Module-like: ``eval()``/``to()`` are accepted and do nothing; calling returns logits
    (each backend implements ``__call__``)."""

    def eval(self):
        return self

    def to(self, *args: Any, **kwargs: Any):
        return self

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, S, S) float32 -> (N, K) logits
        """Logits of a batch."""


class OnnxRuntimeModel(_Callable):
    """An onnxruntime CPU session; ``threads`` intra-op threads (default: torch's)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        ort = require("onnxruntime", "export")
        self.path = str(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: arr})[0])


class OpenVinoModel(_Callable):
    """An OpenVINO CPU compiled model.

    ``precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT``: ``"f32"`` (default; on CPUs
    with AMX/bf16 units OpenVINO would otherwise run fp32 layers in bf16) or ``"bf16"``.
    Int8 layers of a quantised model run in int8 either way. ``cache_dir``: OpenVINO's own
    compiled-model cache (``CACHE_DIR``), so a second load skips compilation.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        precision: str = "f32",
        cache_dir: str | os.PathLike | None = None,
    ):
        ov = require("openvino", "export")
        self.path = str(path)
        core = ov.Core()
        if cache_dir is not None:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        config = {
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
            # Threads free to migrate: predict's decode workers share the cores, and a thread pinned
            # to a core a worker occupies waits. Paired runs (600 224-px DICOMs, 2 cores, 2 decode
            # workers): fp32 90-92 -> 94-95 images/s, int8 unchanged (docs/benchmarks.md).
            "ENABLE_CPU_PINNING": False,
        }
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().contiguous().cpu().numpy()
        out = self.request.infer({0: arr})
        return torch.from_numpy(next(iter(out.values())).copy())


class TorchScriptModel(_Callable):
    def __init__(self, path: str | os.PathLike):
        self.module, self.meta, _ = load_net_with_metadata(str(path), map_location=torch.device("cpu"))
        self.module.eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float())


@dataclass(frozen=True)
class Backend:
    """One runtime that runs exported models.

    Attributes:
        name: the ``--backend`` value.
        suffixes: model files it reads (the first suffix it finds in an export folder is used).
        load: ``(file, threads, precision) -> model``: a callable from a ``(N, C, S, S)`` float32
            tensor to ``(N, K)`` logits (``threads`` None = torch's; ``precision`` is OpenVINO's
            inference precision hint, ignored by the others).
        export_format: the ``cxr-cad export --format`` that writes a file it reads.
    """

    name: str
    suffixes: tuple[str, ...]
    load: Callable[[Path, int | None, str], _Callable]
    export_format: str


#: Every backend, by name (the names of :data:`cxr_cad.export.names.BACKENDS`, in that order).
BACKEND_REGISTRY: Mapping[str, Backend] = MappingProxyType(
    {
        b.name: b
        for b in (
            Backend("onnxruntime", (".onnx",), lambda f, threads, _: OnnxRuntimeModel(f, threads), "onnx"),
            Backend("openvino", (".xml", ".onnx"), OpenVinoModel, "openvino"),
            Backend("torchscript", (".ts",), lambda f, _threads, _precision: TorchScriptModel(f), "torchscript"),
        )
    }
)
if tuple(BACKEND_REGISTRY) != BACKENDS:  # the torch-free names the CLI offers
    raise RuntimeError(
        f"export backends {tuple(BACKEND_REGISTRY)} differ from cxr_cad.export.names.BACKENDS {BACKENDS}"
    )


@dataclass
class ExportedModel:
    """What the prediction engine needs from a model, for an exported file."""

    model: Any
    backend: str
    path: str
    sha256: str
    classes: list[str]
    positive_class: str
    positive_index: int
    transform_spec: Any
    threshold: float
    threshold_method: str
    record: dict = field(repr=False, default_factory=dict)

    def positive_probability(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=1)[:, self.positive_index]

    @property
    def meta(self) -> dict:
        """The bundle metadata the prediction engine reads from an export: a multi-label
        model's findings and thresholds (``extra.multilabel``), so predict writes the same
        ``probability_<F>`` columns as from the bundle."""
        multilabel = self.record.get("multilabel")
        return {"extra": {"multilabel": multilabel}} if multilabel else {}

    @property
    def precision(self) -> str:
        """``int8`` when the loaded file is the export's int8 model, else ``fp32``."""
        files = self.record.get("files", {})
        int8 = {files.get(role, {}).get("path") for role in ("model_int8", "onnx_int8")} - {None}
        return "int8" if Path(self.path).name in int8 else "fp32"


def _pick_file(folder: Path, record: dict, backend: str) -> Path:
    """The model file of an export folder for ``backend`` (int8 first, then fp32)."""
    files = record.get("files", {})
    wanted = BACKEND_REGISTRY[backend].suffixes
    for role in ("model_int8", "model", "torchscript", "onnx_int8", "onnx"):
        rel = files.get(role, {}).get("path")
        if rel and Path(rel).suffix in wanted:
            return folder / rel
    raise UsageError(
        f"{folder} holds a {record.get('export_format')} export; --backend {backend} needs "
        f"a {' or '.join(wanted)} model (export one with `cxr-cad export --format "
        f"{BACKEND_REGISTRY[backend].export_format}`)"
    )


def load_exported(
    path: str | os.PathLike, backend: str, *, threads: int | None = None, precision: str = "f32"
) -> ExportedModel:
    """Load an exported model (a folder from ``cxr-cad export`` or a model file inside one).

    Raises ConfigError (unknown backend), UsageError (a file the backend cannot read), BundleError
    (missing or unreadable ``export.json``), MissingExtraError (runtime not installed).
    """
    if backend not in BACKEND_REGISTRY:
        raise ConfigError(f"backend must be one of {BACKENDS}, not {backend!r}")
    path = Path(path)
    if not path.exists():
        raise BundleError(f"exported model {path} does not exist; write one with `cxr-cad export`")
    folder = (
        path
        if path.is_dir()
        else next((p for p in (path.parent, path.parent.parent) if (p / EXPORT_FILE).is_file()), path.parent)
    )  # models/model.ts
    record = read_export_record(folder)
    file = _pick_file(folder, record, backend) if path.is_dir() else path
    spec = BACKEND_REGISTRY[backend]
    if file.suffix not in spec.suffixes:
        raise UsageError(
            f"--backend {backend} cannot read {file.name}; give a {' or '.join(spec.suffixes)} "
            f"file or the folder written by `cxr-cad export` (with {EXPORT_FILE})"
        )
    model = spec.load(file, threads, precision)
    weights = file.with_suffix(".bin") if file.suffix == ".xml" else file
    sel = record.get("threshold_selection") or {}
    log.info(
        "%s model %s (export of bundle sha256 %s)",
        backend,
        file,
        record.get("source_bundle", {}).get("sha256", "?")[:12],
    )
    return ExportedModel(
        model=model,
        backend=backend,
        path=str(file),
        sha256=sha256_file(weights),
        classes=list(record["classes"]),
        positive_class=record["positive_class"],
        positive_index=int(record["positive_index"]),
        transform_spec=TransformSpec.from_dict(record["transform_spec"]),
        threshold=float(record["threshold"]),
        threshold_method=str(sel.get("method", "")),
        record=record,
    )


__all__ = [
    "BACKENDS",
    "BACKEND_REGISTRY",
    "Backend",
    "ExportedModel",
    "OnnxRuntimeModel",
    "OpenVinoModel",
    "TorchScriptModel",
    "load_exported",
    "INPUT_NAME",
]

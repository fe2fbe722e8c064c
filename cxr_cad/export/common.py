"""What every export format shares: optional imports, the export record, a preprocessed cohort.

The export record (``export.json`` in every exported folder) carries the source bundle's
metadata so that an exported model can be used without the bundle: classes, positive
class, threshold (and how it was chosen), the transform spec, and the SHA-256 of the source
bundle and of every file written.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cxr_cad.core.atomic import atomic_write_text
from cxr_cad.core.provenance import sha256_file, software_versions
from cxr_cad.errors import BundleError, MissingExtraError, OutputError, UsageError
from cxr_cad.export.names import EXPORT_FILE
from cxr_cad.manifest import read_manifest
from cxr_cad.transforms import build_eval_transforms, find_rejection

if TYPE_CHECKING:
    from cxr_cad.config.transforms import TransformSpec
    from cxr_cad.model.bundle import Bundle

__all__ = [
    "EXPORT_FILE",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "Cohort",
    "MissingExtraError",
    "batched",
    "bundle_record",
    "cohort_from_manifest",
    "load_cohort",
    "prepare_out",
    "read_export_record",
    "require",
    "softmax_positive",
    "write_export_record",
]

log = logging.getLogger(__name__)


EXPORT_FORMAT = "cxr_cad.export"
EXPORT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: Distributions recorded in export.json (what wrote and what can read the exported files).
EXPORT_PACKAGES = ("torch", "monai", "numpy", "onnx", "onnxruntime", "onnxscript", "openvino")


#: Runtimes that are core dependencies (pyproject.toml; predict --backend auto needs them): a
#: missing one means a broken or hand-trimmed install, so the fix is reinstalling, not an extra.
CORE_RUNTIMES = frozenset({"onnx", "onnxscript", "onnxruntime", "openvino"})


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise :class:`MissingExtraError` naming the install command that
    brings it (``pip install 'cxr_cad[extra]'``, or a reinstall for a core runtime)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if module.split(".")[0] in CORE_RUNTIMES:
            fix = "reinstall cxr_cad with its dependencies (`pip install -c constraints/cpu.txt -e .`)"
        else:
            fix = (
                f"install the optional extra with `pip install -c constraints/cpu.txt -e '.[{extra}]'` "
                f"(or `pip install 'cxr_cad[{extra}]'`)"
            )
        raise MissingExtraError(f"{module} is not installed; {fix}") from exc


def bundle_record(bundle: Bundle) -> dict:
    """The source bundle's metadata an exported model needs (plain types); a multi-label bundle's
    ``extra.multilabel`` (findings in output order, their thresholds) travels as ``multilabel``."""
    multilabel = (bundle.meta.get("extra") or {}).get("multilabel")
    return {
        **({"multilabel": multilabel} if multilabel else {}),
        "classes": list(bundle.classes),
        "positive_class": bundle.positive_class,
        "positive_index": int(bundle.positive_index),
        "threshold": float(bundle.threshold),
        "threshold_selection": bundle.threshold_selection,
        "transform_spec": bundle.transform_spec.to_dict(),
        "manifest_hash": bundle.manifest_hash,
        "source_bundle": {
            "file": Path(bundle.path).name,
            "sha256": bundle.sha256,
            "created": bundle.created,
            "arch": bundle.meta.get("arch"),
        },
    }


def write_export_record(out: Path, bundle: Bundle, fmt: str, files: dict[str, str], **extra: Any) -> Path:
    """Write ``out/export.json``: bundle metadata, format, files with their SHA-256, versions."""
    record = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "export_format": fmt,
        **bundle_record(bundle),
        "input": {
            "name": INPUT_NAME,
            "shape": [
                "batch",
                bundle.transform_spec.in_channels,
                bundle.transform_spec.image_size,
                bundle.transform_spec.image_size,
            ],
            "dtype": "float32",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(bundle.classes)],
            "dtype": "float32",
            "meaning": "logits; a sigmoid per finding gives the probabilities"
            if (bundle.meta.get("extra") or {}).get("multilabel")
            else "logits; softmax over classes gives the probabilities",
        },
        "files": {role: {"path": rel, "sha256": sha256_file(out / rel)} for role, rel in files.items()},
        "versions": software_versions(EXPORT_PACKAGES),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    path = out / EXPORT_FILE
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=float) + "\n")
    return path


def read_export_record(folder: str | os.PathLike) -> dict:
    """Read and check ``export.json`` of an exported folder (BundleError says what is wrong)."""
    path = Path(folder) / EXPORT_FILE
    if not path.is_file():
        raise BundleError(
            f"{folder} is not an exported cxr_cad model: {EXPORT_FILE} is missing; write one with `cxr-cad export`"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} cannot be read: {exc}") from exc
    if record.get("format") != EXPORT_FORMAT:
        raise BundleError(f"{path} is not a cxr_cad export record")
    if int(record.get("format_version", 0)) > EXPORT_VERSION:
        raise BundleError(
            f"{path}: export format version {record.get('format_version')} is newer than this "
            f"cxr_cad supports ({EXPORT_VERSION}); upgrade cxr_cad"
        )
    return record


def prepare_out(out: str | os.PathLike, *, overwrite: bool) -> Path:
    """Create ``out``; refuse a non-empty folder unless ``overwrite`` (UsageError)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} is not empty; give a new folder or --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror or exc}") from exc
    return out


@dataclass
class Cohort:
    """Preprocessed images of a labelled manifest through the bundle's own eval chain."""

    images: torch.Tensor  # (N, C, S, S) float32
    labels: np.ndarray  # (N,) 1 = positive class, 0 = other, -1 = unlabelled
    groups: np.ndarray  # (N,) patient ids (for grouped splits)
    paths: list[str]
    rejected: list[tuple[str, str]]  # (path, reason) of rows that could not be read


def load_cohort(
    paths: list[str],
    spec: TransformSpec,
    *,
    labels: list[str] | None = None,
    positive: str | None = None,
    groups: list[str] | None = None,
) -> Cohort:
    """Run ``cxr_cad.transforms.build_eval_transforms(spec)`` over ``paths`` (no copy of the chain).

    A file that cannot be read is listed in ``rejected`` with its reason, never dropped silently.
    """
    chain = build_eval_transforms(spec)
    images, keep, rejected = [], [], []
    for i, p in enumerate(paths):
        try:
            images.append(chain({"image": p})["image"])
            keep.append(i)
        except Exception as exc:  # MONAI wraps reader errors; find_rejection digs out the reason
            rej = find_rejection(exc)
            if rej is None:
                raise
            rejected.append((str(p), rej.reason.value))
    y = np.array(
        [(1 if labels[i] == positive else 0) if labels is not None and labels[i] != "" else -1 for i in keep], dtype=int
    )
    g = np.array([groups[i] if groups is not None else str(i) for i in keep], dtype=object)
    x = torch.stack([torch.as_tensor(t) for t in images]) if images else torch.empty(0)
    return Cohort(images=x.float(), labels=y, groups=g, paths=[str(paths[i]) for i in keep], rejected=rejected)


def cohort_from_manifest(manifest: str | os.PathLike[str], spec: TransformSpec, positive: str) -> Cohort:
    """:func:`load_cohort` over a labelled manifest (``read_manifest`` checks it)."""
    df = read_manifest(manifest, require_labels=True)
    return load_cohort(
        df["path"].astype(str).tolist(),
        spec,
        labels=df["label"].astype(str).tolist(),
        positive=positive,
        groups=df["patient_id"].astype(str).tolist(),
    )


def softmax_positive(logits: np.ndarray | torch.Tensor, positive_index: int) -> np.ndarray:
    """Positive-class softmax probability of ``(N, K)`` logits, float64 numpy."""
    t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return torch.softmax(t, dim=1)[:, positive_index].numpy()


def batched(fn, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Apply a logits function to ``images`` in batches; returns ``(N, K)`` float32 numpy."""
    outs = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out = fn(images[i : i + batch_size])
            outs.append(out.float().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float32))
    return np.concatenate(outs) if outs else np.empty((0, 0), dtype=np.float32)

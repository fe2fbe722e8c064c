"""``predict --backend auto``: the fastest backend whose probabilities equal torch fp32, chosen once
per machine and bundle, and cached.

Candidates (each only where it can run):

* CPU: ``torch fp32`` (the reference), ``torch bf16`` (CPUs with native bf16: AMX or AVX512-BF16),
  ``onnxruntime fp32``, ``openvino fp32``, ``openvino bf16`` (its bf16 inference hint, AMX CPUs);
  with ``allow_int8`` and a verified int8 variant beside the bundle (:mod:`cxr_cad.export.variant`)
  also ``onnxruntime int8`` and ``openvino int8``.
* CUDA: ``torch fp32`` and ``torch`` AMP (bf16, or fp16 where the GPU has no bf16).

The exported candidates run the network up to its classifier (ONNX of
:func:`cxr_cad.export.variant.split_head`'s backbone) and the bundle's own fp32 classifier in torch,
so the shift score is computed exactly as with torch. Ensemble / TTA bundles have only torch
candidates.

How the choice is made: the first :data:`CHECK_IMAGES` readable inputs of the run are the check
batch. Every candidate is loaded, run on it and timed (best of :data:`TIMING_REPEATS`); a candidate
whose positive-class probabilities differ from torch fp32 by more than :data:`TOLERANCE` (int8: the
larger of that and the variant's own recorded maximum change on the validation split) or that fails
to load is dropped with its reason; the fastest remaining one wins (torch fp32 always remains).

The cache (:func:`cache_root`: ``$CXR_CAD_BACKEND_CACHE``, else ``$XDG_CACHE_HOME/cxr_cad/backends``
or ``~/.cache/cxr_cad/backends``) has one folder per key: bundle SHA-256, device, torch thread
count, the versions of torch / onnxruntime / openvino / cxr_cad, and the CPU's model name and
flags. It holds ``backbone.onnx`` (the exported network), OpenVINO's compiled-model cache and
``choice.json`` (``choice-int8.json`` with ``allow_int8``): what was chosen, why, and every
candidate's speed and difference. Every file is written atomically (temporary name, then
``os.replace``). A cached choice is used at once; if it then fails to load the run falls back to
torch fp32 with a one-line warning and the stale choice is removed.

Runs that do not choose (no choice cached yet): fewer than :data:`AUTO_MIN_IMAGES` inputs to do
(choosing costs tens of seconds), torchrun ranks, ``torch.compile``: torch fp32, with the reason.

The candidates are listed, verified and timed in :mod:`cxr_cad.inference.backend_candidates`; the
cache's location and key are in :mod:`cxr_cad.inference.backend_cache`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from cxr_cad import runtime
from cxr_cad.core.atomic import atomic_write_json
from cxr_cad.errors import CxrCadError
from cxr_cad.inference.backend_cache import CACHE_ENV, cache_folder, cache_key, cache_root
from cxr_cad.inference.backend_candidates import TOLERANCE, Context, list_candidates, measure

log = logging.getLogger(__name__)

__all__ = [
    "AUTO_MIN_IMAGES",
    "CACHE_ENV",
    "CHECK_IMAGES",
    "TOLERANCE",
    "Choice",
    "Chosen",
    "cache_folder",
    "cache_root",
    "choose_backend",
]

#: A run with fewer inputs to do (and no cached choice) does not choose: torch fp32.
AUTO_MIN_IMAGES = 256
CHECK_IMAGES = 16
CHOICE_FORMAT = 1


@dataclass
class Choice:
    """What ``--backend auto`` chose (recorded in ``summary.json`` under ``runtime.backend_choice``)."""

    backend: str  # torch | onnxruntime | openvino
    precision: str  # fp32 | bf16 | fp16 | int8
    reason: str
    cached: bool = False
    cache: str = ""
    candidates: list[dict] = field(default_factory=list)
    int8_variant: dict | None = None  # the verification of the int8 variant in use

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "name": self.name}


@dataclass
class Chosen:
    """The chosen backend, ready to run: ``forward`` under ``info`` (autocast, memory format);
    ``tap_model``: the torch module whose classifier the forward calls (for the shift score)."""

    choice: Choice
    forward: Callable[[torch.Tensor], torch.Tensor]
    info: runtime.RuntimeInfo
    tap_model: torch.nn.Module


def _fallback(ctx: Context, reason: str, folder: Path, **extra: Any) -> Chosen:
    m = ctx.fp32()
    return Chosen(Choice("torch", "fp32", reason, cache=str(folder), **extra), m, ctx.info, m)


def choose_backend(
    bundle: Any,
    info: runtime.RuntimeInfo,
    check_images: Callable[[], torch.Tensor | None],
    *,
    allow_int8: bool = False,
    n_todo: int = 0,
) -> Chosen:
    """The backend ``--backend auto`` runs (cached per machine and bundle; see the module docstring).

    ``check_images()`` returns the check batch ``(N, C, S, S)`` (None: no readable input). Never
    raises for a candidate that fails: it falls back to torch fp32 with the reason.
    """
    folder = cache_folder(bundle.sha256, info)
    ctx = Context(bundle, info, folder)
    choice_file = folder / ("choice-int8.json" if allow_int8 else "choice.json")
    candidates, ver, note = list_candidates(ctx, allow_int8)
    by_name = {c.name: c for c in candidates}
    if choice_file.is_file():
        cached = _cached(ctx, choice_file, by_name, ver, folder)
        if cached is not None:
            return cached
    if info.distributed:
        return _fallback(ctx, "torchrun rank: no choice is made across processes (torch fp32)", folder)
    if n_todo < AUTO_MIN_IMAGES:
        return _fallback(
            ctx,
            f"{n_todo} image(s) to score: fewer than {AUTO_MIN_IMAGES}, not worth choosing (torch fp32); "
            "a larger run chooses and caches the fastest exact backend",
            folder,
        )
    images = check_images()
    if images is None or not len(images):
        return _fallback(ctx, "no readable input for the check batch (torch fp32)", folder)
    table, built = measure(ctx, candidates, images)
    ok = [r for r in table if r.get("verified")]
    best = max(ok, key=lambda r: r["images_per_s"])
    ref = table[0]
    backend, precision = best["name"].split()
    reason = (
        f"fastest of {len(ok)} verified candidate(s) on {len(images)} check image(s): {best['images_per_s']:.1f} "
        f"images/s against torch fp32 {ref['images_per_s']:.1f}, max probability difference "
        f"{best['max_abs_prob_diff']:.2g} (tolerance {best['tolerance']:g})"
    )
    if allow_int8 and "int8" not in best["name"] and note and ver is None:
        reason += f"; int8 not used: {note}"
    choice = Choice(backend, precision, reason, False, str(folder), table, ver if precision == "int8" else None)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        choice_file,
        {
            "format": CHOICE_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "key": cache_key(bundle.sha256, info),
            **choice.to_dict(),
        },
    )
    log.info("backend auto: %s (%s)", choice.name, reason)
    fwd, run_info, tap = built[best["name"]]
    return Chosen(choice, fwd, run_info, tap)


def _cached(ctx: Context, choice_file: Path, by_name: dict, ver: dict | None, folder: Path) -> Chosen | None:
    """The cached choice, loaded; a torch fp32 fallback when it no longer loads; None if unusable."""
    try:
        rec = json.loads(choice_file.read_text(encoding="utf-8"))
        name = str(rec["name"])
    except (OSError, ValueError, KeyError):
        choice_file.unlink(missing_ok=True)
        return None
    cand = by_name.get(name)
    if cand is None:  # e.g. the int8 variant was removed since
        choice_file.unlink(missing_ok=True)
        return None
    try:
        fwd, info, tap = cand.build()
    except (CxrCadError, RuntimeError, OSError, ValueError, ImportError) as exc:
        choice_file.unlink(missing_ok=True)
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        log.warning("backend auto: the cached choice %s failed to load (%s); torch fp32 instead", name, first)
        return _fallback(ctx, f"cached choice {name} failed to load ({first}): torch fp32", folder)
    backend, precision = name.split()
    choice = Choice(
        backend,
        precision,
        f"cached choice ({rec.get('created', '?')}): {rec.get('reason', '')}",
        True,
        str(folder),
        list(rec.get("candidates") or []),
        ver if precision == "int8" else None,
    )
    log.info("backend auto: %s (cached in %s)", name, folder)
    return Chosen(choice, fwd, info, tap)


def scoring_record(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What scored a prediction run (its ``summary.json``), for the report: ``{"runtime": "cpu
    openvino int8", "backend", "precision", "int8", "int8_variant", "reason"}``; None without one."""
    try:
        rt = json.loads((Path(out_dir) / "summary.json").read_text(encoding="utf-8"))["runtime"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    choice = rt.get("backend_choice") or {}
    return {
        "runtime": f"{rt.get('device', '?')} {rt.get('backend', 'torch')} {rt.get('precision', '?')}",
        "backend": rt.get("backend", "torch"),
        "precision": rt.get("precision"),
        "int8": rt.get("precision") == "int8",
        "int8_variant": choice.get("int8_variant"),
        "reason": choice.get("reason", ""),
    }

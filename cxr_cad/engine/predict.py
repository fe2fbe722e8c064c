"""Streaming batch inference over DICOM/PNG/JPEG folders and manifests: fast, resumable, sharded.

:func:`predict` scores every input file with a model bundle and writes ``predictions.csv``
(one row per scored image) and ``rejected.csv`` (one row per file that was not scored, with
a :class:`~cxr_cad.errors.Reason` code) into an output folder; every input file ends up in
exactly one of the two.

How it is fast
    Decoding and preprocessing run in DataLoader worker processes, overlapped with
    inference on batches; the decoder is told the model's input size (``reduce_to``) so
    JPEG 2000 decodes at a reduced resolution; BatchNorm is folded into the convolutions;
    the model runs with bf16 autocast and channels-last on CPUs with native bf16 units,
    AMP on CUDA, fp32 elsewhere (:mod:`cxr_cad.engine.runtime`), the first convolution
    kept in fp32 (:func:`prepare_for_inference`); optionally ``torch.compile``.
How it survives crashes
    Each finished batch is appended to a journal with fsync (:mod:`cxr_cad.engine.writer`);
    a rerun with the same output folder skips what is done; the final CSVs are written
    atomically at the end. A rerun checks it is the same model, inputs and settings.
How it scales out
    Under ``torchrun`` each rank takes every ``world_size``-th batch of the sorted inputs
    still to do (:func:`cxr_cad.engine.shards.batch_shard`); rank 0 merges after a barrier.
A file that cannot be read becomes a ``rejected`` record inside the worker (never an
exception that stops the run); an unexpected exception becomes an ``INTERNAL_ERROR`` row
with its message. A bad model bundle or an unwritable output folder stops the run at once.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cxr_cad.engine import runtime
from cxr_cad.engine.shards import PredictDataset, batch_shard, collate_records, collect_inputs, inputs_fingerprint
from cxr_cad.engine.writer import (
    PREDICTIONS,
    REJECTED,
    SUMMARY,
    Journal,
    atomic_write_text,
    check_writable,
    merge_outputs,
    prepare_out_dir,
    read_journals,
)
from cxr_cad.errors import CxrCadError, OutputError, UsageError
from cxr_cad.progress import progress

log = logging.getLogger(__name__)

#: Test hook: seconds to sleep after each journaled batch (lets tests kill a run mid-way).
DELAY_ENV = "CXR_CAD_PREDICT_BATCH_DELAY_S"
STATE_FORMAT = 1


@dataclass(frozen=True)
class PredictOptions:
    """Settings of a prediction run.

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
            ``precision`` ignored; see :mod:`cxr_cad.export.runtime`).
    """

    batch_size: int = 32
    workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    threshold: float | None = None
    policy: Any = None
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
    shift: dict | None = None  # cohort shift result (cxr_cad.model.shift.cohort_shift); None: no summary

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


def _decision_names(bundle: Any) -> tuple[str, str]:
    positive = str(bundle.positive_class)
    others = [str(c) for c in bundle.classes if str(c) != positive]
    return positive, (others[0] if len(others) == 1 else f"not {positive}")


def _default_workers() -> int:
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _prepare_everywhere(info: runtime.RuntimeInfo, out: Path, state: dict, overwrite: bool) -> None:
    """Rank 0 prepares ``out``; its error, if any, is raised on every rank (same class)."""
    error: tuple[str, str] | None = None
    if info.is_main:
        try:
            prepare_out_dir(out, state, overwrite=overwrite)
        except CxrCadError as exc:
            if not info.distributed:
                raise
            error = ("usage" if isinstance(exc, UsageError) else "output", str(exc))
    if info.distributed:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise (UsageError if error[0] == "usage" else OutputError)(error[1])


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (eval mode) with each BatchNorm2d folded into the Conv2d before it.

    Pairs are siblings ``convN``/``bnN`` (ResNet blocks and stem) and consecutive
    ``Conv2d, BatchNorm2d`` in a ``Sequential`` (downsample paths). Same function in fp32
    (checked on a random input; the unfolded model is returned if the check fails), fewer
    operations, and one bf16 rounding fewer per layer under autocast.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    pairs = []
    for parent in folded.modules():
        children = dict(parent.named_children())
        names = list(children)
        for a, b in zip(names, names[1:]):
            if (
                isinstance(parent, torch.nn.Sequential)
                and isinstance(children[a], torch.nn.Conv2d)
                and isinstance(children[b], torch.nn.BatchNorm2d)
            ):
                pairs.append((parent, a, b))
        for name, child in children.items():
            bn = "bn" + name[4:]
            if (
                name.startswith("conv")
                and isinstance(child, torch.nn.Conv2d)
                and isinstance(children.get(bn), torch.nn.BatchNorm2d)
            ):
                pairs.append((parent, name, bn))
    first = next((m for m in folded.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if not pairs or first is None:
        return model
    for parent, conv, bn in pairs:
        setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn)))
        setattr(parent, bn, torch.nn.Identity())
    x = torch.randn(2, first.in_channels, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = model.eval()(x), folded(x)
    if not torch.allclose(want, got, rtol=1e-3, atol=1e-4 * float(want.abs().max()) + 1e-6):
        log.info("BatchNorm folding changed the outputs; using the model as it is")
        return model
    return folded


class Fp32Module(torch.nn.Module):
    """Runs the wrapped module in fp32 even inside an autocast region.

    Used for the first convolution under bf16: the input image keeps its fp32 precision
    (bf16 would round it to about 1/500 of its range before the first layer, the largest
    single source of bf16-vs-fp32 difference in ResNet18), at the cost of one small layer.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.module(x.float())


def prepare_for_inference(model: torch.nn.Module, info: runtime.RuntimeInfo) -> torch.nn.Module:
    """Fold BatchNorm, keep the first convolution in fp32 under autocast, move to the device."""
    model = fold_batchnorm(model.eval())
    if info.autocast_dtype is not None:
        for net in getattr(model, "members", [model]):  # every network of an ensemble / TTA bundle
            for parent in net.modules():
                name, child = next(iter(parent.named_children()), (None, None))
                if isinstance(child, torch.nn.Conv2d):  # the first conv of the network
                    setattr(parent, name, Fp32Module(child))
                    break
    return runtime.prepare_model(model, info)


def _load_model(model_path: str | os.PathLike, info: runtime.RuntimeInfo, use_compile: bool, backend: str = "torch"):
    from cxr_cad.model import load_bundle
    from cxr_cad.model.shift import ShiftScorer

    if backend != "torch":  # an exported model replaces the torch forward; everything else is the same path
        from cxr_cad.export import load_exported

        exported = load_exported(model_path, backend)
        return exported, exported.model, ShiftScorer(exported, exported.model)  # no features: empty shift columns
    bundle = load_bundle(model_path, map_location="cpu")
    model = prepare_for_inference(bundle.model, info)
    shift = ShiftScorer(bundle, model)  # hooks the head; before torch.compile
    if use_compile:
        model = torch.compile(model)
    return bundle, model, shift


def _run_batches(
    model,
    loader,
    info,
    *,
    positive_index: int,
    threshold: float,
    names: tuple[str, str],
    sha256: str,
    labels: dict[int, str],
    paths: Sequence[str],
    journal: Journal,
    total: int,
    shift: Any = None,
) -> int:
    """Score every batch of ``loader`` and journal it. Returns the number of inputs handled."""
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    n = 0
    with torch.inference_mode(), progress(total=total, desc="predict", unit="img") as bar:
        for batch in loader:
            records = []
            if batch["images"] is not None:
                x = runtime.to_device(batch["images"], info)
                with runtime.autocast(info):
                    logits = model(x)
                probs = torch.softmax(logits.float(), dim=1)[:, positive_index].cpu().tolist()
                shift_cols = shift.columns(len(probs)) if shift is not None else [{}] * len(probs)
                for rec, p, cols in zip(batch["accepted"], probs, shift_cols):
                    i = rec["index"]
                    records.append(
                        {
                            "index": i,
                            "kind": "prediction",
                            "path": paths[i],
                            "sop_instance_uid": rec["sop_instance_uid"],
                            "study_instance_uid": rec["study_instance_uid"],
                            "probability": f"{p:.6f}",
                            "decision": names[0] if p >= threshold else names[1],
                            "threshold": f"{threshold:g}",
                            "model_sha256": sha256,
                            "label": labels.get(i, ""),
                            **cols,
                        }
                    )
            for rec in batch["rejected"]:
                i = rec["index"]
                records.append(
                    {"index": i, "kind": "rejected", "path": paths[i], "reason": rec["reason"], "detail": rec["detail"]}
                )
            journal.append(records)
            n += len(records)
            bar.update(len(records))
            if delay:
                time.sleep(delay)
    return n


def predict(
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model_path: str | os.PathLike,
    options: PredictOptions = PredictOptions(),
) -> PredictResult:
    """Score every input file of ``sources`` with the bundle at ``model_path`` into ``out_dir``.

    ``sources``: folders (recursive), manifests (``.csv``; their ``label`` column is copied
    to the output) and single files. Resumes an interrupted run in ``out_dir``.

    Raises:
        BundleError: the bundle is missing, corrupt or cannot be honoured (CLI exit 1).
        OutputError: ``out_dir`` cannot be written (CLI exit 1).
        UsageError: bad options, missing sources, or ``out_dir`` holds a different run
            (use a new folder or ``overwrite``) (CLI exit 2).
    """
    from cxr_cad.io import AcceptPolicy

    t0 = time.perf_counter()
    out = Path(out_dir).absolute()
    if options.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, not {options.batch_size}")
    if options.threshold is not None and not 0.0 <= options.threshold <= 1.0:
        raise UsageError(f"--threshold must be within [0, 1], not {options.threshold}")
    if options.precision == "fp16":
        raise UsageError("--precision fp16 is not offered for predict; use auto, fp32 or bf16")
    try:
        info = runtime.resolve_runtime(options.device, options.precision if options.backend == "torch" else "fp32")
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    check_writable(out)  # fail at once, before loading the model and listing the inputs
    created = runtime.init_distributed(info)
    try:
        bundle, model, shift = _load_model(model_path, info, options.compile, options.backend)
        spec = bundle.transform_spec
        policy = dataclasses.replace(options.policy or AcceptPolicy(), apply_voi=spec.apply_voi)
        threshold = float(bundle.threshold if options.threshold is None else options.threshold)
        inputs, has_labels = collect_inputs(sources, exclude=[out])
        state = {
            "format": STATE_FORMAT,
            "model_sha256": bundle.sha256,
            "n_inputs": len(inputs),
            "inputs_fingerprint": inputs_fingerprint(inputs),
            "threshold": threshold,
            "policy": dataclasses.asdict(policy),
        }
        _prepare_everywhere(info, out, state, options.overwrite)
        done = read_journals(out)
        runtime.barrier(info)  # every rank has read the journals before any rank appends
        remaining = [x.index for x in inputs if x.index not in done]
        batches = batch_shard(remaining, options.batch_size, info.rank, info.world_size)
        if info.is_main:
            log.info(
                "%d input(s), %d done earlier, %d to do on %d process(es); %s %s",
                len(inputs),
                len(done),
                len(remaining),
                info.world_size,
                info.device,
                info.precision,
            )
        workers = _default_workers() if options.workers is None else options.workers
        n_local = sum(len(b) for b in batches)
        workers = min(workers, len(batches))
        loader = torch.utils.data.DataLoader(
            PredictDataset(inputs, policy, spec),
            batch_sampler=batches,
            collate_fn=collate_records,
            num_workers=workers,
            pin_memory=info.device.startswith("cuda"),
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )
        labels = {x.index: x.label for x in inputs if x.label}
        paths = [x.path for x in inputs]
        with Journal(out, info.rank) as journal:
            n_processed = _run_batches(
                model,
                loader,
                info,
                positive_index=bundle.positive_index,
                threshold=threshold,
                names=_decision_names(bundle),
                sha256=bundle.sha256,
                labels=labels,
                paths=paths,
                journal=journal,
                total=n_local,
                shift=shift,
            )
        shift.close()
        runtime.barrier(info)
        seconds = time.perf_counter() - t0
        result = PredictResult(
            out_dir=out,
            n_inputs=len(inputs),
            n_predicted=0,
            n_rejected=0,
            n_positive=0,
            reasons={},
            n_done_before=len(done),
            n_processed=n_processed,
            seconds=seconds,
            model_sha256=bundle.sha256,
            threshold=threshold,
            runtime={**info.to_dict(), "backend": options.backend},
        )
        if info.is_main:
            _finish(result, out, has_labels, _decision_names(bundle)[0], shift.summary)
        runtime.barrier(info)
        return result
    finally:
        if created:
            runtime.cleanup_distributed()


def _finish(
    result: PredictResult, out: Path, has_labels: bool, positive: str, shift_summary: dict | None = None
) -> None:
    """Merge the journals into the final CSVs and write ``summary.json`` (rank 0)."""
    records = merge_outputs(out, result.n_inputs, with_label=has_labels)
    reasons = collections.Counter(r["reason"] for r in records if r["kind"] == "rejected")
    result.reasons = dict(sorted(reasons.items()))
    result.n_rejected = sum(reasons.values())
    result.n_predicted = result.n_inputs - result.n_rejected
    result.n_positive = sum(1 for r in records if r["kind"] == "prediction" and r["decision"] == positive)
    from cxr_cad.model.shift import SHIFT_FILE, cohort_shift

    (out / SHIFT_FILE).unlink(missing_ok=True)  # of an earlier run in this folder
    if shift_summary is not None:  # docs/shift.md
        result.shift = cohort_shift(
            [r.get("shift_score", "") for r in records if r["kind"] == "prediction"], shift_summary
        )
        atomic_write_text(out / SHIFT_FILE, json.dumps(result.shift, indent=2, sort_keys=True))
        if result.shift["flagged"]:
            log.warning("dataset shift: %s", result.shift["message"])
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "out_dir"}
    summary["images_per_s"] = round(result.images_per_s, 3)
    summary["predictions_csv"] = PREDICTIONS
    summary["rejected_csv"] = REJECTED
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2, sort_keys=True))

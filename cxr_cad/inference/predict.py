"""Streaming batch inference over DICOM/PNG/JPEG folders and manifests: fast, resumable, sharded.

:func:`predict` scores every input file with a model bundle and writes ``predictions.csv``
(one row per scored image) and ``rejected.csv`` (one row per file that was not scored, with
a :class:`~cxr_cad.errors.Reason` code) into an output folder; every input file ends up in
exactly one of the two.

How it is fast
    Decoding and preprocessing run in DataLoader worker processes, overlapped with
    inference on batches; every file is decoded at full resolution (issue 10); BatchNorm is
    folded into the convolutions (every registered network, :func:`cxr_cad.model.fold_batchnorm`);
    ``backend="auto"`` (the default) runs the fastest backend whose probabilities equal torch
    fp32 within 1e-3 (torch fp32/bf16, onnxruntime, OpenVINO, CUDA AMP; the verified int8
    variant with ``allow_int8``), chosen once per machine and bundle and cached
    (:mod:`cxr_cad.inference.backend`, :mod:`cxr_cad.inference.choose`); ``backend="torch"``
    runs bf16 autocast and channels-last on CPUs with native bf16 units, AMP on CUDA, fp32
    elsewhere (:mod:`cxr_cad.runtime`), the first convolution kept in fp32
    (:func:`prepare_for_inference`); optionally ``torch.compile``.
How it survives crashes
    Each finished batch is appended to a journal with fsync (:mod:`cxr_cad.inference.outputs`);
    a rerun with the same output folder skips what is done; the final CSVs are written
    atomically at the end (:mod:`cxr_cad.inference.summary`). A rerun checks it is the same
    model, inputs and settings.
How it scales out
    Under ``torchrun`` each rank takes every ``world_size``-th batch of the sorted inputs
    still to do (:func:`cxr_cad.inference.inputs.batch_shard`); rank 0 merges after a barrier.
A file that cannot be read becomes a ``rejected`` record inside the worker (never an
exception that stops the run); an unexpected exception becomes an ``INTERNAL_ERROR`` row
with its message. A bad model bundle or an unwritable output folder stops the run at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cxr_cad import runtime
from cxr_cad.config import AcceptPolicy, PredictOptions
from cxr_cad.core.progress import progress
from cxr_cad.core.workers import default_workers
from cxr_cad.errors import CxrCadError, OutputError, UsageError
from cxr_cad.inference.choose import auto_model, load_bundle_for_auto, run_backend, run_runtime
from cxr_cad.inference.inputs import (
    Batch,
    PredictDataset,
    PredictInput,
    batch_shard,
    collate_records,
    collect_inputs,
    inputs_fingerprint,
)
from cxr_cad.inference.model import (
    Fp32Module,
    ScoringModel,
    load_model,
    model_calibration,
    prepare_for_inference,
)
from cxr_cad.inference.model import fold_batchnorm as fold_batchnorm
from cxr_cad.inference.outputs import (
    Journal,
    check_writable,
    multilabel_findings,
    prepare_out_dir,
    read_journals,
)
from cxr_cad.inference.result import PredictResult
from cxr_cad.inference.scoring import Scoring, small_ops_on_one_thread
from cxr_cad.inference.summary import finish_run
from cxr_cad.model import Bundle

if TYPE_CHECKING:
    from cxr_cad.transforms import TransformSpec

__all__ = ["Fp32Module", "PredictOptions", "PredictResult", "fold_batchnorm", "predict", "prepare_for_inference"]

log = logging.getLogger(__name__)

#: Test hook: seconds to sleep after each journaled batch (lets tests kill a run mid-way).
DELAY_ENV = "CXR_CAD_PREDICT_BATCH_DELAY_S"
STATE_FORMAT = 1


def _decision_names(bundle: ScoringModel) -> tuple[str, str]:
    positive = str(bundle.positive_class)
    others = [str(c) for c in bundle.classes if str(c) != positive]
    return positive, (others[0] if len(others) == 1 else f"not {positive}")


def _prepare_everywhere(info: runtime.RuntimeInfo, out: Path, state: dict[str, Any], overwrite: bool) -> None:
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


def _run_batches(
    scoring: Scoring, loader: Iterable[Batch], journal: Journal, total: int, own_threads: bool = False
) -> int:
    """Score every batch of ``loader`` and journal it. Returns the number of inputs handled.

    ``own_threads``: the forward runs in a runtime with its own thread pool (see
    :func:`small_ops_on_one_thread`)."""
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    n = 0
    bar: Any
    with (
        torch.inference_mode(),
        small_ops_on_one_thread(own_threads),
        progress(total=total, desc="predict", unit="img") as bar,
    ):
        for batch in loader:
            records = scoring.records(batch)
            journal.append(records)
            n += len(records)
            bar.update(len(records))
            if delay:
                time.sleep(delay)
    return n


@dataclass
class _Plan:
    """The inputs of a run, what an earlier run finished, and this rank's batches."""

    inputs: list[PredictInput]
    has_labels: bool
    n_done: int
    batches: list[list[int]]


def _plan(
    sources: Sequence[str | os.PathLike[str]],
    out: Path,
    bundle: ScoringModel,
    policy: AcceptPolicy,
    threshold: float,
    options: PredictOptions,
    info: runtime.RuntimeInfo,
) -> _Plan:
    """List the inputs, prepare (or resume) ``out`` and deal the remaining batches to the ranks."""
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
    return _Plan(inputs, has_labels, len(done), batches)


def _loader(plan: _Plan, policy: AcceptPolicy, spec: TransformSpec, options: PredictOptions, info: runtime.RuntimeInfo):
    """Decode workers over this rank's batches (``options.workers``; None = :func:`default_workers`)."""
    workers = default_workers() if options.workers is None else options.workers
    workers = min(workers, len(plan.batches))
    return torch.utils.data.DataLoader(
        PredictDataset(plan.inputs, policy, spec),
        batch_sampler=plan.batches,
        collate_fn=collate_records,
        num_workers=workers,
        pin_memory=info.device.startswith("cuda"),
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        worker_init_fn=_decode_below_network if info.device == "cpu" and workers else None,
    )


#: ``nice`` increment of the decode workers when the network also runs on the CPU.
DECODE_NICE = 5


def _decode_below_network(worker_id: int) -> None:
    """Decode workers yield the CPU to the network's threads in the main process: the network's
    parallel sections wait for their slowest thread, so a thread pre-empted by a decode worker
    stalls the whole batch. Measured on 2 cores, 600 224-px DICOMs, paired runs: OpenVINO int8
    190 -> 200 images/s, fp32 91 -> 94 (docs/benchmarks.md). Workers still get every cycle the
    network leaves idle. Not done where the OS has no ``nice`` or refuses it."""
    try:
        os.nice(DECODE_NICE)
    except (AttributeError, OSError):  # Windows has no os.nice; a sandbox may forbid it
        pass


def _score_all(
    scoring: Scoring,
    plan: _Plan,
    policy: AcceptPolicy,
    spec: TransformSpec,
    options: PredictOptions,
    out: Path,
    run_record: dict[str, Any],
) -> int:
    """Decode and score this rank's batches into its journal; the number of inputs handled."""
    info = scoring.info
    with Journal(out, info.rank) as journal:
        total = sum(len(b) for b in plan.batches)
        own_threads = info.device == "cpu" and run_record.get("backend") in ("openvino", "onnxruntime")
        return _run_batches(scoring, _loader(plan, policy, spec, options, info), journal, total, own_threads)


def _empty_result(
    out: Path,
    plan: _Plan,
    n_processed: int,
    seconds: float,
    bundle: ScoringModel,
    threshold: float,
    run_record: dict[str, Any],
) -> PredictResult:
    """The run's result before :func:`finish_run` counts the predictions and rejections."""
    return PredictResult(
        out_dir=out,
        n_inputs=len(plan.inputs),
        n_predicted=0,
        n_rejected=0,
        n_positive=0,
        reasons={},
        n_done_before=plan.n_done,
        n_processed=n_processed,
        seconds=seconds,
        model_sha256=bundle.sha256,
        threshold=threshold,
        runtime=run_record,
    )


def predict(
    sources: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    options: PredictOptions | None = None,
) -> PredictResult:
    """Score every input file of ``sources`` with the bundle at ``model_path`` into ``out_dir``.

    ``sources``: folders (recursive), manifests (``.csv``; their ``label`` column is copied
    to the output) and single files. Resumes an interrupted run in ``out_dir``.

    Raises:
        BundleError: the bundle is missing, corrupt or cannot be honoured (CLI exit 1).
        OutputError: ``out_dir`` cannot be written (CLI exit 1).
        ConfigError: bad options (CLI exit 2).
        UsageError: missing sources, or ``out_dir`` holds a different run (use a new folder
            or ``overwrite``) (CLI exit 2).
    """
    options = options or PredictOptions()
    t0 = time.perf_counter()
    out = Path(out_dir).absolute()
    backend = run_backend(options)
    info = run_runtime(options, backend)
    check_writable(out)  # fail at once, before loading the model and listing the inputs
    created = runtime.init_distributed(info)
    try:
        if backend == "auto":
            bundle: ScoringModel = load_bundle_for_auto(model_path)
        else:
            bundle, model, shift = load_model(model_path, info, options.compile, backend)
        calibration = model_calibration(bundle)
        spec = bundle.transform_spec
        policy = dataclasses.replace(options.policy or AcceptPolicy(), apply_voi=spec.apply_voi)
        threshold = float(bundle.threshold if options.threshold is None else options.threshold)
        plan = _plan(sources, out, bundle, policy, threshold, options, info)
        if backend == "auto":
            assert isinstance(bundle, Bundle)
            n_todo = sum(len(b) for b in plan.batches)
            model, info, shift, run_record = auto_model(bundle, info, plan.inputs, n_todo, policy, options)
        else:
            run_record = {
                **info.to_dict(),
                "backend": backend,
                "precision": getattr(bundle, "precision", info.precision),
            }
        scoring = Scoring(
            model,
            info,
            bundle.positive_index,
            threshold,
            _decision_names(bundle),
            bundle.sha256,
            labels={x.index: x.label for x in plan.inputs if x.label},
            paths=[x.path for x in plan.inputs],
            shift=shift,
            calibration=calibration,
            findings=multilabel_findings(getattr(bundle, "meta", None) or {}),
        )
        n_processed = _score_all(scoring, plan, policy, spec, options, out, run_record)
        shift.close()
        runtime.barrier(info)
        result = _empty_result(out, plan, n_processed, time.perf_counter() - t0, bundle, threshold, run_record)
        result.calibration = None if calibration is None else calibration.to_dict()
        if info.is_main:
            finish_run(result, out, plan.has_labels, scoring.names[0], shift.summary, scoring.findings)
        runtime.barrier(info)
        return result
    finally:
        if created:
            runtime.cleanup_distributed()

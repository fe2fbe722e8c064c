"""The training step, one training epoch, and the validation pass (gathered over ranks).

:func:`train_step` is the unit the throughput benchmark measures: autocast (bf16 on CPUs
with native bf16, AMP on CUDA), channels-last input, GradScaler only for fp16.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from cxr_cad.core.progress import progress
from cxr_cad.errors import UsageError
from cxr_cad.model import load_bundle
from cxr_cad.runtime import RuntimeInfo, autocast, prepare_model, resolve_runtime, to_device
from cxr_cad.training.data import shard_rows
from cxr_cad.training.mixup import Mixup
from cxr_cad.transforms import REJECTED_KEY, TransformSpec, collate_samples, make_dataset, rejected_error

if TYPE_CHECKING:
    from cxr_cad.model import Bundle

#: A collated batch: ``"image"`` (N, C, S, S), ``"label"`` (N,), ``"rejected"`` (records).
Batch = dict[Hashable, Any]

log = logging.getLogger(__name__)


def train_step(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    info: RuntimeInfo,
    scaler: torch.amp.GradScaler | None = None,
    mixup: Mixup | None = None,
) -> torch.Tensor:
    """One optimisation step on a batch already on the device; returns the (detached) loss.

    With ``mixup`` the batch is blended with a shuffled copy of itself and the loss is the same
    blend of the two labels' losses (:mod:`cxr_cad.training.mixup`)."""
    if mixup is not None:
        mixed = mixup(images, labels)
        with autocast(info):
            logits = model(mixed.images).float()
        loss = mixed.lam * criterion(logits, mixed.labels) + (1.0 - mixed.lam) * criterion(logits, mixed.labels_b)
    else:
        with autocast(info):
            logits = model(images)
        loss = criterion(logits.float(), labels)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _batches(loader: DataLoader, info: RuntimeInfo, desc: str, what: str) -> Iterator[tuple[Any, Batch]]:
    """Yield ``(bar, batch)``: a progress bar on rank 0 (None elsewhere) and each batch;
    a batch holding images that cannot be read raises :func:`rejected_error` naming them."""
    bar = progress(loader, total=len(loader), desc=desc, unit="batch", leave=False) if info.is_main else None
    try:
        for batch in bar if bar is not None else loader:
            if batch.get(REJECTED_KEY):
                raise rejected_error(batch[REJECTED_KEY], what)
            yield bar, batch
    finally:
        if bar is not None:
            bar.close()


@dataclass
class EpochStats:
    """Training-side numbers of one epoch (summed over ranks)."""

    loss: float  # mean training loss per image
    images: int  # images processed (all ranks)
    seconds: float  # wall time of the epoch's training pass

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def _all_reduce_sum(values: list[float], info: RuntimeInfo) -> list[float]:
    if not info.distributed:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=info.torch_device)
    dist.all_reduce(t)
    return t.tolist()


def train_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    info: RuntimeInfo,
    *,
    scaler: torch.amp.GradScaler | None = None,
    desc: str = "train",
    on_train_mode: Callable[[torch.nn.Module], None] | None = None,
    mixup: Mixup | None = None,
) -> EpochStats:
    """Run one epoch over ``loader`` (items with "image" and "label"); model in train mode.

    ``on_train_mode`` runs right after ``model.train()`` (e.g. to keep frozen BatchNorm
    layers in eval mode). ``mixup``: blend every batch (seeded for this epoch and rank).
    """
    model.train()
    if on_train_mode is not None:
        on_train_mode(model)
    t0 = time.perf_counter()
    loss_sum, n = 0.0, 0
    for bar, batch in _batches(loader, info, desc, "training"):
        images = to_device(batch["image"], info)
        labels = batch["label"].to(info.torch_device, non_blocking=True).long()
        loss = train_step(model, images, labels, criterion, optimizer, info, scaler, mixup)
        k = int(labels.shape[0])
        loss_sum += float(loss) * k
        n += k
        if bar is not None:
            bar.set_postfix(loss=f"{loss_sum / n:.4f}")
    loss_total, n_total = _all_reduce_sum([loss_sum, float(n)], info)
    return EpochStats(loss=loss_total / max(n_total, 1), images=int(n_total), seconds=time.perf_counter() - t0)


@dataclass
class EvalOutput:
    """Validation outputs, in dataset row order, over all ranks."""

    probabilities: np.ndarray  # (n, n_classes) softmax
    labels: np.ndarray  # (n,) class index
    loss: float  # mean unweighted cross-entropy

    def positive(self, positive_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(y_true 0/1, y_score) for the positive class."""
        return (self.labels == positive_index).astype(np.int64), self.probabilities[:, positive_index]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    info: RuntimeInfo,
    *,
    batch_size: int,
    workers: int = 0,
    desc: str = "validate",
    activation: str = "softmax",
) -> EvalOutput:
    """Softmax probabilities and loss for every item of ``dataset`` (deterministic chain).

    ``activation="sigmoid"`` (multi-label): one sigmoid probability per finding, labels ``(n, K)``
    with -1 = unknown, and the loss is the mean binary cross-entropy over known labels.

    Under DDP each rank scores rows ``rank::world_size`` of the plain module (never the
    DDP wrapper: shards may differ in size) and the results are gathered on every rank,
    so all ranks see every validation image exactly once.
    """
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    n_items = len(cast(Sized, dataset))  # every dataset cxr_cad builds has a length
    rows = shard_rows(n_items, info.rank, info.world_size)
    subset = Subset(dataset, rows.tolist()) if info.distributed else dataset
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_samples)
    probs, labels = [], []
    for _, batch in _batches(loader, info, desc, "validation" if desc == "validate" else "input"):
        images = to_device(batch["image"], info)
        with autocast(info):
            logits = model(images)
        if activation == "sigmoid":
            probs.append(torch.sigmoid(logits.float()).cpu())
        else:
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(
            batch["label"].long().cpu() if "label" in batch else torch.full((images.shape[0],), -1, dtype=torch.long)
        )
    if was_training:
        model.train()
    p = torch.cat(probs).numpy() if probs else np.zeros((0, 0), np.float32)
    y = torch.cat(labels).numpy() if labels else np.zeros(0, np.int64)
    if info.distributed:
        import torch.distributed as dist

        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, (rows, p, y))
        n_cls = max(g[1].shape[1] for g in gathered if g[1].size) if any(g[1].size for g in gathered) else 0
        p = np.zeros((n_items, n_cls), np.float32)
        y = np.zeros((n_items, *next((g[2].shape[1:] for g in gathered if len(g[0])), ())), np.int64)
        for r, pr, yr in gathered:
            if len(r):
                p[r], y[r] = pr, yr
    loss = float("nan")
    if activation == "sigmoid":
        known = y >= 0
        if known.any():
            pk = np.clip(p[known].astype(np.float64), 1e-7, 1 - 1e-7)
            loss = float(-np.mean(y[known] * np.log(pk) + (1 - y[known]) * np.log(1 - pk)))
    elif len(y) and (y >= 0).all():
        loss = float(F.nll_loss(torch.log(torch.from_numpy(p).clamp_min(1e-12)), torch.from_numpy(y)))
    return EvalOutput(probabilities=p, labels=y, loss=loss)


def predict_probabilities(
    model_or_bundle: torch.nn.Module | Bundle | str | Path,
    df: pd.DataFrame,
    *,
    spec: TransformSpec | Mapping[str, Any] | None = None,
    positive_index: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    precision: str = "auto",
    cache_dir: str | Path | None = None,
    all_classes: bool = False,
) -> np.ndarray:
    """Positive-class probabilities (or the full softmax with ``all_classes``) for ``df``'s rows.

    ``model_or_bundle``: a bundle path, a loaded ``cxr_cad.model.Bundle`` (its model, eval
    transform spec and positive class are used), or an ``nn.Module`` (then ``spec`` and, unless
    ``all_classes``, ``positive_index`` are required). ``df`` needs a ``path`` column of
    readable files (absolute or relative to the current folder). Single process; files that
    cannot be read raise a ManifestError naming them — use ``cxr-cad predict`` (or
    :func:`cxr_cad.inference.predict.predict`) for batch scoring with per-file rejection.
    """
    if isinstance(model_or_bundle, (str, Path)):
        model_or_bundle = load_bundle(model_or_bundle)
    if isinstance(model_or_bundle, torch.nn.Module):
        model = model_or_bundle
    else:
        model = model_or_bundle.model
        spec = spec or model_or_bundle.transform_spec
        positive_index = model_or_bundle.positive_index if positive_index is None else positive_index
    if spec is None or (positive_index is None and not all_classes):
        raise UsageError("predict_probabilities needs spec and positive_index with a bare model")
    if not isinstance(spec, TransformSpec):
        spec = TransformSpec.from_dict(spec)
    info = resolve_runtime(device, precision)
    info = RuntimeInfo(info.device, info.precision, info.channels_last)  # single process
    prepare_model(model, info)
    items: list[dict[Hashable, Any]] = [{"image": str(p), "label": 0} for p in df["path"]]
    dataset = make_dataset(items, spec, cache_dir=cache_dir)
    out = evaluate(model, dataset, info, batch_size=batch_size, workers=workers, desc="predict")
    return out.probabilities if all_classes else out.probabilities[:, positive_index]

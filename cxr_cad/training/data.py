"""Training data plumbing: train/validation split, labels, samplers and DataLoaders.

Reproducibility rules (all randomness is a function of ``(seed, epoch, rank)``, so a run
resumed at epoch ``k`` sees exactly the batches and augmentations an uninterrupted run
sees at epoch ``k``):

* :class:`EpochSampler` draws each epoch's order (or class-balanced sample) from a
  generator seeded with ``(seed, epoch)``, identical on every rank, then gives each rank
  its strided share (the same contract as ``torch.utils.data.DistributedSampler``, plus
  weighted sampling).
* The augmentation state is reseeded every epoch: in the main process with
  :func:`epoch_seed` when there are no workers, else in each worker by
  :func:`worker_init_fn` from the DataLoader's per-epoch seeded ``generator``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler, get_worker_info

from cxr_cad.config import DataConfig, TrainConfig
from cxr_cad.errors import ConfigError, ManifestError
from cxr_cad.manifest import grouped_split
from cxr_cad.manifest import manifest_hash as compute_manifest_hash
from cxr_cad.transforms import AugmentSpec, collate_samples

log = logging.getLogger(__name__)

SPLIT_TRAIN = ("train", "training")
SPLIT_VAL = ("val", "valid", "validation")


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 63-bit seed for ``epoch`` (0-based) of a run seeded with ``seed``, per ``rank``."""
    mixed = np.random.SeedSequence([int(seed), int(epoch), int(rank), 0x6378725F]).generate_state(2, np.uint32)
    return int((int(mixed[0]) << 31) ^ int(mixed[1])) & (2**63 - 1)


def split_train_val(df: pd.DataFrame, data: DataConfig, *, seed: int) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """Split a labelled manifest into (train, validation or None, how).

    See :class:`cxr_cad.config.DataConfig` for the ``split`` modes. Rows of a ``split``
    column that are neither train nor val (e.g. ``test``) are left out of both, and
    logged. Raises ManifestError when the requested column is missing or a side is empty.
    """
    mode: str = data.split
    train_mask: pd.Series
    val_mask: pd.Series
    if mode == "auto":
        mode = "column" if "split" in df.columns else ("grouped" if data.val_fraction > 0 else "none")
    if mode == "none" or (mode == "grouped" and data.val_fraction == 0):
        return df.reset_index(drop=True), None, "none (no validation data)"
    if mode == "column":
        if "split" not in df.columns:
            raise ManifestError(
                [
                    "data.split is 'column' but the manifest has no 'split' column "
                    "(values train/val); use data.split: grouped"
                ]
            )
        values = df["split"].astype(str).str.strip().str.lower()
        train_mask, val_mask = values.isin(SPLIT_TRAIN), values.isin(SPLIT_VAL)
        other = int((~train_mask & ~val_mask).sum())
        if other:
            log.info("%d row(s) whose split is neither train nor val are not used for training", other)
        how = "split column"
    elif mode == "fold":
        if "fold" not in df.columns:
            raise ManifestError(
                [f"data.split is 'fold' (val_fold {data.val_fold}) but the manifest has no 'fold' column"]
            )
        folds = pd.to_numeric(df["fold"], errors="coerce")
        val_mask = folds == data.val_fold
        train_mask = folds.notna() & ~val_mask
        how = f"fold column, validation fold {data.val_fold}"
    else:
        train_idx, val_idx = grouped_split(
            df, data.val_fraction, seed=seed, label_col=data.label_col, group_col=data.group_col
        )
        in_train = np.zeros(len(df), dtype=bool)
        in_train[train_idx] = True
        train_mask = pd.Series(in_train, dtype=bool)
        val_mask = ~train_mask
        how = f"grouped by {data.group_col}, val_fraction {data.val_fraction}, seed {seed}"
    train_df = df[np.asarray(train_mask)].reset_index(drop=True)
    val_df = df[np.asarray(val_mask)].reset_index(drop=True)
    problems = []
    if len(train_df) == 0:
        problems.append(f"the training side of the split ({how}) is empty")
    if len(val_df) == 0:
        problems.append(f"the validation side of the split ({how}) is empty")
    if problems:
        raise ManifestError(problems)
    return train_df, val_df, how


def label_indices(
    df: pd.DataFrame, classes: Sequence[str], label_col: str = "label", *, what: str = "training"
) -> np.ndarray:
    """Class index (position in ``classes``) of every row. Raises ManifestError listing
    missing labels and labels that are not one of ``classes``."""
    if label_col not in df.columns:
        raise ManifestError(
            [
                f"the {what} table has no {label_col!r} column; training needs labels "
                "(join them with `cxr-cad ingest --labels`)"
            ]
        )
    labels = df[label_col].astype(str).str.strip()
    lookup = {c: i for i, c in enumerate(classes)}
    idx = labels.map(lookup)
    problems = []
    empty = int((labels == "").sum())
    if empty:
        problems.append(f"{empty} {what} row(s) have no label")
    unknown = sorted(set(labels[(labels != "") & idx.isna()]))
    if unknown:
        problems.append(f"{what} label value(s) {unknown} are not in data.classes {list(classes)}")
    if problems:
        raise ManifestError(problems)
    return idx.to_numpy(dtype=np.int64)


def make_items(df: pd.DataFrame, labels: np.ndarray) -> list[dict]:
    """MONAI items ``{"image": path, "label": int}`` (only stable keys: they are cache keys);
    with an ``(n, K)`` finding matrix (multi-label) the label is the row (int64 array, batched as ``(N, K)``)."""
    if labels.ndim == 2:
        return [{"image": str(p), "label": np.asarray(y, dtype=np.int64)} for p, y in zip(df["path"], labels)]
    return [{"image": str(p), "label": int(y)} for p, y in zip(df["path"], labels)]


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (k * count_c)`` (1.0 for an absent class)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


class EpochSampler(Sampler[int]):
    """Shuffled (or class-balanced, with replacement) indices, seeded per epoch, sharded per rank.

    Every rank draws the same permutation from ``(seed, epoch)``; it is padded by wrapping
    to a multiple of ``world_size`` and rank ``r`` takes positions ``r, r + W, ...``, as
    ``DistributedSampler`` does. ``weights`` (one per row) switches to ``torch.multinomial``
    sampling with replacement of the same length.
    """

    def __init__(self, n: int, *, seed: int, weights: torch.Tensor | None = None, rank: int = 0, world_size: int = 1):
        if n < 1:
            raise ValueError("EpochSampler needs at least one row")
        self.n, self.seed, self.weights = n, int(seed), weights
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.per_rank = -(-n // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self) -> list[int]:
        """All ranks' indices for the current epoch (before sharding)."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        else:
            idx = torch.randperm(self.n, generator=g).tolist()
        total = self.per_rank * self.world_size
        while len(idx) < total:
            idx += idx[: total - len(idx)]
        return idx

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank :: self.world_size])

    def __len__(self) -> int:
        return self.per_rank


def sample_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Per-row weights giving every class the same expected share of each epoch."""
    return class_weights(labels, n_classes)[torch.as_tensor(labels)].double()


def _transform_owner(dataset):
    """The dataset whose ``transform`` holds the random state (unwraps Subset)."""
    while hasattr(dataset, "dataset") and not hasattr(dataset, "transform"):
        dataset = dataset.dataset
    return dataset


def reseed_transforms(dataset, seed: int) -> None:
    """Seed the dataset's random transforms (MONAI ``Randomizable.set_random_state``)."""
    owner = _transform_owner(dataset)
    transform = getattr(owner, "transform", None)
    if transform is not None and hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=int(seed) % 2**32)


def worker_init_fn(worker_id: int) -> None:  # noqa: ARG001 - DataLoader signature
    """Seed a DataLoader worker's transforms from its per-epoch seed (``worker_info.seed``).

    Public API only (``torch.utils.data.get_worker_info``, MONAI ``set_random_state``). MONAI's
    own ``monai.data.utils.worker_init_fn`` is not used: it walks the dataset's attributes
    and would seed the cached load chain first, handing the augmentation chain ``seed + 1``
    and so changing every seeded multi-worker run."""
    info = get_worker_info()
    if info is not None:
        reseed_transforms(info.dataset, info.seed)
        np.random.seed(info.seed % 2**32)


def train_loader(
    dataset,
    sampler: EpochSampler,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """The DataLoader for one training epoch (sampler and augmentation seeded for ``epoch``).

    The last batch is dropped only when it would hold a single image (BatchNorm cannot
    train on one sample).
    """
    sampler.set_epoch(epoch)
    es = epoch_seed(seed, epoch, rank)
    if workers == 0:
        reseed_transforms(dataset, es)
    gen = torch.Generator().manual_seed(es)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=worker_init_fn if workers else None,
        generator=gen,
        collate_fn=collate_samples,
        drop_last=len(sampler) % batch_size == 1 and len(sampler) > 1,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def shard_rows(n: int, rank: int, world_size: int) -> np.ndarray:
    """Rows ``rank, rank + W, ...`` of ``n`` (no padding: every row evaluated exactly once)."""
    return np.arange(rank, n, world_size, dtype=np.int64)


@dataclass
class TrainData:
    """The rows a run trains and validates on, their class indices, and how they were chosen."""

    train_df: pd.DataFrame
    val_df: pd.DataFrame | None
    how: str
    y_train: np.ndarray
    y_val: np.ndarray | None
    manifest_hash: str
    augment: AugmentSpec


def prepare_data(train_df: pd.DataFrame, val_df: pd.DataFrame | None, cfg: TrainConfig) -> TrainData:
    """Split (unless ``val_df`` is given), check labels, hash the rows, parse ``cfg.augment``.

    Raises:
        ManifestError: missing or unknown labels, an empty split side, an absent class.
        ConfigError: bad augmentation settings.
    """
    data = cfg.data
    if val_df is not None:
        train_df, how = train_df.reset_index(drop=True), "given by the caller"
        val_df = val_df.reset_index(drop=True)
    else:
        train_df, val_df, how = split_train_val(train_df, data, seed=cfg.seed)
    y_train = label_indices(train_df, data.classes, data.label_col, what="training")
    absent = [c for i, c in enumerate(data.classes) if not (y_train == i).any()]
    if absent:  # a one-class manifest would train a model that never predicts the other class
        raise ManifestError(
            [
                f"the training rows hold no image of class(es) {absent}; training needs every "
                f"one of {list(data.classes)} (check the labels, or --classes)"
            ]
        )
    y_val = label_indices(val_df, data.classes, data.label_col, what="validation") if val_df is not None else None
    all_rows = pd.concat([train_df, val_df], ignore_index=True) if val_df is not None else train_df
    return TrainData(train_df, val_df, how, y_train, y_val, compute_manifest_hash(all_rows), _augment(cfg))


def _augment(cfg: TrainConfig) -> AugmentSpec:
    try:
        return AugmentSpec.from_dict(dict(cfg.augment))
    except ConfigError as exc:
        raise ConfigError([f"augment: {p}" for p in exc.problems]) from exc
    except TypeError as exc:  # e.g. a number where (low, high) is expected
        raise ConfigError([f"augment: {exc}"]) from exc

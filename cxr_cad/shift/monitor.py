"""Dataset-shift warning: is an image, or a cohort, unlike the images the model was trained on?

At the end of training the bundle stores a compact summary of the training images
(:func:`fit_summary`, kept under ``extra["shift"]``):

* a probabilistic PCA model (scikit-learn ``PCA``: mean, ``k`` principal axes, their
  variances and the isotropic variance of the rest) of the d penultimate-layer features
  (the pooled input of the classifier; 512 for ResNet18, 2048 for ResNet50, 1024 for
  DenseNet121), i.e. a regularised low-rank + isotropic covariance, stored in ``k x d``
  numbers instead of ``d x d``;
* quantiles of the Mahalanobis distance of *held-out* images of the training source under
  that model (validation images, plus training images scored by a PPCA fitted without
  their cross-fitting fold), so that "the 99th percentile" means what an unseen patient of
  the training source reaches, not what the fitted images reach;
* the age and view distributions of the training images when the manifest knows them.

An image's ``shift_score`` is its distance divided by that 99th percentile (1.0 = the
training source's 99th percentile; :data:`IMAGE_LIMIT`); it is flagged above 1. A cohort
is flagged by :func:`cohort_shift` when clearly more than the expected 1% of its images are
flagged (rule and reasons: docs/shift.md). The statistics live in
:mod:`cxr_cad.shift.stats` (pure numpy/scikit-learn, re-exported here); this module adds
the feature hook (:class:`FeatureTap`), :func:`extract_features` and :func:`summarise_training`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from cxr_cad.errors import WeightsError
from cxr_cad.model import networks
from cxr_cad.shift.stats import (
    COHORT_ALPHA,
    EMPIRICAL_MIN,
    EXPECTED_RATE,
    IMAGE_LIMIT,
    IMAGE_QUANTILE,
    MAX_COMPONENTS,
    META_MIN,
    MIN_COHORT_FRACTION,
    REF_QUANTILES,
    SHIFT_FILE,
    SUMMARY_FORMAT,
    SUMMARY_KEY,
    cohort_shift,
    fit_summary,
    image_distances,
    image_scores,
    min_flagged,
    stored_sizes,
    summary_from_bundle,
    table_shift,
)
from cxr_cad.transforms import collate_samples, make_dataset, rejected_error

__all__ = [
    "COHORT_ALPHA",
    "EMPIRICAL_MIN",
    "EXPECTED_RATE",
    "IMAGE_LIMIT",
    "IMAGE_QUANTILE",
    "MAX_COMPONENTS",
    "META_MIN",
    "MIN_COHORT_FRACTION",
    "REF_QUANTILES",
    "SHIFT_FILE",
    "SUMMARY_FORMAT",
    "SUMMARY_KEY",
    "FeatureTap",
    "ShiftScorer",
    "cohort_shift",
    "extract_features",
    "fit_summary",
    "head_of",
    "image_distances",
    "image_scores",
    "min_flagged",
    "stored_sizes",
    "summarise_training",
    "summary_from_bundle",
    "table_shift",
]

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

log = logging.getLogger(__name__)


def head_of(model: torch.nn.Module) -> torch.nn.Module:
    """The classifier of a registered network, through DDP/compile wrappers (ValueError otherwise)."""
    try:
        return networks.head_of(model)
    except WeightsError as exc:
        raise ValueError(f"{exc}; the shift score needs the classifier's input") from exc


class FeatureTap:
    """Captures the head's input (pooled penultimate features) during the normal forward pass.

    ``with FeatureTap(model) as tap: logits = model(x); feats = tap.pop()`` -> ``(N, d)``
    float32 numpy array of the last forward pass (None when none happened).
    """

    def __init__(self, model: torch.nn.Module):
        self.head = head_of(model)
        self._handle: RemovableHandle | None = None
        self._last: torch.Tensor | None = None

    def _hook(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._last = inputs[0].detach()

    def __enter__(self) -> FeatureTap:
        self._handle = self.head.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def pop(self) -> np.ndarray | None:
        last, self._last = self._last, None
        return None if last is None else last.float().flatten(1).cpu().numpy()


class ShiftScorer:
    """Per-image shift columns for batch prediction, from the normal forward pass (no second one).

    Create it on the inference model *before* ``torch.compile`` (the hook must exist when the
    model is compiled). :meth:`columns` turns the last forward pass into ``shift_score`` /
    ``shift_flag`` strings; a bundle without a summary gives empty strings.
    """

    def __init__(self, bundle: Any, model: Any):
        self.summary = summary_from_bundle(bundle)
        self.tap = None
        if self.summary is not None:
            try:
                self.tap = FeatureTap(model).__enter__()
            except (ValueError, AttributeError, RuntimeError) as exc:  # e.g. an exported (non-torch) model
                log.info("no shift score: the model's head input cannot be captured (%s)", exc)
                self.summary = None

    def columns(self, n: int) -> list[dict]:
        feats = self.tap.pop() if self.tap is not None else None
        if feats is None or self.summary is None or len(feats) != n:
            return [{"shift_score": "", "shift_flag": ""} for _ in range(n)]
        return [
            {"shift_score": f"{v:.4f}", "shift_flag": str(int(v > IMAGE_LIMIT))}
            for v in image_scores(self.summary, feats)
        ]

    def close(self) -> None:
        if self.tap is not None:
            self.tap.__exit__(None, None, None)


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dataset,
    *,
    batch_size: int = 32,
    workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Penultimate features ``(len(dataset), d)`` of a MONAI dataset of ``{"image": tensor}`` items
    (the deterministic eval chain), in dataset order, on the model's device."""
    from torch.utils.data import DataLoader

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # collate_samples: a file that cannot be read arrives as a rejection record, named in the error
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_samples)
    feats = []
    try:
        with FeatureTap(model) as tap:
            for batch in loader:
                if batch["rejected"]:
                    raise rejected_error(batch["rejected"], "training")
                x = batch["image"].to(device)
                if autocast_dtype is not None:
                    with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                        model(x)
                else:
                    model(x)
                f = tap.pop()
                if f is not None:
                    feats.append(f)
    finally:
        model.train(was_training)
    return np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)


def summarise_training(
    model: torch.nn.Module,
    spec: Any,
    train_df,
    val_df=None,
    *,
    group_col: str = "patient_id",
    cache_dir=None,
    batch_size: int = 32,
    workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
    max_images: int = 4000,
    seed: int = 0,
) -> dict | None:
    """:func:`fit_summary` of a trained model on its training (and validation) manifest rows.

    Features come from the eval chain of ``spec`` (no augmentation) and the model as given
    (the final weights). At most ``max_images`` training rows are used (a seeded sample).
    """

    def feats(df: pd.DataFrame) -> np.ndarray:
        items: list[dict[Hashable, Any]] = [{"image": str(p), "label": 0} for p in df["path"]]
        return extract_features(
            model,
            make_dataset(items, spec, cache_dir=cache_dir),
            batch_size=batch_size,
            workers=workers,
            autocast_dtype=autocast_dtype,
        )

    t0 = time.perf_counter()
    if len(train_df) > max_images:
        train_df = train_df.sample(n=max_images, random_state=seed)
    groups = train_df[group_col].astype(str).tolist() if group_col in train_df.columns else None
    both = train_df if val_df is None else pd.concat([train_df, val_df], ignore_index=True)
    try:
        summary = fit_summary(
            feats(train_df),
            feats(val_df) if val_df is not None and len(val_df) else None,
            train_groups=groups,
            ages=both["patient_age_years"] if "patient_age_years" in both.columns else None,
            views=both["view_position"] if "view_position" in both.columns else None,
            sizes=stored_sizes(both),
        )
    except ValueError as exc:  # too few images: the bundle works, predictions get no shift score
        log.warning("the bundle gets no training-data summary, so no shift score: %s", exc)
        return None
    log.info(
        "shift summary of %d training + %d validation images in %.1f s (99th percentile distance %.2f)",
        summary["n_train"],
        summary["n_validation"],
        time.perf_counter() - t0,
        summary["quantiles"]["q990"],
    )
    return summary

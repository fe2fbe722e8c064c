"""MONAI dictionary transform chains and datasets built from :class:`TransformSpec`.

Every chain is split in two:

* the deterministic part (:func:`build_load_transforms`): ``LoadImaged`` with
  :class:`CxrReader` (decoding at the working resolution of :mod:`cxr_cad.io.working`) -> resize (``squash`` or ``pad``) -> plain float32 tensor
  ``(1, S, S)`` in [0, 1]. This is what :func:`make_dataset` caches (on disk or in
  memory), so repeated epochs and folds do not decode DICOM again;
* the per-sample part (:func:`build_post_transforms`): training augmentation (random,
  with its own seeded state, never the global RNG), the per-image intensity
  standardisation of ``spec.intensity`` (percentile scaling; after augmentation, so the
  network always sees standardised images), channel replication and normalisation
  ``(x - mean) / std``.

Items are dicts ``{"image": path, "label": int, ...}``; other keys pass through
untouched. The output ``"image"`` is a ``(C, S, S)`` float32 ``torch.Tensor``. In a
:func:`make_dataset` dataset a file that is not accepted comes back as the item with a
``"rejected"`` record (:data:`~cxr_cad.transforms.reader.REJECTED_KEY`) instead of an image;
:func:`collate_samples` sets those records apart from the batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import (
    Compose,
    Lambdad,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
    Transform,
)

from cxr_cad.config.transforms import AugmentSpec, TransformSpec
from cxr_cad.core.provenance import sha256_bytes
from cxr_cad.transforms.intensity import Normalised, ScalePercentilesd
from cxr_cad.transforms.reader import REJECTED_KEY, CxrReader, LoadCxrImaged, rejection_record
from cxr_cad.transforms.reencode import RandJpegReencoded
from cxr_cad.transforms.resize import ResizeToInputd

if TYPE_CHECKING:
    from cxr_cad.io import AcceptPolicy

#: A MONAI dictionary item: ``{"image": path or tensor, "label": int, ...}``.
Item = dict[Hashable, Any]

log = logging.getLogger(__name__)

IMAGE_KEY = "image"


def _clip01(x: torch.Tensor) -> torch.Tensor:
    """Clamp intensities to the [0, 1] display range (module level so it pickles)."""
    return x.clamp(0.0, 1.0)


def build_load_transforms(
    spec: TransformSpec, *, policy: AcceptPolicy | None = None, key: str = IMAGE_KEY
) -> list[Transform]:
    """The deterministic, cacheable part: read -> resize -> ``(1, S, S)`` float32 in [0, 1].

    Args:
        spec: the eval spec (uses ``image_size``, ``aspect``, ``interpolation``, ``apply_voi``).
        policy: an ``AcceptPolicy`` for ``cxr_cad.io``; its ``apply_voi`` is replaced by
            ``spec.apply_voi`` (the spec stored in the bundle is the authority).
        key: the item key holding the file path.
    """
    if policy is not None:
        policy = dataclasses.replace(policy, apply_voi=spec.apply_voi)
    # Every container is decoded at the same working resolution (shorter side 2-4x the model
    # input, cxr_cad.io.working), by its codec where it can and by block means otherwise, so
    # the area resize below always does the last >= 2x and the same film scores the same
    # whatever its container (benchmarks/container_invariance.py, issue 19).
    reader = CxrReader(policy=policy, reduce_to=spec.image_size, apply_voi=spec.apply_voi)
    # squash: both sides -> size; pad: longer side -> size, the shorter padded symmetrically with
    # black; then clamped to [0, 1] (bicubic may overshoot), a plain float32 tensor. One step with
    # MONAI's arithmetic, without its MetaTensor bookkeeping (cxr_cad.transforms.resize, issue 19).
    return [
        LoadCxrImaged(keys=key, reader=reader),
        ResizeToInputd(keys=key, size=spec.image_size, aspect=spec.aspect, mode=spec.interpolation),
    ]


def build_augment_transforms(spec: TransformSpec, augment: AugmentSpec, *, key: str = IMAGE_KEY) -> list[Transform]:
    """The random augmentations of ``augment`` for a ``(1, S, S)`` image in [0, 1].

    Rotation/translation/scaling are one ``RandAffined`` (bilinear; scaling is drawn per
    axis from ``augment.scale``), then an optional horizontal flip, then (each with
    probability ``augment.intensity_prob``) brightness shift, contrast change about the
    image mean, gamma (``RandAdjustContrastd``), Gaussian blur, simulated low resolution
    (down- then up-sampling) and Gaussian noise, each followed by a clamp to [0, 1]; last, with
    probability ``augment.jpeg_prob``, lossy JPEG re-encoding (:mod:`cxr_cad.transforms.reencode`).
    Transforms whose range is zero are left out.
    """
    chain: list[Transform] = []
    size = spec.image_size
    lo, hi = augment.scale
    if augment.affine_prob > 0 and (augment.rotate_deg > 0 or augment.translate_frac > 0 or (lo, hi) != (1, 1)):
        shift = augment.translate_frac * size
        chain.append(
            RandAffined(
                keys=key,
                prob=augment.affine_prob,
                rotate_range=(math.radians(augment.rotate_deg),),
                translate_range=(shift, shift),
                scale_range=((lo - 1.0, hi - 1.0), (lo - 1.0, hi - 1.0)),
                mode="bilinear",
                padding_mode=augment.padding_mode,
            )
        )
    if augment.hflip:
        chain.append(RandFlipd(keys=key, prob=0.5, spatial_axis=1))  # axis 1 of (H, W) = columns
    p = augment.intensity_prob
    if augment.brightness > 0:
        chain.append(RandShiftIntensityd(keys=key, offsets=augment.brightness, prob=p))
    if augment.contrast > 0:
        chain.append(RandScaleIntensityFixedMeand(keys=key, factors=augment.contrast, prob=p))
    intensity = augment.brightness > 0 or augment.contrast > 0
    if intensity:
        chain.append(Lambdad(keys=key, func=_clip01))  # gamma needs values in [0, 1]
    if augment.gamma != (1.0, 1.0):
        chain.append(RandAdjustContrastd(keys=key, gamma=augment.gamma, prob=p))
    if augment.blur_sigma[1] > 0:
        lo, hi = augment.blur_sigma
        chain.append(RandGaussianSmoothd(keys=key, sigma_x=(lo, hi), sigma_y=(lo, hi), prob=p))
    if augment.lowres_zoom[0] < 1.0:
        chain.append(
            RandSimulateLowResolutiond(
                keys=key, zoom_range=augment.lowres_zoom, prob=p, downsample_mode="area", upsample_mode="bilinear"
            )
        )
    if augment.noise_std > 0:
        chain.append(RandGaussianNoised(keys=key, std=augment.noise_std, prob=p))
    if (
        augment.noise_std > 0
        or augment.lowres_zoom[0] < 1.0
        or augment.blur_sigma[1] > 0
        or augment.gamma != (1.0, 1.0)
    ):
        chain.append(Lambdad(keys=key, func=_clip01))
    if augment.jpeg_prob > 0:  # lossy storage comes last, after acquisition (needs [0, 1])
        lo, hi = augment.jpeg_quality
        chain.append(RandJpegReencoded(keys=key, quality_range=(int(lo), int(hi)), prob=augment.jpeg_prob))
    return chain


def build_intensity_transforms(spec: TransformSpec, *, key: str = IMAGE_KEY) -> list[Transform]:
    """The per-image intensity standardisation of ``spec.intensity`` (an empty list for "none").

    ``"percentile"``: :class:`~cxr_cad.transforms.intensity.ScalePercentilesd` maps the
    (lower, upper) percentiles of the ``(1, S, S)`` image to 0 and 1 and clips (the
    arithmetic of MONAI ``ScaleIntensityRangePercentilesd``, 15x faster). It runs on the resized
    image (a fixed pixel count, so the percentiles do not depend on the source resolution),
    once, after reading: the readers' own scaling (JPEG / 255, DICOM bit depth, window,
    rescale slope) is a positive affine map of the film's values and drops out.
    """
    if spec.intensity == "none":
        return []
    lower, upper = spec.intensity_percentiles
    return [ScalePercentilesd(keys=key, lower=lower, upper=upper)]


def build_post_transforms(
    spec: TransformSpec, augment: AugmentSpec | None = None, *, key: str = IMAGE_KEY
) -> list[Transform]:
    """The per-sample part: (augment) -> intensity standardisation -> replicate to ``in_channels``
    and normalise (:class:`~cxr_cad.transforms.intensity.Normalised`) -> plain float32 tensor."""
    chain = build_augment_transforms(spec, augment, key=key) if augment is not None else []
    chain += build_intensity_transforms(spec, key=key)
    # replicate to in_channels and (x - mean) / std per channel: MONAI RepeatChannel +
    # NormalizeIntensity(channel_wise) + EnsureType in one step on plain tensors (same bits)
    chain.append(Normalised(keys=key, mean=spec.mean, std=spec.std))  # one value per in_channel (validated)
    return chain


def build_eval_transforms(spec: TransformSpec, *, policy: AcceptPolicy | None = None, key: str = IMAGE_KEY) -> Compose:
    """The deterministic eval chain of ``spec`` (load -> resize -> normalise)."""
    return Compose(build_load_transforms(spec, policy=policy, key=key) + build_post_transforms(spec, key=key))


def build_train_transforms(
    spec: TransformSpec,
    augment: AugmentSpec | None,
    *,
    seed: int,
    policy: AcceptPolicy | None = None,
    key: str = IMAGE_KEY,
) -> Compose:
    """The training chain: load -> resize -> augment -> normalise, seeded with ``seed``.

    The random transforms own their random state (``Compose.set_random_state``); the
    global numpy/torch RNGs are neither read nor changed. ``augment=None`` means no
    augmentation (the eval chain).
    """
    chain = Compose(build_load_transforms(spec, policy=policy, key=key) + build_post_transforms(spec, augment, key=key))
    chain.set_random_state(seed=int(seed))
    return chain


def spec_cache_key(spec: TransformSpec) -> str:
    """Short hash of the fields that decide the cached (deterministic) output."""
    fields = {k: getattr(spec, k) for k in ("image_size", "aspect", "apply_voi", "interpolation")}
    blob = json.dumps({"v": 4, **fields}, sort_keys=True).encode()  # v4: decoded at the working resolution
    return sha256_bytes(blob)[:16]


def _image_hash(item: Mapping[Hashable, Any]) -> bytes:
    """Cache key of one image: its path plus the file's size and mtime.

    A rewritten file (same path, new content) gets a new key instead of stale pixels.
    """
    path = item.get(IMAGE_KEY)
    try:
        st = os.stat(path)  # type: ignore[arg-type]  # None/odd values: reported by the reader
        stamp = [st.st_size, st.st_mtime_ns]
    except (OSError, TypeError):
        stamp = None  # a missing file is reported by the reader, not here
    blob = json.dumps({"image": os.fspath(path) if path is not None else None, "stat": stamp}).encode()
    return sha256_bytes(blob).encode()


class _WithCachedImage(Sequence[Item]):
    """``items[i]`` with its image key replaced by the cached decoded image.

    Only the image goes through the cache, so labels and other keys of an item can never
    come back stale from a cache written by another run or fold. A file that is not
    accepted gives the item with a ``"rejected"`` record instead of the image (nothing is
    cached for it, so a fixed file is read again next time).
    """

    def __init__(self, items: list[Item], images: Dataset, key: str):
        self.items, self.images, self.key = items, images, key

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:  # type: ignore[override]  # int only, as Dataset asks
        item = self.items[index]
        try:
            image = self.images[index][self.key]
        except Exception as exc:  # MONAI wraps the reader's RejectedFile in a RuntimeError
            record = rejection_record(exc, item.get(self.key))
            if record is None:
                raise
            return {**{k: v for k, v in item.items() if k != self.key}, REJECTED_KEY: record}
        return {**item, self.key: image}


class CxrDataset(Dataset):
    """A MONAI ``Dataset`` whose per-sample ``transform`` skips items holding a rejection record."""

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (slice, Sequence)):  # MONAI's Subset, which comes back here per item
            return super().__getitem__(index)
        item = self.data[index]
        if REJECTED_KEY in item or self.transform is None:
            return item
        return self.transform(item)


def collate_samples(samples: list[Item]) -> Item:
    """Collate the accepted samples of a batch (``torch.utils.data.default_collate``) and put the
    rejection records of the others under ``"rejected"`` (a list, empty when all were read)."""
    accepted = [x for x in samples if REJECTED_KEY not in x]
    batch: Item = torch.utils.data.default_collate(accepted) if accepted else {}
    batch[REJECTED_KEY] = [x[REJECTED_KEY] for x in samples if REJECTED_KEY in x]
    return batch


def make_dataset(
    items: Sequence[Item],
    spec: TransformSpec,
    *,
    augment: AugmentSpec | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    memory_cache: bool = False,
    policy: AcceptPolicy | None = None,
    cache_workers: int = 0,
    key: str = IMAGE_KEY,
) -> CxrDataset:
    """A MONAI Dataset over ``items`` with decoded, resized images cached.

    Args:
        items: dicts ``{"image": path, "label": int, ...}``; keys other than the image
            pass through unchanged (they are not part of the cache).
        spec: the eval spec (model input size, aspect, normalisation).
        augment: training augmentation; None = deterministic eval chain.
        cache_dir: persist the deterministic part (load + resize) here (MONAI
            ``PersistentDataset``, one sub-folder per :func:`spec_cache_key`, one file per
            image path + size + mtime), shared by train/eval datasets, epochs, folds and runs.
        seed: seed of the random transforms' own state (no global RNG).
        memory_cache: with no ``cache_dir``, decode everything once up front and keep it
            in memory (MONAI ``CacheDataset``; about ``S*S*4`` bytes per image; a file that
            is not accepted raises while the cache is filled).
        policy: ``AcceptPolicy`` for the reader (``apply_voi`` taken from ``spec``).
        cache_workers: threads used by ``CacheDataset`` to fill the memory cache.

    Returns:
        :class:`CxrDataset` whose ``transform`` is the per-sample chain (augment,
        channels, normalise) and whose ``data`` yields items with the cached ``(1, S, S)``
        image. A file that is not accepted yields its item with a ``"rejected"`` record
        ``{"path", "reason", "detail"}`` instead of the image (in a DataLoader worker too);
        batch with :func:`collate_samples`. Use a DataLoader with
        :func:`cxr_cad.training.data.worker_init_fn` and a seeded ``generator`` for
        reproducible multi-worker augmentation.
    """
    items = list(items)
    images: list[Item] = [{key: it[key]} for it in items]
    load = Compose(build_load_transforms(spec, policy=policy, key=key))
    base: Dataset  # MONAI's datasets are sequences of items
    if cache_dir is not None:
        where = Path(cache_dir) / f"load-{spec_cache_key(spec)}"
        where.mkdir(parents=True, exist_ok=True)
        base = PersistentDataset(images, transform=load, cache_dir=where, hash_func=_image_hash)
        log.debug("caching %d decoded images under %s", len(items), where)
    elif memory_cache:
        base = CacheDataset(images, transform=load, cache_rate=1.0, num_workers=cache_workers or None, progress=False)
    else:
        base = Dataset(images, transform=load)
    post = Compose(build_post_transforms(spec, augment, key=key))
    post.set_random_state(seed=int(seed))
    return CxrDataset(_WithCachedImage(items, base, key), transform=post)

"""MONAI dictionary transforms built from config; the eval chain is stored in the bundle.

Public API (see docs/architecture.md, ``cxr_cad.transforms``)::

    TransformSpec, AugmentSpec, CxrReader, LoadCxrImaged, find_rejection, rejection_record
    build_eval_transforms(spec) -> Compose
    build_train_transforms(spec, augment, *, seed) -> Compose
    make_dataset(items, spec, *, augment=None, cache_dir=None, seed=0) -> CxrDataset
    collate_samples(samples) -> batch dict with a "rejected" list (REJECTED_KEY)
"""

from cxr_cad.config.transforms import (
    GRAY_MEAN,
    GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRANSFORM_SPEC_VERSION,
    AugmentSpec,
    TransformSpec,
    imagenet_normalization,
)
from cxr_cad.transforms.chains import (
    IMAGE_KEY,
    CxrDataset,
    build_augment_transforms,
    build_eval_transforms,
    build_load_transforms,
    build_post_transforms,
    build_train_transforms,
    collate_samples,
    make_dataset,
    spec_cache_key,
)
from cxr_cad.transforms.reader import (
    REJECTED_KEY,
    CxrReader,
    LoadCxrImaged,
    Rejection,
    find_rejection,
    read_cxr,
    rejected_error,
    rejection_record,
)

__all__ = [
    "IMAGE_KEY",
    "GRAY_MEAN",
    "GRAY_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TRANSFORM_SPEC_VERSION",
    "AugmentSpec",
    "TransformSpec",
    "REJECTED_KEY",
    "CxrDataset",
    "CxrReader",
    "LoadCxrImaged",
    "Rejection",
    "rejected_error",
    "collate_samples",
    "find_rejection",
    "read_cxr",
    "rejection_record",
    "imagenet_normalization",
    "build_augment_transforms",
    "build_eval_transforms",
    "build_load_transforms",
    "build_post_transforms",
    "build_train_transforms",
    "make_dataset",
    "spec_cache_key",
]

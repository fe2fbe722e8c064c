"""MONAI dictionary transforms built from config; the eval chain is stored in the bundle.

Public API (see docs/architecture.md, ``cxr_cad.transforms``)::

    TransformSpec, AugmentSpec, CxrReader, find_rejection
    build_eval_transforms(spec) -> Compose
    build_train_transforms(spec, augment, *, seed) -> Compose
    make_dataset(items, spec, *, augment=None, cache_dir=None, seed=0) -> monai.data.Dataset
"""

from cxr_cad.transforms.chains import (
    IMAGE_KEY,
    build_augment_transforms,
    build_eval_transforms,
    build_load_transforms,
    build_post_transforms,
    build_train_transforms,
    make_dataset,
    spec_cache_key,
)
from cxr_cad.transforms.reader import CxrReader, find_rejection
from cxr_cad.transforms.spec import (
    GRAY_MEAN,
    GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRANSFORM_SPEC_VERSION,
    AugmentSpec,
    TransformSpec,
    imagenet_normalization,
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
    "CxrReader",
    "find_rejection",
    "imagenet_normalization",
    "build_augment_transforms",
    "build_eval_transforms",
    "build_load_transforms",
    "build_post_transforms",
    "build_train_transforms",
    "make_dataset",
    "spec_cache_key",
]

"""ResNet18 construction, initial weights, and the model bundle.

Public API (see docs/architecture.md, ``cxr_cad.model``)::

    build_resnet18(num_classes, in_channels=1) -> nn.Module
    load_imagenet_weights(model, source="download", *, progress=True) -> dict
    init_model(init, num_classes, in_channels=1, *, seed=0, classes=None) -> (model, init_record)
    set_trainable(model, "all" | "head") -> int
    save_bundle(path, model, *, classes, positive_class, transform_spec, threshold,
                threshold_method, manifest_hash, extra=None, ...) -> Path
    load_bundle(path, *, map_location="cpu") -> Bundle
"""

from cxr_cad.model.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, Bundle, load_bundle, package_versions, save_bundle
from cxr_cad.model.resnet import (
    ARCH,
    ProbabilityAverage,
    adapt_conv1,
    build_model,
    build_resnet18,
    set_trainable,
    unwrap_model,
)
from cxr_cad.model.weights import (
    ENV_OFFLINE,
    ENV_WEIGHTS,
    IMAGENET_HASH_PREFIX,
    IMAGENET_URL,
    file_sha256,
    imagenet_cache_path,
    init_model,
    load_imagenet_weights,
)

__all__ = [
    "ARCH",
    "ProbabilityAverage",
    "build_model",
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "Bundle",
    "ENV_OFFLINE",
    "ENV_WEIGHTS",
    "IMAGENET_HASH_PREFIX",
    "IMAGENET_URL",
    "adapt_conv1",
    "build_resnet18",
    "file_sha256",
    "imagenet_cache_path",
    "init_model",
    "load_bundle",
    "load_imagenet_weights",
    "package_versions",
    "save_bundle",
    "set_trainable",
    "unwrap_model",
]

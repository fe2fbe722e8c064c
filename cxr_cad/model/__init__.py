"""Registered networks, initial weights, BatchNorm folding and the model bundle.

Public API (see docs/model.md and docs/architecture.md, ``cxr_cad.model``)::

    arch_names() -> tuple[str, ...]             # registered networks, the default ("resnet18") first
    get_arch(name) -> ArchSpec                  # ConfigError for an unknown name
    build_network(num_classes, in_channels=1, *, arch="resnet18") -> nn.Module
    init_model(init, num_classes, in_channels=1, *, seed=0, classes=None, arch="resnet18")
        -> (model, init_record)
    load_imagenet_weights(model, source="download", *, progress=True, arch=None) -> dict
    set_trainable(model, "all" | "head") -> int
    fold_batchnorm(model) -> nn.Module
    save_bundle(path, model, options: BundleOptions | None = None, **BundleOptions fields) -> Path
    load_bundle(path, *, map_location="cpu") -> Bundle

Names are imported on first use, so ``from cxr_cad.model.registry import arch_names`` (config
validation, ``--help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr_cad.model.batchnorm import fold_batchnorm
    from cxr_cad.model.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, Bundle, BundleOptions, load_bundle, save_bundle
    from cxr_cad.model.imagenet import (
        ENV_OFFLINE,
        ENV_WEIGHTS,
        IMAGENET_HASH_PREFIX,
        IMAGENET_URL,
        imagenet_cache_path,
        load_imagenet_weights,
    )
    from cxr_cad.model.initialise import init_model
    from cxr_cad.model.networks import (
        ProbabilityAverage,
        adapt_stem,
        build_model,
        build_network,
        build_resnet18,
        find_arch,
        head_of,
        set_trainable,
        unwrap_model,
    )
    from cxr_cad.model.registry import ARCHITECTURES, DEFAULT_ARCH, ArchSpec, arch_names, get_arch

_HOME = {
    "bundle": ("BUNDLE_FORMAT", "BUNDLE_VERSION", "Bundle", "BundleOptions", "load_bundle", "save_bundle"),
    "batchnorm": ("fold_batchnorm",),
    "initialise": ("init_model",),
    "networks": (
        "ProbabilityAverage",
        "adapt_stem",
        "build_model",
        "build_network",
        "build_resnet18",
        "find_arch",
        "head_of",
        "set_trainable",
        "unwrap_model",
    ),
    "registry": ("ARCHITECTURES", "DEFAULT_ARCH", "ArchSpec", "arch_names", "get_arch"),
    "imagenet": (
        "ENV_OFFLINE",
        "ENV_WEIGHTS",
        "IMAGENET_HASH_PREFIX",
        "IMAGENET_URL",
        "imagenet_cache_path",
        "load_imagenet_weights",
    ),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}

__all__ = [
    "ARCHITECTURES",
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "DEFAULT_ARCH",
    "ENV_OFFLINE",
    "ENV_WEIGHTS",
    "IMAGENET_HASH_PREFIX",
    "IMAGENET_URL",
    "ArchSpec",
    "Bundle",
    "BundleOptions",
    "ProbabilityAverage",
    "adapt_stem",
    "arch_names",
    "build_model",
    "build_network",
    "build_resnet18",
    "find_arch",
    "fold_batchnorm",
    "get_arch",
    "head_of",
    "imagenet_cache_path",
    "init_model",
    "load_bundle",
    "load_imagenet_weights",
    "save_bundle",
    "set_trainable",
    "unwrap_model",
]
assert sorted(__all__) == sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))

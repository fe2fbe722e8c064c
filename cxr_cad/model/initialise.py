"""``init_model``: build a registered network and give it its initial weights.

The forms of ``init`` (``--init`` / ``model.init``) are listed in docs/model.md: ImageNet
(:mod:`cxr_cad.model.imagenet`), random (seeded), a previous cxr_cad bundle (retraining), or a
torchvision-format state dict.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cxr_cad.errors import ConfigError, WeightsError
from cxr_cad.model.bundle import BUNDLE_FORMAT, load_bundle
from cxr_cad.model.imagenet import (
    check_hash_prefix,
    extract_state_dict,
    how_to_pass_weights,
    load_imagenet_weights,
    load_state_dict_into,
)
from cxr_cad.model.networks import build_network
from cxr_cad.model.registry import DEFAULT_ARCH, get_arch
from cxr_cad.model.torchfile import torch_load_file

__all__ = ["init_model"]


def _seeded_model(num_classes: int, in_channels: int, seed: int, arch: str) -> nn.Module:
    """The network with its random init drawn from ``seed`` (global RNG state restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_network(num_classes, in_channels, arch=arch)


def _from_bundle(
    model: nn.Module, path: Path, in_channels: int, classes: list[str] | None, arch: str, seed: int
) -> dict:
    parent = load_bundle(path)
    if parent.arch != arch:
        raise WeightsError(
            f"{path}: the parent bundle is a {parent.arch}, the new model a {arch}; "
            f"train with `--arch {parent.arch}` to retrain it"
        )
    if parent.transform_spec.in_channels != in_channels:
        raise WeightsError(
            f"{path}: the parent bundle has {parent.transform_spec.in_channels} input "
            f"channel(s), the new model {in_channels}; use the same in_channels"
        )
    same_head = classes is not None and list(classes) == list(parent.classes)
    info = load_state_dict_into(model, parent.model.state_dict(), source=str(path), load_head=same_head, arch=arch)
    return {
        "init": "bundle",
        "source": str(path),
        "parent_bundle_sha256": parent.sha256,
        "parent_classes": list(parent.classes),
        "seed": int(seed),
        **info,
    }


def init_model(
    init: str | os.PathLike[str],
    num_classes: int,
    in_channels: int = 1,
    *,
    seed: int = 0,
    classes: list[str] | None = None,
    progress: bool = True,
    arch: str = DEFAULT_ARCH,
) -> tuple[nn.Module, dict]:
    """Build the registered network ``arch`` and initialise it.

    Args:
        init: ``"imagenet"`` (see :mod:`cxr_cad.model.imagenet`), ``"imagenet:/path/file.pth"``,
            ``"none"`` (random, seeded), or a path to a previous cxr_cad bundle (retraining)
            or to a torchvision-format state dict.
        num_classes: number of classes K of the new model.
        in_channels: 1 or 3.
        seed: seed of the random initialisation (the new classifier included); the global
            torch RNG is left as it was.
        classes: the new model's class names; a bundle's classifier is kept only when its
            classes are exactly these (same order), otherwise re-initialised.
        arch: a registered network (:func:`cxr_cad.model.registry.arch_names`).

    Returns:
        ``(model, init_record)``; for a bundle the record carries ``parent_bundle_sha256``.

    Raises:
        ConfigError: unknown ``arch``, or ``init`` is none of the forms above (exit 2).
        WeightsError: weights unavailable, corrupt, non-finite or not fitting (never falls back
            to random).
    """
    get_arch(arch)  # an unknown name is a ConfigError before anything is built
    model = _seeded_model(num_classes, in_channels, seed, arch)
    spec = str(init)
    if spec == "none":
        return model, {"init": "none", "seed": int(seed)}
    if spec == "imagenet" or spec.startswith("imagenet:"):
        source = spec.split(":", 1)[1] if ":" in spec else "download"
        if not source:
            raise ConfigError(f"--init imagenet: needs a path after the colon. {how_to_pass_weights(arch)}")
        return model, {**load_imagenet_weights(model, source, progress=progress, arch=arch), "seed": int(seed)}
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--init {spec!r}: not 'imagenet', 'imagenet:/path', 'none', or an existing bundle / weights file"
        )
    obj = torch_load_file(path, what="weights file or bundle")
    if isinstance(obj, dict) and obj.get("format") == BUNDLE_FORMAT:
        return model, _from_bundle(model, path, in_channels, classes, arch, seed)
    digest = check_hash_prefix(path, arch=arch)
    info = load_state_dict_into(
        model, extract_state_dict(obj, path), source=str(path), load_head=False, arch=arch, torchvision_names=True
    )
    return model, {"init": "weights_file", "source": str(path), "sha256": digest, "seed": int(seed), **info}

"""The architecture registry: one :class:`ArchSpec` per network cxr_cad can train.

An entry holds everything that differs between networks: how the network is built (through
MONAI's networks, with torchvision's layer layout), the names of its first convolution (stem)
and its classifier (head), the layer Grad-CAM looks at, torchvision's ImageNet checkpoint (URL
and the SHA-256 prefix torchvision publishes in its file name), how torchvision's state-dict
names map onto the MONAI network's, how a pretrained RGB stem adapts to gray input, and the
input normalisation those weights expect. Nothing else in cxr_cad names a network.

Adding a network is one entry in :data:`ARCHITECTURES`, its name in
:data:`cxr_cad.config.choices.ARCH_NAMES` (what ``model.arch`` accepts; config validation must not
import this package), plus its test (``tests/model/test_registry.py``
builds every entry, loads a fake ImageNet checkpoint through its key map, folds its BatchNorm
and runs Grad-CAM on it).

Importing this module does not import torch or MONAI: :func:`arch_names` is cheap enough for
config validation and ``--help``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING

from cxr_cad.config.choices import ARCH_NAMES, DEFAULT_ARCH
from cxr_cad.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ARCHITECTURES", "DEFAULT_ARCH", "ArchSpec", "arch_names", "get_arch"]

#: ImageNet RGB mean and standard deviation (torchvision's; every registered checkpoint uses them).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: How a pretrained RGB stem becomes a 1-channel one: ``"sum"`` sums the filters over the colour
#: axis (exact for a gray image replicated to RGB; timm's ``adapt_input_conv``).
GRAY_STEM_MODES = ("sum",)


@dataclass(frozen=True)
class ArchSpec:
    """One registered network.

    Attributes:
        name: the ``--arch`` / ``model.arch`` value and the bundle's ``arch.name``.
        builder: ``(num_classes, in_channels) -> nn.Module``, randomly initialised from torch's
            global RNG (callers seed it).
        impl: the builder call in words, recorded in bundles and model cards.
        stem: module name of the first convolution (``<stem>.weight`` is adapted to gray input).
        head: module name of the classifier ``nn.Linear`` (re-initialised for the K classes).
        target_layer: module name Grad-CAM hooks (the last feature stage).
        weights_url: torchvision's ImageNet checkpoint.
        weights_sha256_prefix: the SHA-256 prefix torchvision publishes in the file name
            (``torch.hub``'s ``check_hash``).
        key_map: ``(pattern, replacement)`` regex substitutions, applied in order, from
            torchvision's state-dict names to the MONAI network's.
        gray_stem: how an RGB stem adapts to 1 input channel (:data:`GRAY_STEM_MODES`).
        mean, std: RGB normalisation of the pretrained weights.
    """

    name: str
    builder: Callable[[int, int], nn.Module]
    impl: str
    stem: str
    head: str
    target_layer: str
    weights_url: str
    weights_sha256_prefix: str
    key_map: tuple[tuple[str, str], ...] = ()
    gray_stem: str = "sum"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def stem_weight(self) -> str:
        """State-dict name of the first convolution's weight."""
        return f"{self.stem}.weight"

    @property
    def head_keys(self) -> tuple[str, str]:
        """State-dict names of the classifier's parameters."""
        return (f"{self.head}.weight", f"{self.head}.bias")

    @property
    def weights_filename(self) -> str:
        """The checkpoint's file name (``<name>-<hash prefix>.pth``)."""
        return self.weights_url.rsplit("/", 1)[-1]

    def build(self, num_classes: int, in_channels: int = 1) -> nn.Module:
        """A randomly initialised network (torch's global RNG).

        Raises:
            ConfigError: ``num_classes`` < 2 or ``in_channels`` not 1 or 3.
        """
        problems = []
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            problems.append(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if in_channels not in (1, 3) or isinstance(in_channels, bool):
            problems.append(f"in_channels must be 1 or 3, got {in_channels!r}")
        if problems:
            raise ConfigError(problems)
        return self.builder(num_classes, in_channels)

    def map_key(self, key: str) -> str:
        """A torchvision state-dict name as this network names it."""
        for pattern, repl in self.key_map:
            key = re.sub(pattern, repl, key)
        return key

    def map_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`map_key` applied to every name of ``state``."""
        return {self.map_key(k): v for k, v in state.items()}


def _build_monai_resnet(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """MONAI's ``resnet18``/``resnet50`` with torchvision's layout (7x7 stride-2 stem, no
    downsample bias), so torchvision checkpoints load by name."""
    from monai.networks import nets

    return getattr(nets, name)(
        spatial_dims=2,
        n_input_channels=in_channels,
        num_classes=num_classes,
        bias_downsample=False,
        conv1_t_stride=2,
        pretrained=False,
    )


def _build_densenet121(num_classes: int, in_channels: int) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, pretrained=False)


_RESNET_IMPL = "monai.networks.nets.{}(spatial_dims=2, conv1_t_stride=2, bias_downsample=False)"
_TORCHVISION = "https://download.pytorch.org/models/"

#: Every registered network, by name, in the order of :data:`~cxr_cad.config.choices.ARCH_NAMES`.
#: The first is the default (the study's).
ARCHITECTURES: Mapping[str, ArchSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            # MONAI's resnet18 with these arguments is torchvision's layer for layer, same names
            ArchSpec(
                name="resnet18",
                builder=partial(_build_monai_resnet, "resnet18"),
                impl=_RESNET_IMPL.format("resnet18"),
                stem="conv1",
                head="fc",
                target_layer="layer4",
                weights_url=_TORCHVISION + "resnet18-f37072fd.pth",
                weights_sha256_prefix="f37072fd",
            ),
            # bottleneck blocks with the stride on the 3x3 convolution: torchvision's "v1.5"
            ArchSpec(
                name="resnet50",
                builder=partial(_build_monai_resnet, "resnet50"),
                impl=_RESNET_IMPL.format("resnet50"),
                stem="conv1",
                head="fc",
                target_layer="layer4",
                weights_url=_TORCHVISION + "resnet50-0676ba61.pth",
                weights_sha256_prefix="0676ba61",
            ),
            # CheXNet's network. MONAI nests each dense layer's modules under ``layers`` and calls
            # the classifier ``class_layers.out``; torchvision's checkpoint spells ``norm.1`` for
            # ``norm1`` (its own loader renames them too)
            ArchSpec(
                name="densenet121",
                builder=_build_densenet121,
                impl="monai.networks.nets.DenseNet121(spatial_dims=2)",
                stem="features.conv0",
                head="class_layers.out",
                target_layer="class_layers.relu",
                weights_url=_TORCHVISION + "densenet121-a639ec97.pth",
                weights_sha256_prefix="a639ec97",
                key_map=(
                    (r"^(features\.denseblock\d+\.denselayer\d+)\.(norm|relu|conv)\.?([12])\.", r"\1.layers.\2\3."),
                    (r"^classifier\.", "class_layers.out."),
                ),
            ),
        )
    }
)


if tuple(ARCHITECTURES) != ARCH_NAMES:  # one table of names for config and the registry
    raise RuntimeError(
        f"cxr_cad.model.registry registers {tuple(ARCHITECTURES)}, cxr_cad.config.choices.ARCH_NAMES "
        f"lists {ARCH_NAMES}: they must name the same networks in the same order"
    )


def arch_names() -> tuple[str, ...]:
    """Names of the registered networks, the default first (no torch import)."""
    return tuple(ARCHITECTURES)


def get_arch(name: str) -> ArchSpec:
    """The registered network called ``name``.

    Raises:
        ConfigError: no such network (the message lists the registered ones).
    """
    spec = ARCHITECTURES.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ConfigError(f"unknown architecture {name!r}; registered: {', '.join(arch_names())}")
    return spec

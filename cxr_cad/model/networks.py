"""Building the registered networks, ensembles of them, and the fine-tuning switches.

Every network comes from :mod:`cxr_cad.model.registry` (``arch="resnet18"`` by default, the
study's). ``build_network(K, C, arch="resnet18")`` is MONAI's ``resnet18(spatial_dims=2,
n_input_channels=C, num_classes=K, bias_downsample=False, conv1_t_stride=2)``: layer for layer
torchvision's ``resnet18`` with torchvision's ``state_dict`` names, so a torchvision checkpoint
loads without renaming (``conv1_t_stride=2``: MONAI's default stem stride is 1, torchvision's 2).

Grayscale input (``in_channels=1``): pretrained RGB stem weights are summed over the colour
axis (timm's ``adapt_input_conv``; the entry's ``gray_stem``). For a gray image ``t``
replicated to RGB, ``sum_c W_c * t = (sum_c W_c) * t``: the 1-channel network gives exactly
the activations the RGB network gives on the replicated image, with a third of the stem's
multiply-adds and a third of the input memory.
"""

from __future__ import annotations

import logging
from functools import cache

import torch
from torch import nn

from cxr_cad.errors import ConfigError, WeightsError
from cxr_cad.model.registry import ARCHITECTURES, DEFAULT_ARCH, ArchSpec, get_arch

log = logging.getLogger(__name__)

TRAINABLE_MODES = ("all", "head")
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def build_network(num_classes: int, in_channels: int = 1, *, arch: str = DEFAULT_ARCH) -> nn.Module:
    """A randomly initialised registered network (torch's global RNG; :func:`init_model` seeds it).

    Raises:
        ConfigError: unknown ``arch``, ``num_classes`` < 2 or ``in_channels`` not 1 or 3.
    """
    return get_arch(arch).build(num_classes, in_channels)


def build_resnet18(num_classes: int, in_channels: int = 1) -> nn.Module:
    """``build_network(num_classes, in_channels, arch="resnet18")``."""
    return build_network(num_classes, in_channels, arch="resnet18")


class ProbabilityAverage(nn.Module):
    """Average of the softmax probabilities of ``members`` (and of the horizontally flipped
    input with ``hflip``): an ensemble and/or test-time augmentation as one module.

    ``forward`` returns ``log(mean probability)``, so ``softmax(forward(x))`` is exactly the
    mean probability (the log of a distribution is a valid logit vector) and everything that
    applies a softmax to a model's output (validation, ``predict``, ``evaluate``) scores
    the average without knowing it is one. The flip is along the last axis (image columns).
    Grad-CAM (cxr_cad.explain.gradcam) and the shift score's features use the first member
    network on the unflipped image.
    """

    def __init__(self, members: list[nn.Module], *, hflip: bool = False):
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member network")
        self.members = nn.ModuleList(members)
        self.hflip = bool(hflip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        n = 0
        # members[0] on the unflipped image runs last: a hook on its head (the shift score's
        # feature tap, cxr_cad.shift.monitor) then sees the plain image's features
        for member in reversed(self.members):
            views = (torch.flip(x, dims=(-1,)), x) if self.hflip else (x,)
            for v in views:
                p = torch.softmax(member(v).float(), dim=1)
                total = p if total is None else total + p
                n += 1
        assert total is not None  # at least one member (checked in __init__)
        return torch.log((total / n).clamp_min(1e-12))


def build_model(
    num_classes: int, in_channels: int = 1, *, members: int = 1, hflip: bool = False, arch: str = DEFAULT_ARCH
) -> nn.Module:
    """A plain network (``members=1``, no ``hflip``) or a :class:`ProbabilityAverage` of
    ``members`` networks (state-dict keys ``members.<i>.<name>``)."""
    if members == 1 and not hflip:
        return build_network(num_classes, in_channels, arch=arch)
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ConfigError(f"members must be an integer >= 1, got {members!r}")
    return ProbabilityAverage([build_network(num_classes, in_channels, arch=arch) for _ in range(members)], hflip=hflip)


def adapt_stem(weight: torch.Tensor, in_channels: int, mode: str = "sum") -> torch.Tensor:
    """Adapt a pretrained first-convolution weight ``(out, C_src, kh, kw)`` to ``in_channels``.

    RGB -> gray (``mode="sum"``): sum over the colour axis (exact for a gray image replicated
    to RGB). Gray -> RGB: repeat and divide by 3 (the same output on a replicated gray image).
    Same channel count: unchanged.

    Raises:
        WeightsError: not a 4-D weight or an unsupported channel combination.
    """
    if weight.ndim != 4:
        raise WeightsError(f"the stem weight must be 4-D (out, in, kh, kw), got shape {tuple(weight.shape)}")
    src = weight.shape[1]
    if src == in_channels:
        return weight
    if in_channels == 1 and src == 3 and mode == "sum":
        return weight.sum(dim=1, keepdim=True)
    if in_channels == 3 and src == 1:
        return weight.repeat(1, 3, 1, 1) / 3.0
    raise WeightsError(f"cannot adapt a stem with {src} input channels to {in_channels} channels ({mode})")


@cache
def _state_keys(name: str) -> frozenset[str]:
    """State-dict names of a registered network (built on the meta device: no memory, no RNG)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return frozenset(get_arch(name).build(2, 1).state_dict())


def find_arch(model: object) -> ArchSpec | None:
    """The registered network ``model`` is (the first member of an ensemble), or None.

    Recognised by its state-dict names, so a network from any code path (a bundle, an
    ``init_model`` call, a deep copy) is recognised without a tag."""
    if not isinstance(model, nn.Module):
        return None
    keys = frozenset(_first_network(model).state_dict())
    return next((spec for name, spec in ARCHITECTURES.items() if _state_keys(name) == keys), None)


def _first_network(model: nn.Module) -> nn.Module:
    net = unwrap_model(model)
    return net.members[0] if isinstance(net, ProbabilityAverage) else net


def _module_or_none(net: nn.Module, name: str) -> nn.Module | None:
    try:
        return net.get_submodule(name)
    except AttributeError:
        return None


def layout_arch(model: object) -> ArchSpec | None:
    """The first registered entry whose stem, head and Grad-CAM layer names ``model`` has (of the
    first member of an ensemble), or None.

    Unlike :func:`find_arch` this also recognises a network prepared for inference (BatchNorm
    folded, the stem wrapped), whose state-dict names have changed; ResNet18 and ResNet50 share
    these names, so use it for what they share (the head, the Grad-CAM layer)."""
    if not isinstance(model, nn.Module):
        return None
    net = _first_network(model)
    for spec in ARCHITECTURES.values():
        head = _module_or_none(net, spec.head)
        if isinstance(head, nn.Linear) and all(
            _module_or_none(net, n) is not None for n in (spec.stem, spec.target_layer)
        ):
            return spec
    return None


def head_of(model: nn.Module) -> nn.Linear:
    """The classifier of a registered network (of the first member of an ensemble), also after
    :func:`cxr_cad.model.batchnorm.fold_batchnorm`.

    Raises:
        WeightsError: ``model`` is none of the registered networks.
    """
    spec = layout_arch(model)
    if spec is None:
        raise WeightsError(f"the model is none of the registered networks ({', '.join(ARCHITECTURES)})")
    head = _first_network(model).get_submodule(spec.head)
    assert isinstance(head, nn.Linear)  # checked by layout_arch
    return head


def set_trainable(model: nn.Module, mode: str) -> int:
    """Choose which parameters train; returns the number of trainable parameters.

    Args:
        mode: ``"all"`` (fine-tune every layer) or ``"head"`` (frozen backbone: only the
            classifier trains).

    With ``"head"``, backbone BatchNorm layers are also put in eval mode so their
    running statistics stay those of the initial weights; ``model.train()`` switches
    them back, so call ``set_trainable(model, "head")`` again after every
    ``model.train()`` while the backbone is frozen.

    Raises:
        ConfigError: unknown mode.
        WeightsError: a model that is none of the registered networks.
    """
    if mode not in TRAINABLE_MODES:
        raise ConfigError(f"trainable mode must be one of {TRAINABLE_MODES}, got {mode!r}")
    net = unwrap_model(model)
    spec = find_arch(net)
    if spec is None:
        raise WeightsError(
            f"set_trainable expects a registered network ({', '.join(ARCHITECTURES)}) from build_network"
        )
    nets = list(net.members) if isinstance(net, ProbabilityAverage) else [net]
    head = {id(p) for n in nets for p in n.get_submodule(spec.head).parameters()}
    for p in net.parameters():
        p.requires_grad_(mode == "all" or id(p) in head)
    if mode == "head":
        for n in nets:
            for name, m in n.named_modules():
                if isinstance(m, _BATCHNORMS) and not (name == spec.head or name.startswith(spec.head + ".")):
                    m.eval()
    count = sum(p.numel() for p in net.parameters() if p.requires_grad)
    log.debug("set_trainable(%s): %d trainable parameters", mode, count)
    return count


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain network inside DistributedDataParallel / DataParallel / torch.compile wrappers.

    torch.compile's wrapper has no public accessor for the module it wraps; ``_orig_mod`` is
    the one place cxr_cad reads it (tests/model/test_model.py checks it still works)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(inner := getattr(model, "_orig_mod", None), nn.Module):
            model = inner
        else:
            return model

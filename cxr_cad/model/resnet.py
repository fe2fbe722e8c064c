"""ResNet18 construction (MONAI, torchvision parameter names) and fine-tuning switches.

``build_resnet18`` returns ``monai.networks.nets.resnet18(spatial_dims=2,
n_input_channels=C, num_classes=K, bias_downsample=False, conv1_t_stride=2)``. With
those arguments the network is layer for layer torchvision's ``resnet18`` (7x7/2 stem
convolution, 3x3/2 max pool, BasicBlocks with 1x1 convolution + BN downsample,
global average pool, ``fc``), and its ``state_dict`` keys equal torchvision's
(``conv1.weight``, ``layer2.0.downsample.0.weight``, ..., ``fc.bias``), so a
torchvision-format checkpoint loads without renaming. Note ``conv1_t_stride=2``:
MONAI's default stem stride is 1, torchvision's is 2.

Grayscale input (``in_channels=1``): pretrained RGB ``conv1`` weights are summed over
the colour axis (timm's ``adapt_input_conv``). For a gray image ``t`` replicated to
RGB, ``sum_c W_c * t = (sum_c W_c) * t``: the 1-channel network gives exactly the
activations the RGB network gives on the replicated image, while ``conv1`` does a
third of the multiply-adds and the input tensor is a third of the size.
"""

from __future__ import annotations

import logging

import torch
from monai.networks.nets import resnet18 as _monai_resnet18
from torch import nn

from cxr_cad.errors import WeightsError

log = logging.getLogger(__name__)

ARCH = "resnet18"
#: How the architecture is built; recorded in bundles.
ARCH_IMPL = "monai.networks.nets.resnet18(spatial_dims=2, conv1_t_stride=2, bias_downsample=False)"
TRAINABLE_MODES = ("all", "head")


def build_resnet18(num_classes: int, in_channels: int = 1) -> nn.Module:
    """A randomly initialised 2-D ResNet18 with torchvision's parameter names.

    Args:
        num_classes: number of output logits (>= 2; one per class).
        in_channels: 1 (gray) or 3 (RGB / gray replicated).

    The caller controls the random initialisation through torch's RNG
    (:func:`cxr_cad.model.weights.init_model` seeds it without touching the global state).

    Raises:
        WeightsError: ``num_classes`` < 2 or ``in_channels`` not 1 or 3.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise WeightsError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if in_channels not in (1, 3):
        raise WeightsError(f"in_channels must be 1 or 3, got {in_channels!r}")
    return _monai_resnet18(
        spatial_dims=2,
        n_input_channels=in_channels,
        num_classes=num_classes,
        bias_downsample=False,
        conv1_t_stride=2,
        pretrained=False,
    )


class ProbabilityAverage(nn.Module):
    """Average of the softmax probabilities of ``members`` (and of the horizontally flipped
    input with ``hflip``): an ensemble and/or test-time augmentation as one module.

    ``forward`` returns ``log(mean probability)``, so ``softmax(forward(x))`` is exactly the
    mean probability (the log of a distribution is a valid logit vector) and everything that
    applies a softmax to a model's output (validation, ``predict``, ``evaluate``) scores
    the average without knowing it is one. The flip is along the last axis (image columns).
    Grad-CAM (cxr_cad.report.gradcam) and the shift score's features use the first member
    network on the unflipped image.
    """

    def __init__(self, members: list[nn.Module], *, hflip: bool = False):
        super().__init__()
        if not members:
            raise WeightsError("an ensemble needs at least one member network")
        self.members = nn.ModuleList(members)
        self.hflip = bool(hflip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        n = 0
        # members[0] on the unflipped image runs last: a hook on its head (the shift score's
        # feature tap, cxr_cad.model.shift) then sees the plain image's features
        for member in reversed(self.members):
            views = (torch.flip(x, dims=(-1,)), x) if self.hflip else (x,)
            for v in views:
                p = torch.softmax(member(v).float(), dim=1)
                total = p if total is None else total + p
                n += 1
        return torch.log((total / n).clamp_min(1e-12))


def build_model(num_classes: int, in_channels: int = 1, *, members: int = 1, hflip: bool = False) -> nn.Module:
    """A plain ResNet18 (``members=1``, no ``hflip``) or a :class:`ProbabilityAverage` of
    ``members`` ResNet18s (state-dict keys ``members.<i>.<torchvision name>``)."""
    if members == 1 and not hflip:
        return build_resnet18(num_classes, in_channels)
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise WeightsError(f"members must be an integer >= 1, got {members!r}")
    return ProbabilityAverage([build_resnet18(num_classes, in_channels) for _ in range(members)], hflip=hflip)


def adapt_conv1(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a pretrained ``conv1.weight`` ``(64, C_src, 7, 7)`` to ``in_channels``.

    RGB -> gray: sum over the colour axis (exact for a gray image replicated to RGB).
    Gray -> RGB: repeat and divide by 3 (the same output on a replicated gray image).
    Same channel count: unchanged.

    Raises:
        WeightsError: not a 4-D weight or an unsupported channel combination.
    """
    if weight.ndim != 4:
        raise WeightsError(f"conv1.weight must be 4-D (out, in, kh, kw), got shape {tuple(weight.shape)}")
    src = weight.shape[1]
    if src == in_channels:
        return weight
    if in_channels == 1 and src == 3:
        return weight.sum(dim=1, keepdim=True)
    if in_channels == 3 and src == 1:
        return weight.repeat(1, 3, 1, 1) / 3.0
    raise WeightsError(f"cannot adapt conv1 with {src} input channels to {in_channels} channels")


def set_trainable(model: nn.Module, mode: str) -> int:
    """Choose which parameters train; returns the number of trainable parameters.

    Args:
        mode: ``"all"`` (fine-tune every layer) or ``"head"`` (frozen backbone: only
            ``fc`` trains).

    With ``"head"``, backbone BatchNorm layers are also put in eval mode so their
    running statistics stay those of the initial weights; ``model.train()`` switches
    them back, so call ``set_trainable(model, "head")`` again after every
    ``model.train()`` while the backbone is frozen.

    Raises:
        WeightsError: unknown mode, or a model without an ``fc`` layer.
    """
    if mode not in TRAINABLE_MODES:
        raise WeightsError(f"trainable mode must be one of {TRAINABLE_MODES}, got {mode!r}")
    net = unwrap_model(model)
    fc = getattr(net, "fc", None)
    if not isinstance(fc, nn.Module):
        raise WeightsError("model has no 'fc' layer; set_trainable expects a ResNet from build_resnet18")
    head = {id(p) for p in fc.parameters()}
    for p in net.parameters():
        p.requires_grad_(mode == "all" or id(p) in head)
    if mode == "head":
        for name, m in net.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not name.startswith("fc"):
                m.eval()
    n = sum(p.numel() for p in net.parameters() if p.requires_grad)
    log.debug("set_trainable(%s): %d trainable parameters", mode, n)
    return n


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain network inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model

"""Grad-CAM maps against a slow, obvious Grad-CAM written with forward/backward hooks, for every
registered network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cxr_cad.explain.gradcam import GradcamSource, gradcam_maps, unit_normalizer
from cxr_cad.model import arch_names, build_network, get_arch, head_of
from cxr_cad.transforms import TransformSpec, build_load_transforms, build_post_transforms
from tests.factories.synth import synthetic_cxr


def _slow_gradcam(model: torch.nn.Module, x: torch.Tensor, class_idx: int, layer_name: str) -> np.ndarray:
    acts, grads = {}, {}
    layer = model.get_submodule(layer_name)
    h1 = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    h2 = layer.register_full_backward_hook(lambda m, gi, go: grads.__setitem__("g", go[0]))
    try:
        model.zero_grad()
        logits = model(x)
        logits[0, class_idx].backward()
    finally:
        h1.remove()
        h2.remove()
    weights = grads["g"].mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts["a"]).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.detach().numpy()
    return (cam - cam.min()) / (cam.max() - cam.min())


@pytest.mark.parametrize("arch", arch_names())
def test_gradcam_hot_where_the_evidence_is_not_flipped(tmp_path, arch):
    """Every registered network, at its registry entry's layer (GradcamSource finds it)."""
    torch.manual_seed(0)
    model = build_network(num_classes=2, in_channels=1, arch=arch).eval()
    with torch.no_grad():  # positive head weights: the class-1 map has evidence (a random head may have none)
        head_of(model).weight.abs_()
    spec = TransformSpec(image_size=64)
    img = synthetic_cxr(np.random.default_rng(1), 64, opacity=True)
    path = tmp_path / "x.png"
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    source = GradcamSource(model, spec, positive_index=1)
    assert source.layer() == get_arch(arch).target_layer
    ((shown, heat),) = gradcam_maps(source, [str(path)])
    assert heat.shape == (64, 64) and heat.min() == 0.0 and heat.max() == 1.0

    from monai.transforms import Compose

    loaded = Compose(build_load_transforms(spec))({"image": str(path)})["image"]
    x = Compose(build_post_transforms(spec))({"image": loaded})["image"]
    x = (x.as_tensor() if hasattr(x, "as_tensor") else x)[None].float()
    slow = _slow_gradcam(model, x, 1, get_arch(arch).target_layer)
    # same map, same orientation: the maximum of the evidence is hot (1), not cold (0)
    assert np.corrcoef(heat.ravel(), slow.ravel())[0, 1] > 0.99
    assert np.abs(heat - slow).max() < 0.05


def test_unit_normalizer_maps_min_to_0_max_to_1_and_constant_to_0():
    x = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]]], [[[4.0, 4.0], [4.0, 4.0]]]])
    y = unit_normalizer(x)
    assert torch.allclose(y[0, 0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(y[1], torch.zeros(1, 2, 2))

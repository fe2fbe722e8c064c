"""Random JPEG re-encoding augmentation (cxr_cad/transforms/reencode.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_cad.config.transforms import AugmentSpec, TransformSpec
from cxr_cad.errors import ConfigError
from cxr_cad.transforms.chains import build_augment_transforms
from cxr_cad.transforms.reencode import RandJpegReencode, RandJpegReencoded, jpeg_reencode


def _film(size: int = 96, seed: int = 0) -> torch.Tensor:
    """A smooth body with fine texture, like a radiograph's lung field, in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = 0.3 + 0.5 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.55) ** 2) / 0.08)
    texture = 0.08 * rng.standard_normal((size, size))
    return torch.from_numpy(np.clip(body + texture, 0, 1).astype(np.float32)[None])


def test_jpeg_reencode_equals_a_pillow_round_trip():
    img = _film()
    u8 = np.clip(np.rint(img[0].numpy() * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=40)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255
    out = jpeg_reencode(img, 40)
    assert out.shape == img.shape and out.dtype == torch.float32
    assert np.array_equal(out[0].numpy(), expected)


def test_lower_quality_removes_more_fine_texture():
    img = _film()

    def texture(x: torch.Tensor) -> float:  # mean absolute difference between neighbours
        return float((x[0, 1:] - x[0, :-1]).abs().mean())

    errors = [float((jpeg_reencode(img, q) - img).abs().mean()) for q in (95, 75, 30)]
    assert errors[0] < errors[1] < errors[2]
    assert texture(jpeg_reencode(img, 30)) < texture(img)
    assert errors[0] < 0.02  # quality 95 stays close to the image


def test_random_reencoding_is_seeded_and_leaves_the_global_rng_alone():
    img = _film()
    np.random.seed(123)
    torch.manual_seed(123)
    before = (np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    a = RandJpegReencoded(keys="image", quality_range=(20, 95), prob=0.5).set_random_state(seed=7)
    b = RandJpegReencoded(keys="image", quality_range=(20, 95), prob=0.5).set_random_state(seed=7)
    outs_a = [a({"image": img})["image"] for _ in range(12)]
    outs_b = [b({"image": img})["image"] for _ in range(12)]
    assert all(torch.equal(x, y) for x, y in zip(outs_a, outs_b))
    changed = [not torch.equal(x, img) for x in outs_a]
    assert 0 < sum(changed) < 12  # prob 0.5: some re-encoded, some not
    assert np.array_equal(np.random.get_state()[1], before[0]) and torch.equal(torch.get_rng_state(), before[1])
    never = RandJpegReencode((50, 95), prob=0.0)
    assert torch.equal(never(img), img)
    with pytest.raises(ValueError, match="quality_range"):
        RandJpegReencode((0, 95))
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        jpeg_reencode(torch.zeros(3, 8, 8), 75)


def test_the_augment_spec_adds_it_last_and_validates_the_quality_range():
    spec = TransformSpec(image_size=96)
    chain = build_augment_transforms(spec, AugmentSpec(jpeg_prob=1.0, jpeg_quality=(30, 30)))
    assert isinstance(chain[-1], RandJpegReencoded)
    img = _film()
    out = chain[-1]({"image": img})["image"]
    assert torch.equal(out, jpeg_reencode(img, 30))
    assert not any(isinstance(t, RandJpegReencoded) for t in build_augment_transforms(spec, AugmentSpec()))
    assert AugmentSpec.off().jpeg_prob == 0
    with pytest.raises(ConfigError, match="jpeg_quality"):
        AugmentSpec.from_dict({"jpeg_prob": 0.5, "jpeg_quality": [0, 120]})

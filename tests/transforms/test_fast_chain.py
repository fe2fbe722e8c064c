"""The fast deterministic chain (issue 19) against the slow obvious MONAI transforms it replaced.

``ResizeToInputd`` replaced ``Resized`` (+ ``SpatialPadd``) + a clamp + ``EnsureTyped``;
``Normalised`` replaced ``RepeatChanneld`` + ``NormalizeIntensityd`` + ``EnsureTyped``;
``ScalePercentiles`` reads numpy's percentiles from ``torch.topk`` of the tails. Cached images and
model inputs must not move: the checks are bit for bit where the arithmetic is the same, and
within 1e-6 of MONAI's own percentile scaling (``torch.quantile``, another algorithm).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureTyped,
    Lambdad,
    NormalizeIntensity,
    NormalizeIntensityd,
    RepeatChannel,
    RepeatChanneld,
    Resize,
    Resized,
    ScaleIntensityRangePercentiles,
    SpatialPadd,
)

from cxr_cad.transforms import TransformSpec, build_load_transforms, build_post_transforms
from cxr_cad.transforms.intensity import (
    Normalise,
    Normalised,
    ScalePercentiles,
    ScalePercentilesd,
    percentile_pair,
)
from cxr_cad.transforms.resize import ResizeToInput, ResizeToInputd
from tests.factories.dicom import chest_phantom
from tests.factories.synth import synthetic_cxr

#: (rows, columns) of the generated images: square, portrait, landscape, odd, tiny, at 64 and above.
SHAPES = [(64, 64), (96, 64), (57, 131), (150, 224), (300, 217), (512, 448), (13, 9), (1, 1)]


def _image(rows: int, columns: int, seed: int = 0) -> torch.Tensor:
    """A (1, rows, columns) float32 radiograph in [0, 1] with a 12-bit quantisation (ties) or smooth."""
    rng = np.random.default_rng(seed)
    if seed % 2:
        img = synthetic_cxr(rng, max(rows, columns))[:rows, :columns]
    else:
        img = chest_phantom((rows, columns), seed=seed).astype(np.float32) / 4095
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]


def _monai_resize(spec: TransformSpec, key: str = "image") -> Compose:
    """The load chain's resize as it was: MONAI Resized (+ SpatialPadd), clamp, EnsureTyped."""
    size, aa = spec.image_size, spec.interpolation != "area"
    if spec.aspect == "squash":
        chain = [Resized(keys=key, spatial_size=(size, size), mode=spec.interpolation, anti_aliasing=aa)]
    else:
        chain = [
            Resized(keys=key, spatial_size=size, size_mode="longest", mode=spec.interpolation, anti_aliasing=aa),
            SpatialPadd(keys=key, spatial_size=(size, size), method="symmetric", mode="constant"),
        ]
    chain += [
        Lambdad(keys=key, func=lambda x: x.clamp(0.0, 1.0)),
        EnsureTyped(keys=key, data_type="tensor", dtype=torch.float32, track_meta=False),
    ]
    return Compose(chain)


def _monai_post(spec: TransformSpec, key: str = "image") -> Compose:
    """The eval post chain as it was: percentiles, RepeatChanneld, NormalizeIntensityd, EnsureTyped."""
    chain: list = []
    if spec.intensity == "percentile":
        chain.append(
            ScalePercentilesd(keys=key, lower=spec.intensity_percentiles[0], upper=spec.intensity_percentiles[1])
        )
    if spec.in_channels != 1:
        chain.append(RepeatChanneld(keys=key, repeats=spec.in_channels))
    chain += [
        NormalizeIntensityd(keys=key, subtrahend=list(spec.mean), divisor=list(spec.std), channel_wise=True),
        EnsureTyped(keys=key, data_type="tensor", dtype=torch.float32, track_meta=False),
    ]
    return Compose(chain)


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    b = b.as_tensor() if isinstance(b, MetaTensor) else b
    assert type(a) is torch.Tensor and a.dtype == torch.float32
    assert a.shape == b.shape and torch.equal(a, b.to(torch.float32)), float((a - b).abs().max())


# ---------------------------------------------------------------- percentiles


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pair", [(0.5, 99.5), (0.0, 100.0), (1.0, 99.0), (2.5, 97.5), (25.0, 75.0)])
def test_percentile_pair_is_numpys_bit_for_bit(shape, pair):
    for seed in range(3):
        x = _image(*shape, seed=seed)
        want = np.percentile(x.numpy(), pair)
        assert percentile_pair(x, *pair) == (float(want[0]), float(want[1]))


def test_percentile_pair_uses_topk_for_the_tails_and_handles_nan_and_constants(monkeypatch):
    x = _image(224, 224)
    calls = []
    real = torch.topk
    monkeypatch.setattr(torch, "topk", lambda *a, **k: calls.append(k) or real(*a, **k))
    percentile_pair(x, 0.5, 99.5)
    assert [c["largest"] for c in calls] == [False, True]  # the tails, not a partition of all pixels
    calls.clear()
    percentile_pair(x, 25.0, 75.0)  # not tails: numpy's partition
    assert calls == []
    y = x.clone()
    y[0, 3, 4] = float("nan")
    assert all(np.isnan(v) for v in percentile_pair(y, 0.5, 99.5))
    assert percentile_pair(torch.full((1, 40, 40), 0.25), 0.5, 99.5) == (0.25, 0.25)


@pytest.mark.parametrize("shape", SHAPES)
def test_percentile_scaling_matches_monai(shape):
    x = _image(*shape, seed=1)
    ours = ScalePercentiles(0.5, 99.5)(x)
    ref = ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True)(x)
    assert type(ours) is torch.Tensor and ours.shape == x.shape
    assert torch.allclose(ours, torch.as_tensor(ref).float(), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- resize and normalise


@pytest.mark.parametrize("mode", ["area", "bilinear", "bicubic"])
@pytest.mark.parametrize("aspect", ["squash", "pad"])
@pytest.mark.parametrize("shape", SHAPES)
def test_resize_to_input_equals_monai_resize_pad_clamp(shape, aspect, mode):
    for size in (64, 224):
        spec = TransformSpec(image_size=size, aspect=aspect, interpolation=mode)
        x = _image(*shape, seed=2)
        want = _monai_resize(spec)({"image": MetaTensor(x.clone())})["image"]
        got = ResizeToInputd(keys="image", size=size, aspect=aspect, mode=mode)({"image": MetaTensor(x.clone())})
        _same(got["image"], want)
        assert got["image"].is_contiguous()


def test_resize_to_input_skips_the_identity_and_leaves_its_input():
    x = _image(224, 224) * 1.2 - 0.1  # outside [0, 1]: clamped, never in place
    before = x.clone()
    out = ResizeToInput(224)(x)
    assert torch.equal(x, before) and torch.equal(out, before.clamp(0, 1))
    assert torch.equal(ResizeToInput(224)(x[:, :, :150]), Resize((224, 224), mode="area")(x[:, :, :150]).clamp(0, 1))
    with pytest.raises(ValueError, match="aspect"):
        ResizeToInput(224, aspect="crop")


@pytest.mark.parametrize("channels", [1, 3])
def test_normalise_equals_monai_repeat_and_normalize(channels):
    mean, std = ((0.449,), (0.226,)) if channels == 1 else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for shape in SHAPES:
        x = _image(*shape, seed=3)
        before = x.clone()
        rep = RepeatChannel(channels)(x) if channels != 1 else x.clone()
        # MONAI writes the channels of its input in place: give it a copy
        want = NormalizeIntensity(subtrahend=list(mean), divisor=list(std), channel_wise=True)(rep.clone())  # type: ignore[arg-type]
        _same(Normalised(keys="image", mean=mean, std=std)({"image": MetaTensor(x)})["image"], want)
        assert torch.equal(x, before)  # a cached image is never written
        if channels == 3:  # an image that already has its channels is normalised per channel
            _same(Normalise(mean, std)(rep), want)
    with pytest.raises(ValueError, match="channels"):
        Normalise((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))(torch.zeros(2, 4, 4))


# ---------------------------------------------------------------- the whole deterministic chain

SPECS = [
    TransformSpec(image_size=64),
    TransformSpec(image_size=224),
    TransformSpec(image_size=96, aspect="pad"),
    TransformSpec(image_size=64, interpolation="bicubic", intensity="none"),
    TransformSpec.for_init(3, image_size=64, aspect="pad", interpolation="bilinear"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.image_size}-{s.aspect}-{s.interpolation}-{s.in_channels}")
def test_eval_chain_equals_the_monai_chain_it_replaced(spec):
    fast = Compose(build_load_transforms(spec)[1:] + build_post_transforms(spec))
    slow = Compose(list(_monai_resize(spec).transforms) + list(_monai_post(spec).transforms))
    for k, shape in enumerate(SHAPES):
        x = _image(*shape, seed=k)
        _same(fast({"image": MetaTensor(x.clone())})["image"], slow({"image": MetaTensor(x.clone())})["image"])


def test_eval_chain_is_the_fast_one():
    """After decoding: one resize step, the percentile scaling and one normalisation step, no MONAI Resized."""
    spec = TransformSpec.for_init(3, image_size=64)
    names = [type(t).__name__ for t in build_load_transforms(spec)[1:] + build_post_transforms(spec)]
    assert names == ["ResizeToInputd", "ScalePercentilesd", "Normalised"]

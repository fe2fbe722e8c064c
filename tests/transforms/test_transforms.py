"""cxr_cad.transforms: specs, CxrReader, eval/train chains, cached datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from PIL import Image

import cxr_cad.io as cio
from cxr_cad.errors import BundleError, ConfigError, Reason, RejectedFile
from cxr_cad.transforms import (
    GRAY_MEAN,
    GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    REJECTED_KEY,
    AugmentSpec,
    CxrReader,
    TransformSpec,
    build_eval_transforms,
    build_post_transforms,
    build_train_transforms,
    collate_samples,
    find_rejection,
    make_dataset,
)
from tests.factories.synth import synthetic_cxr


def _png(path, array01: np.ndarray) -> str:
    Image.fromarray(np.rint(array01 * 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture
def images(tmp_path):
    """Three 8-bit PNGs: 128x128, 96 rows x 64 columns (portrait), 64 rows x 96 columns."""
    rng = np.random.default_rng(0)
    return [
        _png(tmp_path / "sq.png", synthetic_cxr(rng, 128, opacity=True)),
        _png(tmp_path / "tall.png", synthetic_cxr(rng, 96)[:, 16:80]),
        _png(tmp_path / "wide.png", synthetic_cxr(rng, 96)[16:80, :]),
    ]


def _pixels(path) -> np.ndarray:
    return cio.read_image(path)[0]


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Slow obvious area downsampling by an integer factor."""
    h, w = a.shape
    return a.reshape(h // f, f, w // f, f).mean(axis=(1, 3))


# ---------------------------------------------------------------- specs


def test_gray_normalisation_is_mean_of_imagenet_values():
    assert GRAY_MEAN == (0.449,) and GRAY_STD == (0.226,)
    assert abs(GRAY_MEAN[0] - np.mean(IMAGENET_MEAN)) < 5e-4
    assert abs(GRAY_STD[0] - np.mean(IMAGENET_STD)) < 5e-4
    assert TransformSpec.for_init(3).mean == IMAGENET_MEAN
    assert TransformSpec() == TransformSpec.for_init(1)


def test_spec_round_trip_and_refusals():
    spec = TransformSpec(
        image_size=64,
        aspect="pad",
        in_channels=3,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        apply_voi=False,
        interpolation="bilinear",
    )
    d = spec.to_dict()
    assert d["version"] == 2 and isinstance(d["mean"], list)
    assert d["intensity"] == "percentile" and d["intensity_percentiles"] == [0.5, 99.5]
    assert TransformSpec.from_dict(d) == spec
    with pytest.raises(BundleError, match="unknown keys.*'gamma'"):
        TransformSpec.from_dict({**d, "gamma": 2.0})
    with pytest.raises(BundleError, match="newer"):
        TransformSpec.from_dict({**d, "version": 99})
    with pytest.raises(BundleError, match="version"):
        TransformSpec.from_dict({k: v for k, v in d.items() if k != "version"})
    with pytest.raises(BundleError, match="aspect"):
        TransformSpec.from_dict({**d, "aspect": "crop"})


def test_spec_lists_every_problem():
    with pytest.raises(ConfigError) as err:
        TransformSpec(image_size=8, aspect="crop", in_channels=1, mean=(0.1, 0.2), std=(0.0,))
    msg = str(err.value)
    for word in ("image_size", "aspect", "mean", "std"):
        assert word in msg
    with pytest.raises(ConfigError, match="rotate_deg"):
        AugmentSpec(rotate_deg=90)
    with pytest.raises(ConfigError) as err:
        AugmentSpec(brightness="0.1", contrast=-1, affine_prob=True)
    assert all(w in str(err.value) for w in ("brightness", "contrast", "affine_prob"))
    with pytest.raises(ConfigError, match="mean must be a list of numbers"):
        TransformSpec(mean=("a",))
    with pytest.raises(BundleError, match="std must be a list"):
        TransformSpec.from_dict({**TransformSpec().to_dict(), "std": 0.2})
    with pytest.raises(ConfigError, match="unknown augmentation"):
        AugmentSpec.from_dict({"rotation": 5})
    assert AugmentSpec.from_dict(AugmentSpec(hflip=True).to_dict()) == AugmentSpec(hflip=True)


# ---------------------------------------------------------------- eval chain


def test_eval_output_shape_dtype_range_and_values(images):
    spec = TransformSpec(image_size=64, intensity="none")  # the geometry alone (scaling: tests below)
    out = build_eval_transforms(spec)({"image": images[0], "label": 1, "row": 7})
    x = out["image"]
    assert type(x) is torch.Tensor and x.dtype == torch.float32 and tuple(x.shape) == (1, 64, 64)
    assert out["label"] == 1 and out["row"] == 7
    raw = x.numpy()[0] * GRAY_STD[0] + GRAY_MEAN[0]
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    expected = (_block_mean(_pixels(images[0]), 2) - GRAY_MEAN[0]) / GRAY_STD[0]  # 128 -> 64 area
    np.testing.assert_allclose(x.numpy()[0], expected, atol=1e-5)


def test_eval_chain_is_deterministic(images):
    spec = TransformSpec(image_size=48)
    a = build_eval_transforms(spec)({"image": images[1]})["image"]
    b = build_eval_transforms(spec)({"image": images[1]})["image"]
    c = build_eval_transforms(spec)({"image": images[1]})["image"]
    assert torch.equal(a, b) and torch.equal(b, c)


@pytest.mark.parametrize("which", [1, 2])
def test_pad_keeps_aspect_squash_does_not(images, which):
    path = images[which]  # 96x64 (tall) or 64x96 (wide)
    pix = _pixels(path)
    pad = build_eval_transforms(TransformSpec(image_size=48, aspect="pad", intensity="none"))({"image": path})["image"][
        0
    ].numpy()
    squash = build_eval_transforms(TransformSpec(image_size=48, aspect="squash", intensity="none"))({"image": path})[
        "image"
    ][0]
    assert pad.shape == (48, 48) and tuple(squash.shape) == (48, 48)
    black = (0 - GRAY_MEAN[0]) / GRAY_STD[0]
    content = (_block_mean(pix, 2) - GRAY_MEAN[0]) / GRAY_STD[0]  # longer side 96 -> 48: factor 2
    if pix.shape[0] > pix.shape[1]:  # tall: 8 black columns each side
        np.testing.assert_allclose(pad[:, :8], black, atol=1e-6)
        np.testing.assert_allclose(pad[:, -8:], black, atol=1e-6)
        np.testing.assert_allclose(pad[:, 8:40], content, atol=1e-5)
    else:  # wide: 8 black rows top and bottom
        np.testing.assert_allclose(pad[:8], black, atol=1e-6)
        np.testing.assert_allclose(pad[-8:], black, atol=1e-6)
        np.testing.assert_allclose(pad[8:40], content, atol=1e-5)
    assert (squash.numpy() > black + 1e-3).all()  # squash stretches content over the whole square


def test_three_channels_replicate_gray_with_imagenet_normalisation(images):
    spec = TransformSpec.for_init(3, image_size=32)
    x = build_eval_transforms(spec)({"image": images[0]})["image"]
    assert tuple(x.shape) == (3, 32, 32)
    raw = [x[c] * IMAGENET_STD[c] + IMAGENET_MEAN[c] for c in range(3)]
    torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(raw[0], raw[2], atol=1e-5, rtol=0)


def test_reader_rows_columns_order_and_dicom_polarity(tmp_path):
    from tests.factories.dicom import chest_phantom, invert_stored, write_dicom

    stored = chest_phantom((40, 64), bits_stored=12)
    m2 = write_dicom(tmp_path / "m2.dcm", stored, photometric="MONOCHROME2")
    m1 = write_dicom(tmp_path / "m1.dcm", invert_stored(stored, bits_stored=12), photometric="MONOCHROME1")
    reader = CxrReader()
    a, meta = reader.get_data(reader.read(str(m2)))
    b, _ = reader.get_data(reader.read(str(m1)))
    assert a.shape == (40, 64) and a.dtype == np.float32 and meta["original_channel_dim"] == "no_channel"
    np.testing.assert_allclose(a, b, atol=1e-6)  # MONOCHROME1 handled by cxr_cad.io
    spec = TransformSpec(image_size=32, aspect="pad")
    ya = build_eval_transforms(spec)({"image": str(m2)})["image"]
    yb = build_eval_transforms(spec)({"image": str(m1)})["image"]
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=0)


def test_rejected_file_keeps_reason_and_path(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image at all\n" * 20)
    with pytest.raises(RuntimeError) as err:
        build_eval_transforms(TransformSpec(image_size=32))({"image": str(bad)})
    rej = find_rejection(err.value)
    assert isinstance(rej, RejectedFile) and rej.reason == Reason.NOT_DICOM and rej.path.endswith("notes.txt")
    assert find_rejection(ValueError("x")) is None
    # an error re-raised from a DataLoader worker (traceback text only) is never parsed: datasets
    # return rejection records instead (test_dataset_returns_rejection_records_from_workers)
    text = RuntimeError(
        f"Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback:\n  ...\n"
        f"cxr_cad.errors.RejectedFile: {bad}: [NOT_DICOM] no DICM magic\n\nThe above ..."
    )
    assert find_rejection(text) is None


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("cached", [False, True])
def test_dataset_returns_rejection_records_from_workers(images, tmp_path, workers, cached):
    """A file that is not accepted comes back as a record (from a worker process too); the
    collate sets it apart and the good images keep their place and values."""
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image at all\n" * 20)
    missing = tmp_path / "gone.png"
    items = [{"image": images[0], "label": 0}, {"image": str(bad), "label": 1}, {"image": str(missing), "label": 1}]
    items.append({"image": images[1], "label": 1})
    spec = TransformSpec(image_size=32)
    ds = make_dataset(items, spec, cache_dir=tmp_path / "cache" if cached else None)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate_samples)
    (batch,) = list(loader)
    assert [(Path(r["path"]).name, r["reason"]) for r in batch[REJECTED_KEY]] == [
        ("notes.txt", "NOT_DICOM"),
        ("gone.png", "UNREADABLE"),
    ]
    assert all(r["detail"] for r in batch[REJECTED_KEY])
    assert batch["label"].tolist() == [0, 1] and batch["image"].shape == (2, 1, 32, 32)
    want = build_eval_transforms(spec)({"image": images[1]})["image"]
    assert torch.equal(batch["image"][1], want)
    if cached:  # a rejection is not cached: the fixed file is read next time
        Image.fromarray(np.arange(1600, dtype=np.uint8).reshape(40, 40)).save(bad, format="PNG")
        fresh = make_dataset(items[1:2], spec, cache_dir=tmp_path / "cache")[0]
        assert REJECTED_KEY not in fresh and fresh["image"].shape == (1, 32, 32)


def test_policy_apply_voi_comes_from_spec(tmp_path):
    from tests.factories.dicom import chest_phantom, write_dicom

    path = write_dicom(tmp_path / "w.dcm", chest_phantom(64, bits_stored=12), window=(1000.0, 600.0))
    on = build_eval_transforms(TransformSpec(image_size=32, apply_voi=True))({"image": str(path)})["image"]
    off = build_eval_transforms(TransformSpec(image_size=32, apply_voi=False), policy=cio.AcceptPolicy(apply_voi=True))(
        {"image": str(path)}
    )["image"]
    assert not torch.allclose(on, off)


# ---------------------------------------------------------------- augmentation


def test_augmentation_reproducible_per_seed_and_global_rng_untouched(images):
    spec, aug = TransformSpec(image_size=48), AugmentSpec(brightness=0.1, contrast=0.1)
    item = {"image": images[0]}

    def draws(seed):
        chain = build_train_transforms(spec, aug, seed=seed)
        return [chain(item)["image"] for _ in range(3)]

    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    a, b = draws(1), draws(1)
    assert np.array_equal(np.random.get_state()[1], np_state) and torch.equal(torch.get_rng_state(), torch_state)
    np.random.seed(123)
    torch.manual_seed(123)
    c, d = draws(1), draws(2)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)  # global seeding changes nothing
    assert not torch.equal(a[0], a[1])  # successive draws differ
    assert not any(torch.equal(x, y) for x, y in zip(a, d))  # another seed differs
    assert all(tuple(x.shape) == (1, 48, 48) and x.dtype == torch.float32 for x in a)
    eval_x = build_eval_transforms(spec)(item)["image"]
    assert not torch.equal(a[0], eval_x)


def test_no_augmentation_equals_eval_and_hflip_off_by_default(images):
    spec = TransformSpec(image_size=32)
    item = {"image": images[1]}
    off = build_train_transforms(spec, AugmentSpec.off(), seed=0)(item)["image"]
    assert torch.equal(off, build_eval_transforms(spec)(item)["image"])
    names = [type(t).__name__ for t in build_train_transforms(spec, AugmentSpec(), seed=0).transforms]
    assert "RandAffined" in names and "RandFlipd" not in names
    names = [type(t).__name__ for t in build_train_transforms(spec, AugmentSpec(hflip=True), seed=0).transforms]
    assert "RandFlipd" in names
    flips = build_train_transforms(
        spec, AugmentSpec.off().__class__(**{**AugmentSpec.off().to_dict(), "hflip": True}), seed=0
    )
    base = build_eval_transforms(spec)(item)["image"]
    outs = [flips(item)["image"] for _ in range(8)]
    assert any(torch.equal(o, base) for o in outs) and any(torch.equal(o, base.flip(-1)) for o in outs)


# ---------------------------------------------------------------- datasets and caching


@pytest.fixture
def count_reads(monkeypatch):
    calls = []
    real = cio.read_image

    def counting(path, **kwargs):
        calls.append(os.fspath(path))
        return real(path, **kwargs)

    monkeypatch.setattr(cio, "read_image", counting)
    return calls


def test_disk_cache_used_on_second_pass(images, tmp_path, count_reads):
    spec = TransformSpec(image_size=32)
    items = [{"image": p, "label": i % 2} for i, p in enumerate(images)]
    first = [x["image"] for x in make_dataset(items, spec, cache_dir=tmp_path / "cache")]
    assert len(count_reads) == 3
    again = [x["image"] for x in make_dataset(items, spec, cache_dir=tmp_path / "cache")]  # new dataset object
    assert len(count_reads) == 3
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(torch.equal(a, build_eval_transforms(spec)(it)["image"]) for a, it in zip(first, items))
    assert len(count_reads) == 6  # (the direct eval calls above)
    # train datasets share the decoded cache; augmentation is applied after it
    train = make_dataset(items, spec, augment=AugmentSpec(), cache_dir=tmp_path / "cache", seed=3)
    t1 = [x["image"] for x in train]
    assert len(count_reads) == 6 and not torch.equal(t1[0], first[0])
    # another image size gets its own cache; a rewritten file is read again
    make_dataset(items[:1], TransformSpec(image_size=48), cache_dir=tmp_path / "cache")[0]
    assert len(count_reads) == 7
    os.utime(images[0], ns=(1, 1))
    make_dataset(items, spec, cache_dir=tmp_path / "cache")[0]
    assert len(count_reads) == 8
    # only images are cached: other keys of an item are never stale
    relabelled = make_dataset([{**it, "label": 9, "fold": 2} for it in items], spec, cache_dir=tmp_path / "cache")
    assert [(x["label"], x["fold"]) for x in relabelled] == [(9, 2)] * 3 and len(count_reads) == 8


def test_memory_cache_and_loader_batches(images, count_reads):
    from monai.data import DataLoader

    spec = TransformSpec(image_size=32)
    items = [{"image": p, "label": i % 2} for i, p in enumerate(images)]
    ds = make_dataset(items, spec, memory_cache=True)
    assert len(count_reads) == 3
    batch = next(iter(DataLoader(ds, batch_size=3, num_workers=0)))
    assert tuple(batch["image"].shape) == (3, 1, 32, 32) and batch["label"].tolist() == [0, 1, 0]
    list(ds)
    assert len(count_reads) == 3


def test_dataset_augmentation_reproducible(images, tmp_path):
    spec = TransformSpec(image_size=32)
    items = [{"image": p, "label": 0} for p in images]
    a = [x["image"] for x in make_dataset(items, spec, augment=AugmentSpec(), seed=5)]
    b = [x["image"] for x in make_dataset(items, spec, augment=AugmentSpec(), seed=5)]
    c = [x["image"] for x in make_dataset(items, spec, augment=AugmentSpec(), seed=6)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


# ---------------------------------------------------------------- intensity standardisation


def test_version1_spec_keeps_the_old_behaviour(images):
    """A spec written before version 2 has no intensity key: no per-image scaling, as then."""
    new = TransformSpec(image_size=64)
    old = {k: v for k, v in new.to_dict().items() if not k.startswith("intensity")} | {"version": 1}
    legacy = TransformSpec.from_dict(old)
    assert legacy.intensity == "none" and new.intensity == "percentile"
    with pytest.raises(BundleError, match="version 1 cannot hold intensity"):
        TransformSpec.from_dict({**old, "intensity": "percentile"})
    raw = build_eval_transforms(legacy)({"image": images[0]})["image"]
    std = build_eval_transforms(new)({"image": images[0]})["image"]
    mean, sd = legacy.mean[0], legacy.std[0]
    # legacy: the reader's [0, 1] values only normalised; new: percentiles mapped to 0 and 1 first
    assert float((raw * sd + mean).min()) >= -1e-6 and float((std * sd + mean).min()) == pytest.approx(0.0, abs=1e-6)
    assert float((std * sd + mean).max()) == pytest.approx(1.0, abs=1e-6)
    assert not torch.allclose(raw, std)
    with pytest.raises(ConfigError, match="intensity_percentiles"):
        TransformSpec(intensity_percentiles=(99.0, 1.0))
    with pytest.raises(ConfigError, match="intensity must be"):
        TransformSpec(intensity="zscore")


def test_percentile_scaling_matches_monai_and_ignores_affine_changes():
    from monai.transforms import ScaleIntensityRangePercentiles

    from cxr_cad.transforms.intensity import ScalePercentiles

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.gamma(2.0, 0.1, size=(1, 48, 40)).astype(np.float32))
    ours = ScalePercentiles(0.5, 99.5)(x)
    ref = ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True)(x)
    assert torch.allclose(ours, torch.as_tensor(ref).float(), atol=1e-6)
    for a, b in ((16.0, 8.0), (1 / 255, 0.0), (3.7, -120.0)):  # 12-bit = 16*x+8, JPEG /255, rescale
        assert torch.allclose(ScalePercentiles(0.5, 99.5)(x * a + b), ours, atol=1e-5)
    assert torch.count_nonzero(ScalePercentiles(1, 99)(torch.full((1, 8, 8), 0.3))) == 0


def test_intensity_augmentations_are_seeded_and_in_range():
    aug = AugmentSpec(
        contrast=0.3,
        brightness=0.1,
        gamma=(0.7, 1.5),
        blur_sigma=(0.3, 1.0),
        lowres_zoom=(0.5, 1.0),
        noise_std=0.03,
        intensity_prob=1.0,
    )
    spec = TransformSpec(image_size=32)
    names = [type(t).__name__ for t in build_post_transforms(spec, aug)]
    for name in (
        "RandAdjustContrastd",
        "RandGaussianSmoothd",
        "RandSimulateLowResolutiond",
        "RandGaussianNoised",
        "ScalePercentilesd",
    ):
        assert name in names
    x = torch.rand(1, 32, 32)
    outs = []
    for _ in range(2):
        chain = Compose(build_post_transforms(spec, aug))
        chain.set_random_state(seed=3)
        outs.append(chain({"image": x.clone()})["image"])
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], (x - spec.mean[0]) / spec.std[0])
    assert AugmentSpec.from_dict(aug.to_dict()) == aug
    with pytest.raises(ConfigError, match="gamma"):
        AugmentSpec(gamma=(2.0, 0.5))

"""Predict's preprocessing is training's and evaluation's eval chain, tensor for tensor (issue 19).

Predict decodes with ``cxr_cad.io.read_image`` itself (to keep the DICOM identifiers) and runs
:func:`cxr_cad.inference.inputs.make_preprocess`; training and evaluation run
``build_eval_transforms`` / ``make_dataset``. The same file must give the same model input,
bit for bit, on every route, whatever the spec.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_cad import io as image_io
from cxr_cad.config import AcceptPolicy
from cxr_cad.inference.inputs import PredictDataset, PredictInput, make_preprocess
from cxr_cad.transforms import TransformSpec, build_eval_transforms, make_dataset
from tests.factories.dicom import chest_phantom, write_dicom
from tests.factories.synth import synthetic_cxr

SPECS = [
    TransformSpec(image_size=64),
    TransformSpec(image_size=48, aspect="pad"),
    TransformSpec(image_size=64, interpolation="bicubic", intensity="none"),
    TransformSpec.for_init(3, image_size=56, aspect="pad", interpolation="bilinear"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[str]:
    """DICOM (several syntaxes, both polarities, up to 300 px: a working-resolution reduction) and PNG."""
    where = tmp_path_factory.mktemp("inputs")
    out = []
    shapes = [(64, 64), (150, 224), (97, 131), (300, 260)]
    syntaxes = ["explicit", "rle", "jpegls", "j2k"]
    for k, (shape, ts) in enumerate(zip(shapes, syntaxes)):
        photometric = "MONOCHROME1" if k % 2 else "MONOCHROME2"
        out.append(
            str(
                write_dicom(
                    where / f"{ts}.dcm",
                    chest_phantom(shape, seed=k),
                    transfer_syntax=ts,
                    photometric=photometric,
                )
            )
        )
    rng = np.random.default_rng(0)
    png = where / "film.png"
    Image.fromarray(np.rint(synthetic_cxr(rng, 200)[:, 20:170] * 255).astype(np.uint8)).save(png)
    out.append(str(png))
    return out


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.image_size}-{s.aspect}-{s.interpolation}-{s.in_channels}")
def test_predict_preprocess_equals_the_eval_chain_and_the_eval_dataset(files, spec):
    pre = make_preprocess(spec)
    chain = build_eval_transforms(spec)
    dataset = make_dataset([{"image": f} for f in files], spec)
    predict_items = PredictDataset([PredictInput(i, f) for i, f in enumerate(files)], None, spec)
    for i, path in enumerate(files):
        pixels, _ = image_io.read_image(path, policy=AcceptPolicy(apply_voi=spec.apply_voi), reduce_to=spec.image_size)
        ours = pre(pixels)
        assert type(ours) is torch.Tensor and ours.shape == (spec.in_channels, spec.image_size, spec.image_size)
        assert torch.equal(ours, chain({"image": path})["image"]), path
        assert torch.equal(ours, dataset[i]["image"]), path
        assert torch.equal(ours, predict_items[i]["image"]), path


def test_preprocess_leaves_a_read_only_decode_alone(files):
    spec = TransformSpec(image_size=64)
    pixels, _ = image_io.read_image(files[1], reduce_to=64)
    frozen = pixels.copy()
    frozen.flags.writeable = False
    assert torch.equal(make_preprocess(spec)(frozen), make_preprocess(spec)(pixels))
    assert np.array_equal(frozen, pixels)

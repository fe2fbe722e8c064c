"""Same radiograph, same score: every container of one film scores within 0.01 with a trained model.

A model is trained briefly (seeded, 64 px) on the shipped Kermany sample, then one held-out film
is written as PNG, as a JPEG whose values do not reach 0 or 255, as 8-bit DICOM, as 12-bit DICOM
whose stored range (16 x value + 8) does not span the bit depth, with Rescale Slope/Intercept,
as MONOCHROME1, with a window covering the full range, and RLE / JPEG 2000 compressed. The
readers scale each differently (JPEG / 255, DICOM min-max or window); the transform chain's
per-image percentile scaling must make them agree. A spec without it (``intensity="none"``,
the behaviour before) does not: the network inputs then differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.factories.dicom import write_dicom

SAMPLE = Path(__file__).resolve().parents[2] / "cxr_cad" / "data" / "kermany_sample"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(bundle path, held-out sample rows): 3 epochs at 64 px on 80 sample images."""
    from cxr_cad.config import TrainConfig
    from cxr_cad.training.trainer import train_model

    labels = pd.read_csv(SAMPLE / "labels.csv")
    df = pd.DataFrame(
        {
            "path": [str(SAMPLE / f) for f in labels["file"]],
            "label": labels["label"],
            "patient_id": labels["patient_key"],
            "sop_instance_uid": [f"sha256:{i:04d}" for i in range(len(labels))],
            "sha256": [f"{i:064d}" for i in range(len(labels))],
        }
    )
    keys = sorted(df["patient_id"].unique())
    held = set(keys[::5])
    train, test = df[~df["patient_id"].isin(held)], df[df["patient_id"].isin(held)]
    cfg = TrainConfig.from_dict(
        {
            "model": {"init": "none", "image_size": 64},
            "epochs": 3,
            "batch_size": 16,
            "early_stopping": {"patience": 0},
            "runtime": {"workers": 0, "device": "cpu"},
        }
    )
    out = tmp_path_factory.mktemp("invariance")
    result = train_model(train.reset_index(drop=True), out / "run", cfg)
    return result.bundle_path, test.reset_index(drop=True)


def _variants(src: str, where: Path) -> dict[str, Path]:
    """One film in every container; ``x`` are its 8-bit gray values."""
    x = np.asarray(Image.open(src).convert("L"))
    v12 = x.astype(np.uint16) * 16 + 8  # 12-bit, range 8..4088 (not 0..4095)
    out: dict[str, Path] = {}
    Image.fromarray(x).save(out.setdefault("png", where / "film.png"))
    narrow = np.rint(30 + x.astype(np.float64) * 0.75).astype(np.uint8)  # 30..221: never 0 or 255
    assert narrow.min() > 0 and narrow.max() < 255
    Image.fromarray(narrow).save(out.setdefault("jpeg_narrow", where / "narrow.jpg"), quality=100)
    write_dicom(out.setdefault("dicom8", where / "d8.dcm"), x, bits_stored=8)
    write_dicom(out.setdefault("dicom12", where / "d12.dcm"), v12, bits_stored=12)
    write_dicom(out.setdefault("dicom12_implicit", where / "d12i.dcm"), v12, bits_stored=12, transfer_syntax="implicit")
    write_dicom(out.setdefault("rescale", where / "rescale.dcm"), v12, bits_stored=12, rescale=(0.5, -1024.0))
    write_dicom(
        out.setdefault("monochrome1", where / "mono1.dcm"), 4095 - v12, bits_stored=12, photometric="MONOCHROME1"
    )
    write_dicom(out.setdefault("windowed", where / "win.dcm"), v12, bits_stored=12, window=(2048.0, 4096.0))
    write_dicom(out.setdefault("rle", where / "rle.dcm"), v12, bits_stored=12, transfer_syntax="rle")
    write_dicom(out.setdefault("j2k", where / "j2k.dcm"), v12, bits_stored=12, transfer_syntax="j2k")
    return out


def test_every_container_of_a_film_scores_alike(trained, tmp_path):
    from cxr_cad.model import load_bundle
    from cxr_cad.training.loop import predict_probabilities

    bundle_path, test = trained
    bundle = load_bundle(bundle_path)
    assert bundle.transform_spec.intensity == "percentile"
    all_scores = []
    for i, src in enumerate(test["path"][:4]):
        where = tmp_path / str(i)
        where.mkdir()
        files = _variants(src, where)
        p = predict_probabilities(
            bundle, pd.DataFrame({"path": [str(f) for f in files.values()]}), device="cpu", precision="fp32"
        )
        scores = dict(zip(files, p))
        all_scores += list(p)
        spread = float(p.max() - p.min())
        assert spread <= 0.01, f"film {i}: scores differ by {spread:.4f} across containers: {scores}"
    # a trained model, not a constant: the films get different scores
    assert float(np.ptp(all_scores)) > 0.02


def test_without_percentile_scaling_the_inputs_differ(trained, tmp_path):
    """The test above can fail: with the old chain the network sees different inputs."""
    from cxr_cad.model import load_bundle
    from cxr_cad.transforms import TransformSpec, build_eval_transforms

    bundle_path, test = trained
    spec = load_bundle(bundle_path).transform_spec
    files = _variants(test["path"][0], tmp_path)
    legacy = TransformSpec.from_dict({**spec.to_dict(), "intensity": "none"})
    for s, small in ((spec, True), (legacy, False)):
        chain = build_eval_transforms(s)
        ref = chain({"image": str(files["png"])})["image"]
        diffs = {k: float((chain({"image": str(f)})["image"] - ref).abs().mean()) for k, f in files.items()}
        if small:
            assert max(diffs.values()) < 0.03, diffs
        else:
            assert diffs["jpeg_narrow"] > 0.1, diffs  # the chain before spec version 2


def _large_variants(src: str, where: Path, scale: int = 5) -> dict[str, Path]:
    """One film upscaled ``scale`` x (more than 4x the 64-px model input) in the containers whose
    codecs reduce it themselves (JPEG 2000 levels, JPEG DCT scaling) and in block-mean ones."""
    small = Image.open(src).convert("L")
    x = np.asarray(small.resize((small.width * scale, small.height * scale), Image.Resampling.BICUBIC))
    v12 = x.astype(np.uint16) * 16 + 8
    out: dict[str, Path] = {}
    Image.fromarray(x).save(out.setdefault("jpeg", where / "film.jpg"), quality=95)
    Image.fromarray(x).save(out.setdefault("png", where / "film.png"))
    write_dicom(out.setdefault("explicit12", where / "e.dcm"), v12, bits_stored=12)
    write_dicom(out.setdefault("j2k", where / "j.dcm"), v12, bits_stored=12, transfer_syntax="j2k")
    write_dicom(
        out.setdefault("j2k_mono1", where / "j1.dcm"),
        4095 - v12,
        bits_stored=12,
        transfer_syntax="j2k",
        photometric="MONOCHROME1",
    )
    write_dicom(
        out.setdefault("j2k_lossy", where / "jl.dcm"), v12, bits_stored=12, transfer_syntax="j2k_lossy", j2k_cr=5
    )
    write_dicom(
        out.setdefault("jpeg_baseline", where / "jb.dcm"),
        x,
        bits_stored=8,
        transfer_syntax="jpeg_baseline",
        jpeg_quality=95,
    )
    write_dicom(out.setdefault("jpegls", where / "ls.dcm"), v12, bits_stored=12, transfer_syntax="jpegls")
    return out


def test_large_films_score_alike_at_the_working_resolution(trained, tmp_path):
    """Films over 4x the model input are read at the working resolution (J2K by resolution levels,
    JPEG by DCT scaling, the rest by block means) and every container still scores within 0.01."""
    from cxr_cad.io.working import working_level, working_shape
    from cxr_cad.model import load_bundle
    from cxr_cad.training.loop import predict_probabilities
    from cxr_cad.transforms import CxrReader

    bundle_path, test = trained
    bundle = load_bundle(bundle_path)
    size = bundle.transform_spec.image_size
    reader = CxrReader(reduce_to=size)
    for i, src in enumerate(test["path"][:3]):
        where = tmp_path / str(i)
        where.mkdir()
        files = _large_variants(src, where)
        rows, columns = np.asarray(Image.open(files["png"])).shape
        level = working_level(rows, columns, size)
        assert level >= 2  # the film is over 4x the input: the working resolution shrinks it
        for name, f in files.items():  # every route reaches the same working size
            assert reader.get_data(reader.read(str(f)))[0].shape == working_shape(rows, columns, level), name
        p = predict_probabilities(
            bundle, pd.DataFrame({"path": [str(f) for f in files.values()]}), device="cpu", precision="fp32"
        )
        spread = float(p.max() - p.min())
        assert spread <= 0.01, f"film {i}: scores differ by {spread:.4f}: {dict(zip(files, p.round(4)))}"

"""Class 1 (and 7's pickle message): a corrupt, NaN, oversized or non-plain-data bundle is never used."""

from __future__ import annotations

import pytest
import torch

from cxr_cad.errors import BundleError, ConfigError, UsageError, WeightsError
from cxr_cad.model import init_model
from cxr_cad.model.bundle import load_bundle
from cxr_cad.model.integrity import DIGEST_KEY, weights_digest
from tests.hostile import inputs as H
from tests.hostile.runner import run_cli


def test_new_bundle_carries_the_digest_of_its_weights(bundle):
    payload = torch.load(bundle, map_location="cpu", weights_only=True)
    assert payload[DIGEST_KEY] == weights_digest(payload["state_dict"])
    assert load_bundle(bundle).model is not None


def test_flipped_exponent_bits_are_refused_by_the_zip_crc(bundle, tmp_path):
    bad = H.flip_head_exponents(bundle, tmp_path / "flipped.pt")
    assert bad.stat().st_size == bundle.stat().st_size
    with pytest.raises(BundleError, match="CRC-32"):
        load_bundle(bad)


def test_changed_weights_with_valid_zip_are_refused_by_the_digest(bundle, tmp_path):
    # rewritten by torch.save: every CRC is right, only the digest can tell
    def edit(p):
        p["state_dict"]["fc.weight"].mul_(-1.0)

    bad = H.rewrite_bundle(bundle, tmp_path / "edited.pt", edit)
    with pytest.raises(BundleError, match="do not match the digest"):
        load_bundle(bad)


def test_bundle_without_digest_still_loads(bundle, tmp_path):
    old = H.rewrite_bundle(bundle, tmp_path / "old.pt", lambda p: p.pop(DIGEST_KEY))
    b = load_bundle(old)
    ref = load_bundle(bundle)
    assert torch.equal(b.model.fc.weight, ref.model.fc.weight)


def test_nan_weights_are_refused_at_load(bundle, tmp_path):
    with pytest.raises(BundleError, match="'fc.weight' holds NaN"):
        load_bundle(H.nan_bundle(bundle, tmp_path / "nan.pt"))


def test_nan_weights_are_refused_as_init(bundle, tmp_path):
    nan_bundle = H.nan_bundle(bundle, tmp_path / "nan.pt")
    with pytest.raises(BundleError, match="NaN"):
        init_model(str(nan_bundle), 2)
    state = {k: v.clone() for k, v in load_bundle(bundle).model.state_dict().items()}
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("inf")
    torch.save(state, tmp_path / "weights.pth")
    with pytest.raises(WeightsError, match="'layer1.0.conv1.weight' holds NaN or infinite"):
        init_model(str(tmp_path / "weights.pth"), 2)


def test_init_typo_is_a_usage_error():
    with pytest.raises(ConfigError) as info:
        init_model("imagenett", 2)
    assert isinstance(info.value, UsageError)


@pytest.mark.parametrize("size", [8192, 100000, 16])
def test_absurd_image_size_is_refused_at_load(bundle, tmp_path, size):
    with pytest.raises(BundleError, match=r"image_size|>= 32"):
        load_bundle(H.huge_image_size_bundle(bundle, tmp_path / f"s{size}.pt", size))


def test_non_plain_data_pickle_gets_a_plain_refusal(tmp_path):
    with pytest.raises(BundleError) as info:
        load_bundle(H.pickle_bundle(tmp_path / "evil.pt"))
    msg = str(info.value)
    assert "not plain data" in msg and "never loads" in msg
    assert "weights_only" not in msg and "Re-running" not in msg


def test_predict_with_corrupt_bundles_exits_1_with_one_line(bundle, tmp_path):
    H.write_pngs(tmp_path / "imgs", n=2)
    for name, make in (
        ("flipped", lambda p: H.flip_head_exponents(bundle, p)),
        ("nan", lambda p: H.nan_bundle(bundle, p)),
    ):
        bad = make(tmp_path / f"{name}.pt")
        o = run_cli(
            ["predict", tmp_path / "imgs", "--model", bad, "--out", tmp_path / f"out_{name}", "--workers", "0"],
            timeout=600,
        )
        assert o.rc == 1, o.stderr
        assert not o.has_traceback
        assert len(o.stderr_lines) == 1 and str(bad) in o.last_line
        assert not (tmp_path / f"out_{name}" / "predictions.csv").exists()


def test_bundle_image_size_cap_is_the_training_cap():
    from cxr_cad.config import load_config
    from cxr_cad.errors import ConfigError
    from cxr_cad.model.integrity import MAX_IMAGE_SIZE, check_image_size

    assert load_config(None, {"model.image_size": MAX_IMAGE_SIZE}).model.image_size == MAX_IMAGE_SIZE
    with pytest.raises(ConfigError):
        load_config(None, {"model.image_size": MAX_IMAGE_SIZE + 1})
    check_image_size(MAX_IMAGE_SIZE, "b", BundleError)
    with pytest.raises(BundleError):
        check_image_size(MAX_IMAGE_SIZE + 1, "b", BundleError)

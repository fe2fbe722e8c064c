"""TransformSpec / AugmentSpec as pydantic models: the bundle format, old bundles, every problem at once."""

from __future__ import annotations

import json
import pickle

import pytest

from cxr_cad.config.transforms import TRANSFORM_SPEC_VERSION, AugmentSpec, TransformSpec
from cxr_cad.errors import BundleError, ConfigError

#: ``TransformSpec().to_dict()`` as bundles written before the pydantic models hold it.
V2_DEFAULT = {
    "version": 2,
    "image_size": 224,
    "aspect": "squash",
    "in_channels": 1,
    "mean": [0.449],
    "std": [0.226],
    "apply_voi": True,
    "interpolation": "area",
    "intensity": "percentile",
    "intensity_percentiles": [0.5, 99.5],
}


def test_bundle_layout_is_unchanged():
    assert TRANSFORM_SPEC_VERSION == 2
    d = TransformSpec().to_dict()
    assert d == V2_DEFAULT and list(d) == list(V2_DEFAULT)
    assert json.loads(json.dumps(d)) == d  # plain JSON types only
    assert TransformSpec.from_dict(V2_DEFAULT) == TransformSpec()


def test_old_bundle_specs_load():
    v1 = {k: v for k, v in V2_DEFAULT.items() if not k.startswith("intensity")} | {"version": 1, "image_size": 128}
    spec = TransformSpec.from_dict(v1)
    assert spec.intensity == "none" and spec.image_size == 128 and spec.mean == (0.449,)
    rgb = {**V2_DEFAULT, "in_channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert TransformSpec.from_dict(rgb) == TransformSpec.for_init(3)


def test_values_are_normalised_to_the_declared_types():
    spec = TransformSpec(mean=[0], std=[1], intensity_percentiles=[1, 99])
    assert spec.mean == (0.0,) and isinstance(spec.mean[0], float) and spec.intensity_percentiles == (1.0, 99.0)
    aug = AugmentSpec(rotate_deg=5, scale=[0.8, 1.2])
    assert aug.rotate_deg == 5.0 and aug.scale == (0.8, 1.2)


def test_construction_raises_config_error_with_every_problem():
    with pytest.raises(ConfigError) as err:
        TransformSpec(image_size=True, in_channels=2, interpolation="nearest", apply_voi="yes", extra=1)
    assert [p.split(":")[0] for p in err.value.problems] == [
        "image_size",
        "in_channels",
        "apply_voi",
        "interpolation",
        "extra",
    ]
    assert str(err.value).startswith("transform spec: 5 problems")
    with pytest.raises(BundleError, match="transform spec cannot be honoured: .*in_channels: must be 1 or 3"):
        TransformSpec.from_dict({**V2_DEFAULT, "in_channels": 2})


def test_augment_from_dict_lists_unknown_and_bad_values_together():
    with pytest.raises(ConfigError) as err:
        AugmentSpec.from_dict({"rotation": 5, "rotate_deg": 90, "hflip": "yes", "gamma": "2, 0.5"})
    problems = err.value.problems
    assert problems[0].startswith("unknown augmentation option(s) ['rotation']")
    assert [p.split(":")[0] for p in problems[1:]] == ["rotate_deg", "hflip", "gamma"]
    assert AugmentSpec.from_dict({"gamma": "0.7, 1.5"}).gamma == (0.7, 1.5)


def test_specs_are_frozen_hashable_picklable():
    spec = TransformSpec(image_size=64)
    assert hash(spec) == hash(TransformSpec(image_size=64)) and pickle.loads(pickle.dumps(spec)) == spec
    assert pickle.loads(pickle.dumps(AugmentSpec.off())) == AugmentSpec.off()
    with pytest.raises(ValueError, match="frozen"):
        spec.image_size = 32  # type: ignore[misc]
    assert spec.replace(image_size=32).image_size == 32 and spec.image_size == 64
    with pytest.raises(ConfigError, match="image_size"):
        spec.replace(image_size=8)

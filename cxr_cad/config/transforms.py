"""The declarative specs behind the transform chains (no MONAI import here).

:class:`TransformSpec` describes the *eval* chain exactly; it is stored in the model
bundle (``TransformSpec.to_dict``) and rebuilt with ``TransformSpec.from_dict``, which
refuses unknown keys and newer spec versions with :class:`~cxr_cad.errors.BundleError`.

:class:`AugmentSpec` describes the training-only random augmentation.

Intensity normalisation matching the initial weights
----------------------------------------------------
The torchvision ImageNet ResNet18 expects RGB input normalised per channel with
``mean = (0.485, 0.456, 0.406)`` and ``std = (0.229, 0.224, 0.225)``. For one input
channel, ``conv1`` is adapted by summing its weights over the colour axis (timm style,
see :mod:`cxr_cad.model.networks`): for a gray image ``t`` replicated to three channels,
``sum_c W_c * t == (sum_c W_c) * t``, so the 1-channel model sees exactly what the RGB
model sees on the replicated image. The replicated image must be normalised with *one*
mean/std, and the single affine map closest to the three per-channel maps is the one
with the mean of the means and the mean of the stds:

* ``mean = (0.485 + 0.456 + 0.406) / 3 = 0.449``
* ``std  = (0.229 + 0.224 + 0.225) / 3 = 0.226`` (to 3 decimals)

The per-channel means differ from 0.449 by at most 0.043 (about 0.19 std) and the stds
by at most 1.3 %, so the first-layer inputs keep the distribution the weights were
trained on. With 3 input channels the gray image is replicated and the ImageNet
per-channel values are used unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from cxr_cad.config.base import parse_model
from cxr_cad.config.types import (
    Channels,
    ConfigModel,
    Float,
    Int,
    Number,
    NumberPair,
    PercentilePair,
    StrictBool,
    problem,
)
from cxr_cad.errors import BundleError, ConfigError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
GRAY_MEAN: tuple[float] = (round(sum(IMAGENET_MEAN) / 3, 3),)  # 0.449
GRAY_STD: tuple[float] = (round(sum(IMAGENET_STD) / 3, 3),)  # 0.226

#: Version of the ``TransformSpec.to_dict`` layout. Bump when a key's meaning changes.
#: 2: ``intensity`` / ``intensity_percentiles`` (per-image percentile scaling). A version-1
#: spec has no such key and keeps the version-1 behaviour (``intensity="none"``).
TRANSFORM_SPEC_VERSION = 2
ASPECTS = ("squash", "pad")
INTENSITIES = ("percentile", "none")
#: Default (lower, upper) percentiles of the per-image intensity scaling.
DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)
INTERPOLATIONS = ("area", "bilinear", "bicubic")


def imagenet_normalization(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) matching ImageNet weights for 1 (summed conv1) or 3 input channels.

    Raises:
        ConfigError: ``in_channels`` is not 1 or 3.
    """
    if in_channels == 1:
        return GRAY_MEAN, GRAY_STD
    if in_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    raise ConfigError([f"in_channels must be 1 or 3, got {in_channels!r}"])


def _number_list(field: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise problem(f"{field} must be a list of numbers, one per input channel")
        return value

    return BeforeValidator(check)


class TransformSpec(ConfigModel):
    """The eval chain: read -> resize to ``image_size`` -> channels -> normalise.

    Attributes:
        image_size: side of the square model input in pixels (>= 32).
        aspect: ``"squash"`` resizes both sides to ``image_size`` (aspect ratio not kept);
            ``"pad"`` resizes the longer side to ``image_size`` and zero-pads (black, i.e.
            the darkest display value) the shorter side symmetrically to a square.
        in_channels: 1 (gray) or 3 (gray replicated to RGB).
        mean, std: per-channel normalisation applied to the [0, 1] image, one value per
            channel: ``(x - mean) / std``.
        apply_voi: apply (0028,3010) VOI LUT Sequence / (0028,1050) Window Center and
            (0028,1051) Window Width when present (``AcceptPolicy.apply_voi``).
        interpolation: resize mode (``"area"`` averages source pixels when shrinking,
            the right choice for radiographs many times larger than the model input).
        intensity: per-image intensity standardisation applied after resizing, before
            ``mean``/``std``: ``"percentile"`` maps the ``intensity_percentiles`` (lower,
            upper) percentiles of the resized image to 0 and 1 and clips (MONAI
            ``ScaleIntensityRangePercentiles``); this is invariant to any positive affine
            change of the pixel values, so a JPEG, an 8-bit and a 12-bit DICOM of the same
            film (with or without a linear window or rescale slope/intercept) give the same
            input. ``"none"``: the reader's [0, 1] values as they are (the behaviour of
            bundles written before spec version 2).
        intensity_percentiles: (lower, upper) percentiles in [0, 100], lower < upper.
    """

    error_source: ClassVar[str | None] = "transform spec"

    image_size: Int = Field(default=224, ge=32)
    aspect: Literal["squash", "pad"] = "squash"
    in_channels: Channels = 1
    mean: Annotated[tuple[Float, ...], _number_list("mean")] = GRAY_MEAN
    std: Annotated[tuple[Float, ...], _number_list("std")] = GRAY_STD
    apply_voi: StrictBool = True
    interpolation: Literal["area", "bilinear", "bicubic"] = "area"
    intensity: str = "percentile"
    intensity_percentiles: PercentilePair = DEFAULT_PERCENTILES

    @field_validator("mean", "std")
    @classmethod
    def _per_channel(cls, values: tuple[float, ...], info: ValidationInfo) -> tuple[float, ...]:
        name, channels = info.field_name, info.data.get("in_channels")
        if channels is not None and len(values) != channels:
            raise problem(f"needs one value per input channel ({channels})")
        if not all(math.isfinite(v) for v in values):
            raise problem("values must be finite")
        if name == "std" and any(v <= 0 for v in values):
            raise problem("values must be > 0")
        return values

    @field_validator("intensity")
    @classmethod
    def _intensity(cls, intensity: str) -> str:
        if intensity not in INTENSITIES:
            raise problem(f"intensity must be one of {', '.join(INTENSITIES)}")
        return intensity

    @classmethod
    def for_init(cls, in_channels: int = 1, **kwargs: Any) -> TransformSpec:
        """A spec whose normalisation matches ImageNet weights for ``in_channels``."""
        mean, std = imagenet_normalization(in_channels)
        return cls(in_channels=in_channels, mean=mean, std=std, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain-types dict (str/int/float/bool/list) for the bundle, with ``version``."""
        return {"version": TRANSFORM_SPEC_VERSION, **super().to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TransformSpec:
        """Rebuild a spec from :meth:`to_dict` output (any version up to TRANSFORM_SPEC_VERSION).

        Raises:
            BundleError: not a dict, missing/newer ``version``, an unknown key, or values
                this code cannot honour.
        """
        if not isinstance(d, Mapping):
            raise BundleError(f"transform spec must be a dict, got {type(d).__name__}")
        version = d.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise BundleError(f"transform spec has no integer 'version' (got {version!r})")
        if version > TRANSFORM_SPEC_VERSION:
            raise BundleError(
                f"transform spec version {version} is newer than this cxr_cad supports "
                f"({TRANSFORM_SPEC_VERSION}); upgrade cxr_cad to use this bundle"
            )
        unknown = sorted(set(d) - set(cls.model_fields) - {"version"})
        if unknown:
            raise BundleError(
                f"transform spec has unknown keys {unknown}; this cxr_cad cannot honour them "
                "(the bundle was written by a different version of cxr_cad)"
            )
        kwargs = {k: v for k, v in d.items() if k != "version"}
        if version < 2:
            if "intensity" in kwargs or "intensity_percentiles" in kwargs:
                raise BundleError(f"transform spec version {version} cannot hold intensity settings")
            kwargs["intensity"] = "none"  # what version-1 chains did: no per-image scaling
        try:
            return parse_model(cls, kwargs, source="transform spec")
        except ConfigError as exc:
            raise BundleError(f"transform spec cannot be honoured: {exc}") from exc


def _pair_within(name: str, lo: float, hi: float) -> Any:
    """A validator: ``name`` is (low, high) with ``lo <= low <= high <= hi``."""

    def check(cls: type, v: tuple[float, float]) -> tuple[float, float]:
        if not lo <= v[0] <= v[1] <= hi:
            raise problem(f"must be (low, high) with {lo:g} <= low <= high <= {hi:g}")
        return v

    return field_validator(name)(classmethod(check))


class AugmentSpec(ConfigModel):
    """Training-only random augmentation (applied to the resized [0, 1] image).

    Attributes:
        rotate_deg: rotation drawn uniformly from [-rotate_deg, +rotate_deg] degrees.
        translate_frac: shift drawn uniformly from +-translate_frac of the image side.
        scale: zoom factor drawn uniformly from [scale[0], scale[1]].
        affine_prob: probability that the affine (rotate/translate/scale) is applied.
        hflip: random horizontal flip with probability 0.5. Off by default: laterality
            matters on chest films (heart on the patient's left, situs, side markers).
        brightness: additive shift drawn from +-brightness (image units, [0, 1] scale);
            0 = off.
        contrast: multiplicative factor drawn from 1 +- contrast about the image mean; 0 = off.
        padding_mode: how pixels moved in from outside are filled (``"zeros"`` = black,
            ``"border"``, ``"reflection"``).
        intensity_prob: probability with which each intensity augmentation below (and
            ``brightness``/``contrast``) is applied to an image.
        gamma: (low, high) range of the gamma exponent (MONAI ``RandAdjustContrast``);
            (1, 1) = off.
        blur_sigma: (low, high) range of the Gaussian blur sigma in pixels; high 0 = off.
        lowres_zoom: (low, high) zoom of a simulated low-resolution acquisition (down- then
            up-sampled, MONAI ``RandSimulateLowResolution``); low 1 = off.
        noise_std: standard deviation of additive Gaussian noise (image units); 0 = off.
        jpeg_prob: probability that the image is stored as an 8-bit JPEG at a quality drawn
            from ``jpeg_quality`` and decoded again (last, after every other augmentation: lossy
            storage comes after acquisition); 0 = off. See cxr_cad/transforms/reencode.py.
        jpeg_quality: (low, high) JPEG quality range, integers in [1, 100].
        mixup_alpha: mixup of whole batches in the training step (cxr_cad/training/mixup.py):
            images and losses blended with weight ``lam ~ Beta(alpha, alpha)``; 0 = off.
    """

    error_source: ClassVar[str | None] = "augmentation spec"

    rotate_deg: Number = Field(default=10.0, ge=0.0, le=45.0)
    translate_frac: Number = Field(default=0.05, ge=0.0, le=0.5)
    scale: NumberPair = (0.9, 1.1)
    affine_prob: Number = Field(default=1.0, ge=0.0, le=1.0)
    hflip: StrictBool = False
    brightness: Number = Field(default=0.0, ge=0.0, le=0.5)
    contrast: Number = Field(default=0.0, ge=0.0, le=0.9)
    padding_mode: Literal["zeros", "border", "reflection"] = "zeros"
    intensity_prob: Number = Field(default=1.0, ge=0.0, le=1.0)
    gamma: NumberPair = (1.0, 1.0)
    blur_sigma: NumberPair = (0.0, 0.0)
    lowres_zoom: NumberPair = (1.0, 1.0)
    noise_std: Number = Field(default=0.0, ge=0.0, le=0.5)
    jpeg_prob: Number = Field(default=0.0, ge=0.0, le=1.0)
    jpeg_quality: NumberPair = (50.0, 95.0)
    mixup_alpha: Number = Field(default=0.0, ge=0.0, le=10.0)

    _gamma = _pair_within("gamma", 0.2, 5.0)
    _blur = _pair_within("blur_sigma", 0.0, 5.0)
    _lowres = _pair_within("lowres_zoom", 0.1, 1.0)
    _jpeg = _pair_within("jpeg_quality", 1.0, 100.0)

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise problem("must be (low, high) with 0 < low <= high")
        return v

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AugmentSpec:
        """Raises ConfigError listing unknown keys and bad values together."""
        known = set(cls.model_fields)
        unknown = sorted(set(d) - known)
        problems = [f"unknown augmentation option(s) {unknown}; known: {sorted(known)}"] if unknown else []
        try:
            spec = parse_model(cls, {k: v for k, v in d.items() if k in known}, source=cls.error_source)
        except ConfigError as exc:
            problems += exc.problems
        if problems:
            raise ConfigError(problems, source=cls.error_source)
        return spec

    @classmethod
    def off(cls) -> AugmentSpec:
        """No augmentation at all (every random transform disabled)."""
        return cls(
            rotate_deg=0.0,
            translate_frac=0.0,
            scale=(1.0, 1.0),
            affine_prob=0.0,
            hflip=False,
            brightness=0.0,
            contrast=0.0,
            gamma=(1.0, 1.0),
            blur_sigma=(0.0, 0.0),
            lowres_zoom=(1.0, 1.0),
            noise_std=0.0,
            jpeg_prob=0.0,
            mixup_alpha=0.0,
        )

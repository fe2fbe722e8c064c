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
see :mod:`cxr_cad.model.resnet`): for a gray image ``t`` replicated to three channels,
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
from dataclasses import asdict, dataclass, fields
from typing import Any

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


@dataclass(frozen=True)
class TransformSpec:
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

    image_size: int = 224
    aspect: str = "squash"
    in_channels: int = 1
    mean: tuple[float, ...] = GRAY_MEAN
    std: tuple[float, ...] = GRAY_STD
    apply_voi: bool = True
    interpolation: str = "area"
    intensity: str = "percentile"
    intensity_percentiles: tuple[float, float] = DEFAULT_PERCENTILES

    def __post_init__(self) -> None:
        problems = []
        try:
            object.__setattr__(self, "intensity_percentiles", tuple(float(v) for v in self.intensity_percentiles))
        except (TypeError, ValueError):
            problems.append(
                f"intensity_percentiles must be two numbers (lower, upper), got {self.intensity_percentiles!r}"
            )
            object.__setattr__(self, "intensity_percentiles", DEFAULT_PERCENTILES)
        lo_hi = self.intensity_percentiles
        if len(lo_hi) != 2 or not (0.0 <= lo_hi[0] < lo_hi[1] <= 100.0):
            problems.append(
                f"intensity_percentiles must be (lower, upper) with 0 <= lower < upper <= 100, got {lo_hi!r}"
            )
        if self.intensity not in INTENSITIES:
            problems.append(f"intensity must be one of {INTENSITIES}, got {self.intensity!r}")
        for name in ("mean", "std"):
            try:
                object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
            except (TypeError, ValueError):
                problems.append(f"{name} must be a list of numbers, got {getattr(self, name)!r}")
                object.__setattr__(self, name, ())
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 32:
            problems.append(f"image_size must be an integer >= 32, got {self.image_size!r}")
        if self.aspect not in ASPECTS:
            problems.append(f"aspect must be one of {ASPECTS}, got {self.aspect!r}")
        if self.in_channels not in (1, 3):
            problems.append(f"in_channels must be 1 or 3, got {self.in_channels!r}")
        for name in ("mean", "std"):
            vals = getattr(self, name)
            if not vals:
                continue
            if len(vals) != self.in_channels:
                problems.append(f"{name} needs one value per input channel ({self.in_channels}), got {vals!r}")
            if not all(math.isfinite(v) for v in vals):
                problems.append(f"{name} values must be finite, got {vals!r}")
        if any(s <= 0 for s in self.std):
            problems.append(f"std values must be > 0, got {self.std!r}")
        if not isinstance(self.apply_voi, bool):
            problems.append(f"apply_voi must be true or false, got {self.apply_voi!r}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if problems:
            raise ConfigError(problems, source="transform spec")

    @classmethod
    def for_init(cls, in_channels: int = 1, **kwargs: Any) -> TransformSpec:
        """A spec whose normalisation matches ImageNet weights for ``in_channels``."""
        mean, std = imagenet_normalization(in_channels)
        return cls(in_channels=in_channels, mean=mean, std=std, **kwargs)

    def to_dict(self) -> dict:
        """Plain-types dict (str/int/float/bool/list) for the bundle, with ``version``."""
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["intensity_percentiles"] = list(self.intensity_percentiles)
        return {"version": TRANSFORM_SPEC_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> TransformSpec:
        """Rebuild a spec from :meth:`to_dict` output.

        Raises:
            BundleError: not a dict, missing/newer ``version``, an unknown key, or values
                this code cannot honour.
        """
        if not isinstance(d, dict):
            raise BundleError(f"transform spec must be a dict, got {type(d).__name__}")
        version = d.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise BundleError(f"transform spec has no integer 'version' (got {version!r})")
        if version > TRANSFORM_SPEC_VERSION:
            raise BundleError(
                f"transform spec version {version} is newer than this cxr_cad supports "
                f"({TRANSFORM_SPEC_VERSION}); upgrade cxr_cad to use this bundle"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"version"})
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
            return cls(**kwargs)
        except ConfigError as exc:
            raise BundleError(f"transform spec cannot be honoured: {exc}") from exc


@dataclass(frozen=True)
class AugmentSpec:
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
    """

    rotate_deg: float = 10.0
    translate_frac: float = 0.05
    scale: tuple[float, float] = (0.9, 1.1)
    affine_prob: float = 1.0
    hflip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    padding_mode: str = "zeros"
    intensity_prob: float = 1.0
    gamma: tuple[float, float] = (1.0, 1.0)
    blur_sigma: tuple[float, float] = (0.0, 0.0)
    lowres_zoom: tuple[float, float] = (1.0, 1.0)
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("scale", "gamma", "blur_sigma", "lowres_zoom"):
            try:
                object.__setattr__(self, name, tuple(float(s) for s in getattr(self, name)))
            except (TypeError, ValueError):
                raise ConfigError(
                    [f"{name} must be a pair of numbers (low, high), got {getattr(self, name)!r}"],
                    source="augmentation spec",
                ) from None
        for name, (lo, hi) in {"gamma": (0.2, 5.0), "blur_sigma": (0.0, 5.0), "lowres_zoom": (0.1, 1.0)}.items():
            v = getattr(self, name)
            if len(v) != 2 or not lo <= v[0] <= v[1] <= hi:
                problems.append(f"{name} must be (low, high) with {lo:g} <= low <= high <= {hi:g}, got {v!r}")
        ranges = {
            "rotate_deg": (0.0, 45.0),
            "translate_frac": (0.0, 0.5),
            "affine_prob": (0.0, 1.0),
            "brightness": (0.0, 0.5),
            "contrast": (0.0, 0.9),
            "intensity_prob": (0.0, 1.0),
            "noise_std": (0.0, 0.5),
        }
        for name, (lo, hi) in ranges.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                problems.append(f"{name} must be a number within [{lo:g}, {hi:g}], got {v!r}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            problems.append(f"scale must be (low, high) with 0 < low <= high, got {self.scale!r}")
        if not isinstance(self.hflip, bool):
            problems.append(f"hflip must be true or false, got {self.hflip!r}")
        if self.padding_mode not in ("zeros", "border", "reflection"):
            problems.append(f"padding_mode must be zeros, border or reflection, got {self.padding_mode!r}")
        if problems:
            raise ConfigError(problems, source="augmentation spec")

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("scale", "gamma", "blur_sigma", "lowres_zoom"):
            d[name] = list(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AugmentSpec:
        """Raises ConfigError on unknown keys or bad values."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                [f"unknown augmentation option(s) {unknown}; known: {sorted(known)}"], source="augmentation spec"
            )
        return cls(**d)

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
        )

"""Per-image intensity transforms: percentile scaling and channel normalisation (array + dict twins).

``x -> clip((x - p_lo) / (p_hi - p_lo), 0, 1)`` with ``p_lo``/``p_hi`` the (lower, upper)
percentiles of the image (linear interpolation, as ``numpy.percentile``). For any positive
affine change of the pixel values ``a * x + b`` (``a > 0``) the percentiles move the same
way and the output is unchanged: 8-bit JPEG (``/255``), 12-bit DICOM (``16 * x + 8``,
min-max stretched), Rescale Slope/Intercept and a linear window covering the full range
all give the same result.

Hand-written rather than MONAI's ``ScaleIntensityRangePercentiles`` (same arithmetic,
``b_min=0, b_max=1, clip=True``) because that one computes the two percentiles with two
separate ``torch.quantile`` sorts plus MetaTensor bookkeeping: 30 ms per 224x224 image on
one core against 2 ms here, which made it the slowest step of a training sample. The
percentiles are ``numpy.percentile``'s, bit for bit (:func:`percentile_pair`), but read from
``torch.topk`` of the two tails when they are near the ends (the usual 0.5 / 99.5): a
selection of the few hundred extreme pixels instead of numpy's partition of all of them
(0.2 against 0.7 ms per 224x224 image, issue 19).

:class:`Normalise` is MONAI ``RepeatChannel`` + ``NormalizeIntensity(channel_wise=True)`` +
``EnsureType`` in one step on plain tensors (the same float32 operations, so the same bits):
the MONAI pair cost 0.2 ms per image, mostly MetaTensor bookkeeping on a 50k-pixel image.
tests/transforms/test_fast_chain.py checks both against the MONAI transforms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Transform

from cxr_cad.errors import ConfigError

#: :func:`percentile_pair` uses ``torch.topk`` while each tail holds at most this share of the pixels.
TOPK_SHARE = 8


def plain_float(img: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``img`` as a plain (not Meta) float32 tensor, sharing memory where it can."""
    t = torch.as_tensor(img)
    t = t.as_tensor() if hasattr(t, "as_tensor") else t  # a MetaTensor becomes a plain tensor
    return t.to(torch.float32)


def percentile_pair(values: torch.Tensor, lower: float, upper: float) -> tuple[float, float]:
    """``numpy.percentile(values, (lower, upper))`` (method "linear"), the same float64 values.

    numpy partitions the whole array; when both percentiles lie in the tails (each tail at most
    ``1 / TOPK_SHARE`` of the pixels) the order statistics come from ``torch.topk`` of the tails
    instead, and numpy's own index and interpolation arithmetic (``_QuantileMethods["linear"]``,
    ``_get_indexes``, ``_lerp``) is repeated on them. A NaN anywhere gives (nan, nan), as numpy.
    """
    flat = values.reshape(-1)
    n = flat.numel()
    q = np.true_divide(np.asarray((lower, upper), dtype=np.float64), 100)
    virtual = (n - 1) * q  # numpy's virtual index for method "linear"
    prev = np.floor(virtual)
    nxt = prev + 1
    prev[virtual >= n - 1], nxt[virtual >= n - 1] = n - 1, n - 1
    prev[virtual < 0], nxt[virtual < 0] = 0, 0
    k_low, k_high = int(nxt[0]) + 1, n - int(prev[1])
    if n == 0 or max(k_low, k_high) * TOPK_SHARE > n:
        lo, hi = np.percentile(flat.numpy(), (lower, upper))
        return float(lo), float(hi)
    low = torch.topk(flat, k_low, largest=False, sorted=True).values.numpy()
    high = torch.topk(flat, k_high, largest=True, sorted=True).values.numpy()  # descending
    if np.isnan(high[0]):  # torch ranks NaN above everything
        return float("nan"), float("nan")
    a = np.array([low[int(prev[0])], high[n - 1 - int(prev[1])]], dtype=values.numpy().dtype)
    b = np.array([low[int(nxt[0])], high[n - 1 - int(nxt[1])]], dtype=a.dtype)
    gamma = virtual - prev
    diff = b - a  # numpy's _lerp: the difference in the array's dtype, the rest in float64
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe", dtype=out.dtype)
    return float(out[0]), float(out[1])


class ScalePercentiles(Transform):
    """Map the ``lower``/``upper`` percentiles (in [0, 100]) of an image to 0/1 and clip.

    A constant image (equal percentiles) becomes all zeros. Returns a new plain float32 tensor.
    """

    def __init__(self, lower: float, upper: float):
        if not 0.0 <= lower < upper <= 100.0:
            raise ConfigError(f"intensity percentiles must satisfy 0 <= lower < upper <= 100, got ({lower}, {upper})")
        self.lower, self.upper = float(lower), float(upper)

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        t = plain_float(img)
        lo, hi = percentile_pair(t, self.lower, self.upper)
        span = hi - lo
        if not span > 0:
            return torch.zeros_like(t)
        return torch.sub(t, lo).div_(span).clamp_(0.0, 1.0)  # new tensor, then in place: same bits


class ScalePercentilesd(MapTransform):
    """Dictionary twin of :class:`ScalePercentiles`."""

    def __init__(self, keys, lower: float, upper: float, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScalePercentiles(lower, upper)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


class Normalise(Transform):
    """``(x[c] - mean[c]) / std[c]`` per channel; a one-channel image is first replicated to ``len(mean)``.

    Equals MONAI ``RepeatChannel(len(mean))`` (one-channel input) then
    ``NormalizeIntensity(mean, std, channel_wise=True)`` and ``EnsureType(float32)``; returns a
    new plain float32 tensor (the input, perhaps a cached image, is never written).

    Raises:
        ValueError: the image has neither 1 nor ``len(mean)`` channels.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std) or not mean:
            raise ConfigError(f"mean and std need one value per channel, got {tuple(mean)} and {tuple(std)}")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) if float(s) != 0.0 else 1.0 for s in std]  # as MONAI: a zero divisor is 1

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        t = plain_float(img)
        channels = len(self.mean)
        if t.shape[0] not in (1, channels):
            raise ValueError(f"img has {t.shape[0]} channels, but the normalisation has {channels} components.")
        out = torch.empty((channels, *t.shape[1:]), dtype=torch.float32)
        for c, (m, s) in enumerate(zip(self.mean, self.std)):
            torch.sub(t[c if t.shape[0] == channels else 0], m, out=out[c]).div_(s)
        return out


class Normalised(MapTransform):
    """Dictionary twin of :class:`Normalise`."""

    def __init__(self, keys, mean: Sequence[float], std: Sequence[float], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.normalise = Normalise(mean, std)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalise(d[key])
        return d

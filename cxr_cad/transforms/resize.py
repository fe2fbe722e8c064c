"""The model-input resize of the deterministic chain: ``(1, H, W)`` -> ``(1, S, S)`` float32 in [0, 1].

:class:`ResizeToInput` is, in one step, what the chain did with four MONAI transforms:
``Resize`` (``squash``: both sides to ``S``; ``pad``: the longer side to ``S``, then
``SpatialPad`` symmetric with black), a clamp to [0, 1] (bicubic may overshoot) and
``EnsureType(float32, track_meta=False)``. For ``"area"`` (the default interpolation) it calls
``torch.nn.functional.interpolate(mode="area")`` itself, with MONAI's own sizes and padding,
because MONAI's ``Resize`` spent 0.3 ms per 224-px image on MetaTensor bookkeeping (affine,
applied-operations list) that the chain drops right after (issue 19); an image already at
its output size is not interpolated (``area`` at scale 1 is the identity). ``"bilinear"`` /
``"bicubic"`` (with MONAI's anti-aliasing Gaussian when shrinking) go through MONAI's ``Resize``
and ``SpatialPad`` unchanged. tests/transforms/test_fast_chain.py checks every route against
the MONAI transforms, bit for bit.
"""

from __future__ import annotations

import torch
from monai.transforms import MapTransform, Resize, SpatialPad, Transform

from cxr_cad.transforms.intensity import plain_float


class ResizeToInput(Transform):
    """``(1, H, W)`` image -> ``(1, size, size)`` plain float32 tensor clamped to [0, 1] (module doc).

    Args:
        size: the model input side ``S``.
        aspect: ``"squash"`` or ``"pad"``.
        mode: ``"area"``, ``"bilinear"`` or ``"bicubic"``; anti-aliasing (MONAI's Gaussian)
            for every mode but ``"area"``, which averages source pixels itself.
    """

    def __init__(self, size: int, aspect: str = "squash", mode: str = "area"):
        if aspect not in ("squash", "pad"):
            raise ValueError(f"aspect must be 'squash' or 'pad', not {aspect!r}")
        self.size, self.aspect, self.mode = int(size), aspect, mode
        aa = mode != "area"
        if aspect == "squash":
            self._resize = Resize(spatial_size=(self.size, self.size), mode=mode, anti_aliasing=aa)
        else:
            self._resize = Resize(spatial_size=self.size, size_mode="longest", mode=mode, anti_aliasing=aa)
        self._pad = SpatialPad(spatial_size=(self.size, self.size), method="symmetric", mode="constant")

    def _target(self, rows: int, columns: int) -> tuple[int, int]:
        """The resized (rows, columns) before padding, with MONAI ``Resize``'s arithmetic."""
        if self.aspect == "squash":
            return self.size, self.size
        scale = self.size / max(rows, columns)
        return int(round(rows * scale)), int(round(columns * scale))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        t = plain_float(img)
        if self.mode != "area":
            out = plain_float(self._resize(t))
            if self.aspect == "pad":
                out = plain_float(self._pad(out))
            return out.clamp(0.0, 1.0)
        rows, columns = t.shape[-2:]
        target = self._target(rows, columns)
        if target == (rows, columns):
            out = t.clamp(0.0, 1.0)
        else:
            out = torch.nn.functional.interpolate(t.unsqueeze(0), size=target, mode="area")[0].clamp_(0.0, 1.0)
        if target != (self.size, self.size):  # pad: black bands, split as MONAI's symmetric SpatialPad
            dr, dc = self.size - target[0], self.size - target[1]
            out = torch.nn.functional.pad(out, (dc // 2, dc - dc // 2, dr // 2, dr - dr // 2))
        return out.contiguous()


class ResizeToInputd(MapTransform):
    """Dictionary twin of :class:`ResizeToInput`."""

    def __init__(self, keys, size: int, aspect: str = "squash", mode: str = "area", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.resizer = ResizeToInput(size, aspect, mode)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer(d[key])
        return d

"""Random lossy re-encoding of a training image: JPEG at a random quality, then decoded again.

Radiographs reach a model through archives, exports and publishers that store them as lossy
JPEG at a quality nobody records. The study's own splits differ exactly there: the Kermany
training split (kermany-224-train, kermany-dev) is stored as grayscale JPEG with quantisation
tables of about quality 92, the test split as RGB JPEG at the libjpeg default quality 75
(docs/generalisation.md#what-differs). Quality-75 compression removes fine texture, and fine
texture (sharpness) is one of the acquisition properties that carry the label in the training
split, so a network that learnt it calls the test split's normals pneumonia. Re-encoding
training images at random qualities makes the compression level uninformative.

Hand-written because neither MONAI nor the other core dependencies offer a JPEG
re-compression transform (torchvision's ``JPEG`` and albumentations' ``ImageCompression`` are
not dependencies of this project); the codec is Pillow's libjpeg-turbo, as for reading JPEGs.
The image is quantised to 8 bits for the codec (as every JPEG file is) and returned as float32
in [0, 1]; it keeps its shape ``(1, H, W)``. The randomness comes from the transform's own
``RandomState`` (MONAI ``RandomizableTransform``), never the global RNG.
"""

from __future__ import annotations

import io
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform
from PIL import Image

from cxr_cad.transforms.intensity import plain_float

__all__ = ["RandJpegReencode", "RandJpegReencoded", "jpeg_reencode"]


def jpeg_reencode(image: torch.Tensor, quality: int) -> torch.Tensor:
    """``image`` ``(1, H, W)`` in [0, 1], stored as an 8-bit grayscale JPEG at ``quality`` and
    decoded again (float32 in [0, 1], same shape and device)."""
    arr = image.detach().float().cpu().numpy()
    if arr.ndim != 3 or arr.shape[0] != 1:
        raise ValueError(f"jpeg_reencode expects a (1, H, W) image, got shape {tuple(arr.shape)}")
    u8 = np.clip(np.rint(arr[0] * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8, mode="L").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(out[None].copy()).to(image.device)


class RandJpegReencode(RandomizableTransform):
    """With probability ``prob``, :func:`jpeg_reencode` at a quality drawn uniformly from
    ``quality_range`` (integers, both ends included)."""

    def __init__(self, quality_range: tuple[int, int], prob: float = 0.5):
        RandomizableTransform.__init__(self, prob)
        lo, hi = int(quality_range[0]), int(quality_range[1])
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"quality_range must be (low, high) with 1 <= low <= high <= 100, got {quality_range}")
        self.quality_range = (lo, hi)
        self._quality = hi

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._quality = int(self.R.randint(self.quality_range[0], self.quality_range[1] + 1))

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        t = plain_float(img)
        if not self._do_transform:
            return t
        return jpeg_reencode(t, self._quality)


class RandJpegReencoded(RandomizableTransform, MapTransform):
    """Dictionary twin of :class:`RandJpegReencode` (one draw per item)."""

    def __init__(self, keys: Any, quality_range: tuple[int, int], prob: float = 0.5, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        self.reencode = RandJpegReencode(quality_range, prob=prob)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandJpegReencoded:
        super().set_random_state(seed, state)
        self.reencode.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.reencode.randomize()
        for key in self.key_iterator(d):
            d[key] = self.reencode(d[key], randomize=False)
        return d

"""What the readers accept: :class:`AcceptPolicy`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

#: Default limit on the declared decoded size of one image, bytes: (0028,0010) Rows x
#: (0028,0011) Columns x (0028,0008) Number of Frames x (0028,0002) Samples per Pixel x
#: bytes per sample. 128 MiB is 8192 x 8192 at 16 bits, about 3.5 times the largest
#: radiography detector (43 x 43 cm at 100 um: 4300 x 4300 x 2 bytes = 37 MB).
DEFAULT_MAX_IMAGE_BYTES = 128 << 20
#: Environment variable that sets the default limit (bytes), e.g. for mammography archives.
ENV_MAX_IMAGE_BYTES = "CXR_CAD_MAX_IMAGE_BYTES"


def default_max_image_bytes() -> int:
    """``$CXR_CAD_MAX_IMAGE_BYTES`` when set to a positive integer, else :data:`DEFAULT_MAX_IMAGE_BYTES`."""
    text = os.environ.get(ENV_MAX_IMAGE_BYTES, "").strip()
    try:
        value = int(text) if text else 0
    except ValueError:
        value = 0
    return value if value > 0 else DEFAULT_MAX_IMAGE_BYTES


#: (0018,5101) View Position values that mean a lateral projection.
LATERAL_VIEW_POSITIONS = frozenset({"LL", "RL", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL"})


@dataclass(frozen=True)
class AcceptPolicy:
    """Which DICOM files :func:`cxr_cad.io.read_header` / :func:`~cxr_cad.io.read_image` accept.

    Attributes:
        modalities: accepted values of (0008,0060) Modality (compared upper-case).
            The empty tuple accepts any modality (and files without Modality).
        reject_lateral: reject files whose (0018,5101) View Position is a lateral
            projection (``LL``, ``RL``, ``LAT``, ``LATERAL``) with ``LATERAL_VIEW``.
        apply_voi: apply the VOI LUT: (0028,3010) VOI LUT Sequence or
            (0028,1050) Window Center / (0028,1051) Window Width when present.
            PNG/JPEG files are display images already and are not affected.
        max_image_bytes: largest declared decoded size of one image, checked from the header
            before anything is decoded or inflated (decompression bombs); larger images are
            rejected with ``IMAGE_TOO_LARGE``. Default :data:`DEFAULT_MAX_IMAGE_BYTES`
            or ``$CXR_CAD_MAX_IMAGE_BYTES``.
    """

    modalities: tuple[str, ...] = ("CR", "DX", "DR")
    reject_lateral: bool = True
    apply_voi: bool = True
    max_image_bytes: int = field(default_factory=default_max_image_bytes)

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_image_bytes, bool)
            or not isinstance(self.max_image_bytes, int)
            or self.max_image_bytes < 1
        ):
            raise ValueError(f"AcceptPolicy.max_image_bytes must be a positive integer, not {self.max_image_bytes!r}")
        if isinstance(self.modalities, str):
            raise TypeError("AcceptPolicy.modalities must be a tuple of strings, e.g. ('CR', 'DX'), not a str")
        object.__setattr__(self, "modalities", tuple(str(m).strip().upper() for m in self.modalities))

    def accepts_modality(self, modality: str) -> bool:
        """True when ``modality`` ((0008,0060) Modality) is accepted by this policy."""
        return not self.modalities or modality.strip().upper() in self.modalities

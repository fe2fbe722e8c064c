"""What the readers accept: :class:`AcceptPolicy`."""
from __future__ import annotations

from dataclasses import dataclass

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
    """

    modalities: tuple[str, ...] = ("CR", "DX", "DR")
    reject_lateral: bool = True
    apply_voi: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.modalities, str):
            raise TypeError("AcceptPolicy.modalities must be a tuple of strings, e.g. ('CR', 'DX'), not a str")
        object.__setattr__(self, "modalities", tuple(str(m).strip().upper() for m in self.modalities))

    def accepts_modality(self, modality: str) -> bool:
        """True when ``modality`` ((0008,0060) Modality) is accepted by this policy."""
        return not self.modalities or modality.strip().upper() in self.modalities

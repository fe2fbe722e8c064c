"""What the readers accept: :class:`AcceptPolicy` (a typed option: the CLI, the API and workflow
files build it; :mod:`cxr_cad.io` applies it and re-exports it)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from cxr_cad.errors import ConfigError

__all__ = [
    "AcceptPolicy",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MODALITIES",
    "ENV_MAX_IMAGE_BYTES",
    "LATERAL_VIEW_POSITIONS",
    "default_max_image_bytes",
    "parse_modalities",
]

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


#: The modalities accepted by default: (0008,0060) values of chest radiographs.
DEFAULT_MODALITIES: tuple[str, ...] = ("CR", "DX", "DR")

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

    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    reject_lateral: bool = True
    apply_voi: bool = True
    max_image_bytes: int = field(default_factory=default_max_image_bytes)

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_image_bytes, bool)
            or not isinstance(self.max_image_bytes, int)
            or self.max_image_bytes < 1
        ):
            raise ConfigError(f"max_image_bytes must be a positive integer, not {self.max_image_bytes!r}")
        if isinstance(self.modalities, str):
            raise ConfigError("modalities must be a tuple of strings, e.g. ('CR', 'DX'), not a str")
        object.__setattr__(self, "modalities", tuple(str(m).strip().upper() for m in self.modalities))

    @classmethod
    def from_options(
        cls,
        *,
        modalities: str | Iterable[str] | None = None,
        allow_lateral: bool = False,
        apply_voi: bool = True,
        max_image_bytes: int | None = None,
    ) -> AcceptPolicy:
        """The policy a command line, a workflow file or an API call describes.

        Args:
            modalities: accepted (0008,0060) values as a list or a comma-separated text
                (``"CR,DX,DR"``); ``"any"`` (or ``["any"]``) accepts every modality; None = the
                default :data:`DEFAULT_MODALITIES`.
            allow_lateral: accept lateral views (the policy's ``reject_lateral`` is the opposite).
            apply_voi: apply the VOI LUT / window.
            max_image_bytes: None = the default limit.

        Raises:
            ConfigError: an empty modality list.
        """
        mods = parse_modalities(modalities)
        kwargs: dict = {"modalities": mods, "reject_lateral": not allow_lateral, "apply_voi": bool(apply_voi)}
        if max_image_bytes is not None:
            kwargs["max_image_bytes"] = max_image_bytes
        return cls(**kwargs)

    def record(self) -> dict:
        """The policy as ingest.json records it (``modalities`` ``"any"`` for the empty tuple)."""
        return {
            "modalities": list(self.modalities) or "any",
            "reject_lateral": self.reject_lateral,
            "apply_voi": self.apply_voi,
        }

    def accepts_modality(self, modality: str) -> bool:
        """True when ``modality`` ((0008,0060) Modality) is accepted by this policy."""
        return not self.modalities or modality.strip().upper() in self.modalities


def parse_modalities(modalities: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"CR,DX,DR"`` or ``["cr", "dx"]`` -> ``("CR", "DX", ...)``; ``"any"`` -> ``()`` (every
    modality); None -> :data:`DEFAULT_MODALITIES`. Raises ConfigError for an empty list."""
    if modalities is None:
        return DEFAULT_MODALITIES
    items = modalities.split(",") if isinstance(modalities, str) else [str(m) for m in modalities]
    mods = tuple(m.strip().upper() for m in items if m.strip())
    if not mods:
        raise ConfigError("modalities is empty; give e.g. CR,DX,DR or 'any'")
    return () if mods == ("ANY",) else mods

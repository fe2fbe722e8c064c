"""What the readers accept: re-exported from :mod:`cxr_cad.config.accept` (typed options live in
the config layer), so ``from cxr_cad.io.policy import AcceptPolicy`` keeps working."""

from __future__ import annotations

from cxr_cad.config.accept import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MODALITIES,
    ENV_MAX_IMAGE_BYTES,
    LATERAL_VIEW_POSITIONS,
    AcceptPolicy,
    default_max_image_bytes,
    parse_modalities,
)

__all__ = [
    "AcceptPolicy",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MODALITIES",
    "ENV_MAX_IMAGE_BYTES",
    "LATERAL_VIEW_POSITIONS",
    "default_max_image_bytes",
    "parse_modalities",
]

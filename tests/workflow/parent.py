"""A parent model bundle for the retrain workflow's tests: a small, randomly initialised
two-class bundle at a chosen input size (what an earlier ``cxr-cad train`` would leave)."""

from __future__ import annotations

from pathlib import Path

from tests.factories.synth import CLASSES


def write_parent_bundle(path: Path, *, image_size: int, seed: int = 0) -> Path:
    """``path`` holding a resnet18 bundle for ``CLASSES`` trained (nominally) at ``image_size`` px."""
    import torch

    from cxr_cad.config.transforms import TransformSpec
    from cxr_cad.model import build_resnet18, save_bundle

    torch.manual_seed(seed)
    return save_bundle(
        path,
        build_resnet18(len(CLASSES), 1),
        classes=list(CLASSES),
        positive_class=CLASSES[1],
        transform_spec=TransformSpec(image_size=image_size),
        threshold=0.5,
        threshold_method="fixed",
        manifest_hash="parent",
    )

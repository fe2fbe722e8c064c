"""Every export folder carries the full model card (issue 23, defect 11): the one beside the
bundle, else one rendered from the bundle itself; the MONAI bundle's docs/README.md included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from cxr_cad.cli import main  # noqa: E402
from cxr_cad.export.names import FORMATS  # noqa: E402

SECTIONS = (
    "## Intended use",
    "## Out-of-scope use",
    "## Training data",
    "## Architecture and initialisation",
    "## Preprocessing",
    "## Validation metrics",
    "## Threshold provenance",
    "## Known limitations",
    "## Software versions",
)
CARD_IN = {"monai-bundle": "docs/README.md", "onnx": "model_card.md", "openvino": "model_card.md"}


@pytest.fixture(scope="module")
def bare_bundle(tmp_path_factory) -> Path:
    """A bundle alone in its folder: no model_card.md, no run files beside it."""
    from cxr_cad.model import build_resnet18, save_bundle
    from cxr_cad.transforms import TransformSpec

    root = tmp_path_factory.mktemp("bare")
    torch.manual_seed(0)
    save_bundle(
        root / "model.pt",
        build_resnet18(2, 1),
        classes=["NORMAL", "PNEUMONIA"],
        positive_class="PNEUMONIA",
        transform_spec=TransformSpec(image_size=64),
        threshold=0.37,
        threshold_method="fixed",
        manifest_hash="1" * 64,
    )
    assert sorted(p.name for p in root.iterdir()) == ["model.pt"]
    return root / "model.pt"


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_without_a_card_beside_carries_the_full_card(bare_bundle, fmt, tmp_path):
    out = tmp_path / fmt
    assert main(["-q", "export", "--model", str(bare_bundle), "--format", fmt, "--out", str(out)]) == 0
    card = (out / CARD_IN.get(fmt, "model_card.md")).read_text(encoding="utf-8")
    assert card.startswith("# Model card: NORMAL vs PNEUMONIA chest radiograph classifier")
    assert [s for s in SECTIONS if s not in card] == []
    assert "Generated from the bundle `model.pt` when it was exported" in card
    assert "0.370000 on the PNEUMONIA probability" in card and "1" * 64 in card
    record = json.loads((out / "export.json").read_text())
    assert CARD_IN.get(fmt, "model_card.md") in json.dumps(record)
    assert sorted(p.name for p in bare_bundle.parent.iterdir()) == ["model.pt"]  # the source is left alone


def test_a_card_beside_the_bundle_is_copied_as_is(bare_bundle, tmp_path):
    from cxr_cad.modelcard import write_card_for_bundle

    bundle = tmp_path / "model.pt"
    shutil.copy(bare_bundle, bundle)
    written = write_card_for_bundle(bundle).read_text(encoding="utf-8")
    for fmt in ("monai-bundle", "torchscript"):
        out = tmp_path / fmt
        assert main(["-q", "export", "--model", str(bundle), "--format", fmt, "--out", str(out)]) == 0
        assert (out / CARD_IN.get(fmt, "model_card.md")).read_text(encoding="utf-8") == written
    assert not (tmp_path / "monai-bundle" / "model_card.md").exists()  # the MONAI layout keeps it in docs/

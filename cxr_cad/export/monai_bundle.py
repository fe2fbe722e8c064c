"""A MONAI bundle (MONAI Bundle Specification layout) of a cxr_cad model.

Layout written by :func:`write_monai_bundle`::

    OUT/configs/metadata.json     MONAI metadata (schema fields, inputs and outputs described)
    OUT/configs/inference.json    ConfigParser config: cxr_cad's own eval chain by ``_target_``
    OUT/models/model.pt           the state dict (MONAI CheckpointLoader format)
    OUT/models/model.ts           TorchScript with the metadata (MONAI save_net_with_metadata)
    OUT/docs/README.md            the model card
    OUT/docs/metadata_schema.json schema for offline ``verify_metadata`` (see below)
    OUT/export.json               the cxr_cad export record

Score a folder with MONAI alone (plus cxr_cad installed, whose transforms the config names)::

    cd OUT && python -m monai.bundle run --config_file configs/inference.json --dataset_dir /images

which writes ``eval/predictions.csv`` (MONAI ``ClassificationSaver``: file, then one
softmax probability per class in ``channel_def`` order). Unlike ``cxr-cad predict`` it has
no rejection bookkeeping: a file that cannot be read stops the run with its name and reason.

``verify_metadata`` downloads the schema named in ``metadata.json`` unless ``--filepath``
points at an existing file; offline, pass ``--filepath docs/metadata_schema.json``, a
schema written from the mandatory keys of MONAI's specification (MONAI's own schema file
cannot be fetched on an offline machine).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cxr_cad.core.provenance import __version__
from cxr_cad.errors import OutputError
from cxr_cad.export.common import require
from cxr_cad.export.torchscript import export_torchscript
from cxr_cad.model.registry import DEFAULT_ARCH
from cxr_cad.modelcard import card_for_export

if TYPE_CHECKING:
    from cxr_cad.model.bundle import Bundle

log = logging.getLogger(__name__)

#: MONAI's published metadata schema (what verify_metadata downloads when online).
MONAI_SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
LOCAL_SCHEMA = Path(__file__).with_name("monai_metadata_schema.json")
BATCH_SIZE = 16


def _arch(bundle: Bundle) -> str:
    """The registered network of ``bundle`` (``arch.name``; bundles always record it)."""
    return str(bundle.arch or DEFAULT_ARCH)


def metadata(bundle: Bundle, card_text: str | None = None) -> dict:
    """``configs/metadata.json`` content for ``bundle``."""
    import monai
    import numpy as np

    spec = bundle.transform_spec
    channels = {str(i): c for i, c in enumerate(bundle.classes)}
    val = (bundle.meta.get("extra") or {}).get("training", {}) if isinstance(bundle.meta.get("extra"), dict) else {}
    return {
        "schema": MONAI_SCHEMA_URL,
        "version": f"{__version__}+{bundle.sha256[:12]}",
        "changelog": {f"{__version__}+{bundle.sha256[:12]}": f"exported from cxr_cad bundle sha256 {bundle.sha256}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"cxr_cad": __version__},
        "optional_packages_version": {},
        "task": f"Chest radiograph classification: {' vs '.join(bundle.classes)}",
        "description": (
            f"{_arch(bundle)} ({bundle.meta.get('arch', {}).get('impl', 'monai')}) trained by cxr_cad; outputs "
            f"softmax probabilities of {bundle.classes}; the positive class {bundle.positive_class!r} is "
            f"called at probability >= {bundle.threshold:.6g}. See docs/README.md (model card)."
        ),
        "authors": "cxr_cad user (trained with cxr_cad)",
        "copyright": "See docs/README.md",
        "intended_use": "Research and decision support only; not a medical device. See docs/README.md.",
        "data_type": "dicom, png, jpeg",
        "image_classes": f"{spec.in_channels} channel(s), {spec.image_size}x{spec.image_size}, cxr_cad eval chain "
        "(read with VOI/photometric handling, resize, intensity standardisation, normalisation)",
        "pred_classes": f"{len(bundle.classes)} softmax probabilities: {channels}",
        "eval_metrics": {"val_auc": val.get("val_auc")} if val.get("val_auc") is not None else {},
        "cxr_cad": {
            "positive_class": bundle.positive_class,
            "threshold": bundle.threshold,
            "threshold_selection": bundle.threshold_selection,
            "transform_spec": spec.to_dict(),
            "source_bundle_sha256": bundle.sha256,
            "manifest_hash": bundle.manifest_hash,
        },
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "CR/DX",
                    "num_channels": spec.in_channels,
                    "spatial_shape": [spec.image_size, spec.image_size],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {str(i): "radiograph" for i in range(spec.in_channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": len(bundle.classes),
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": channels,
                }
            },
        },
    }


def inference_config(bundle: Bundle) -> dict:
    """``configs/inference.json``: MONAI components + cxr_cad's eval chain, no copy of it."""
    spec = bundle.transform_spec
    return {
        "imports": ["$from cxr_cad.manifest.walk import iter_files"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "dataset_dir": "/path/to/images",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$[{'image': str(p), 'path': str(p)} for p in iter_files([@dataset_dir])]",
        "transform_spec": {"_target_": "cxr_cad.transforms.TransformSpec.from_dict", "d": spec.to_dict()},
        "preprocessing": {"_target_": "cxr_cad.transforms.build_eval_transforms", "spec": "@transform_spec"},
        "network_def": {
            "_target_": "cxr_cad.model.build_network",
            "num_classes": len(bundle.classes),
            "in_channels": spec.in_channels,
            "arch": _arch(bundle),
        },
        "network": "$@network_def.to(@device)",
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": BATCH_SIZE,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "@ckpt_path",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            },
            {
                "_target_": "ClassificationSaver",
                "output_dir": "@output_dir",
                "filename": "predictions.csv",
                "batch_transform": "$lambda batch: [{'filename_or_obj': b['path']} for b in batch]",
                "output_transform": "$lambda output: [o['pred'] for o in output]",
            },
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "initialize": ["$@network.eval()"],
        "run": ["$@evaluator.run()"],
    }


def verify(out: Path) -> None:
    """Run MONAI's ``verify_metadata`` against the offline schema (raises on a mismatch)."""
    require("jsonschema", "export")
    from monai.bundle import verify_metadata

    verify_metadata(
        meta_file=str(out / "configs" / "metadata.json"), filepath=str(out / "docs" / "metadata_schema.json")
    )


def write_monai_bundle(bundle: Bundle, out: Path, *, card_text: str | None = None) -> dict[str, str]:
    """Write the bundle layout into ``out``; returns {role: relative path} of the files written.

    ``docs/README.md`` is the model card: ``card_text``, else
    :func:`cxr_cad.modelcard.card_for_export` of the bundle (beside it, or rendered from it)."""
    try:
        for sub in ("configs", "models", "docs"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        meta = metadata(bundle)
        (out / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (out / "configs" / "inference.json").write_text(
            json.dumps(inference_config(bundle), indent=2) + "\n", encoding="utf-8"
        )
        state = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
        torch.save(state, out / "models" / "model.pt")
        shutil.copyfile(LOCAL_SCHEMA, out / "docs" / "metadata_schema.json")
        if card_text is None:
            card_text, _ = card_for_export(bundle.path, bundle.meta)
        (out / "docs" / "README.md").write_text(card_text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write the MONAI bundle into {out}: {exc}") from exc
    spec = bundle.transform_spec
    export_torchscript(
        bundle.model, out / "models" / "model.ts", in_channels=spec.in_channels, image_size=spec.image_size, meta=meta
    )
    verify(out)
    return {
        "model": "models/model.pt",
        "torchscript": "models/model.ts",
        "metadata": "configs/metadata.json",
        "inference": "configs/inference.json",
        "card": "docs/README.md",
    }

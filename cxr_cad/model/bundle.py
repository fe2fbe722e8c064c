"""The model bundle: one file, plain types only, loadable with ``torch.load(weights_only=True)``.

Layout (format ``cxr_cad.model_bundle``, version :data:`BUNDLE_VERSION`) is documented in
docs/model.md. ``load_bundle`` refuses, with a message that says why, any file it cannot
honour: not a file, not a torch file / corrupt / truncated, not a cxr_cad bundle, a newer
format version, unknown transform keys, a state dict that does not fit the declared
architecture, a positive class that is not one of the classes.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_cad.errors import BundleError, OutputError
from cxr_cad.model import integrity
from cxr_cad.model.resnet import ARCH, ARCH_IMPL, ProbabilityAverage, build_model, unwrap_model
from cxr_cad.model.weights import file_sha256, torch_load_file
from cxr_cad.transforms.spec import TransformSpec

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "cxr_cad.model_bundle"
#: 2: transform spec version 2 (per-image intensity scaling), ``arch.members`` (ensemble of
#: that many networks, probabilities averaged) and ``arch.tta`` (``["hflip"]``: flipped input
#: averaged in). Version-1 bundles load unchanged: one network, no TTA, spec version 1.
BUNDLE_VERSION = 2
REQUIRED_KEYS = (
    "format",
    "format_version",
    "arch",
    "classes",
    "positive_class",
    "input",
    "transform_spec",
    "threshold",
    "threshold_selection",
    "manifest_hash",
    "versions",
    "created",
    "state_dict",
)


@dataclass
class Bundle:
    """A loaded bundle. ``model`` is in eval mode on ``map_location``."""

    model: nn.Module
    classes: list[str]
    positive_class: str
    positive_index: int
    transform_spec: TransformSpec
    threshold: float
    threshold_method: str
    manifest_hash: str
    versions: dict
    created: str
    sha256: str
    meta: dict = field(repr=False)  # the whole file minus the state dict
    path: str = ""
    threshold_selection: dict = field(default_factory=dict)
    parent_bundle_sha256: str | None = None
    train_config: dict | None = None

    def positive_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax probability of the positive class, shape ``(N,)``, from ``(N, K)`` logits."""
        return torch.softmax(logits.float(), dim=1)[:, self.positive_index]


def package_versions() -> dict[str, str]:
    """Versions of cxr_cad, torch, monai, pydicom, numpy (recorded in bundles and runs)."""
    import monai
    import pydicom

    import cxr_cad

    return {
        "cxr_cad": cxr_cad.__version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "pydicom": pydicom.__version__,
        "numpy": np.__version__,
    }


def to_plain(obj: Any, where: str = "bundle") -> Any:
    """Convert to weights_only-safe plain types (dict[str]/list/str/int/float/bool/None/Tensor).

    numpy scalars/arrays, tuples and Paths are converted; anything else raises BundleError
    naming the offending key.
    """
    if obj is None:
        return obj
    for plain in (bool, int, float, str):  # also turns subclasses (TorchVersion, IntEnum) into the base type
        if isinstance(obj, plain):
            return plain(obj.value) if plain is str and hasattr(obj, "value") else plain(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise BundleError(f"{where}: key {k!r} is not a string; bundles hold plain types only")
            out[k] = to_plain(v, f"{where}.{k}")
        return out
    raise BundleError(
        f"{where}: value of type {type(obj).__name__} cannot be stored in a bundle "
        "(plain dict/list/str/int/float/bool/None/tensor only)"
    )


def _threshold_selection(method: str | dict, params: dict | None, chosen_on: Any) -> dict:
    if isinstance(method, dict):
        sel = dict(method)
        if not isinstance(sel.get("method"), str):
            raise BundleError("threshold_method dict needs a 'method' string")
    else:
        sel = {"method": str(method)}
    if params:
        sel["params"] = params
    if chosen_on is not None:
        sel["chosen_on"] = chosen_on
    sel.setdefault("params", {})
    sel.setdefault("chosen_on", None)
    return sel


def save_bundle(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    classes: list[str],
    positive_class: str,
    transform_spec: TransformSpec,
    threshold: float,
    threshold_method: str | dict,
    manifest_hash: str,
    extra: dict | None = None,
    threshold_params: dict | None = None,
    threshold_chosen_on: Any = None,
    parent_bundle_sha256: str | None = None,
    train_config: dict | None = None,
    init_record: dict | None = None,
) -> Path:
    """Write ``model`` and everything needed to use it as one bundle file (atomic).

    Args:
        classes: class names in logit order; ``positive_class`` must be one of them.
        transform_spec: the exact eval chain.
        threshold: decision threshold on the positive-class probability, in [0, 1].
        threshold_method: how it was chosen (``"youden"``, ``"sensitivity"``, ``"fixed"``, ...)
            or a dict ``{"method", "params", "chosen_on"}``.
        threshold_params: parameters of the method (e.g. ``{"target": 0.9}``).
        threshold_chosen_on: the validation set the threshold was chosen on (e.g.
            ``{"manifest_hash": ..., "n": 120, "description": "inner validation split"}``).
        manifest_hash: hash of the training manifest (``manifest.manifest_hash``).
        parent_bundle_sha256: sha256 of the bundle this model was initialised from.
        train_config: the resolved training config (plain types).
        init_record: the ``init_model`` record.
        extra: any further plain-type metadata (stored under ``"extra"``).

    Returns the path written. Raises BundleError (values that cannot be stored or do not
    agree) or OutputError (the file cannot be written).
    """
    path = Path(path)
    classes = [str(c) for c in classes]
    problems = []
    if len(classes) < 2 or len(set(classes)) != len(classes):
        problems.append(f"classes must be >= 2 distinct names, got {classes}")
    if positive_class not in classes:
        problems.append(f"positive_class {positive_class!r} is not one of {classes}")
    if not (isinstance(threshold, (int, float, np.floating)) and math.isfinite(threshold) and 0 <= threshold <= 1):
        problems.append(f"threshold must be a probability in [0, 1], got {threshold!r}")
    net = unwrap_model(model)
    state = {
        k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in net.state_dict().items()
    }
    members, tta = 1, []
    prefix = ""
    if isinstance(net, ProbabilityAverage):  # an ensemble and/or hflip TTA (arch.members, arch.tta)
        members, tta, prefix = len(net.members), (["hflip"] if net.hflip else []), "members.0."
    in_channels = int(state[f"{prefix}conv1.weight"].shape[1]) if f"{prefix}conv1.weight" in state else -1
    num_classes = int(state[f"{prefix}fc.weight"].shape[0]) if f"{prefix}fc.weight" in state else -1
    if num_classes != len(classes):
        problems.append(f"the model has {num_classes} outputs but {len(classes)} classes were given")
    if in_channels != transform_spec.in_channels:
        problems.append(
            f"the model has {in_channels} input channel(s), the transform spec {transform_spec.in_channels}"
        )
    bad = integrity.first_non_finite(state)
    if bad is not None:
        problems.append(f"weight tensor {bad!r} holds NaN or infinite values (a diverged training run)")
    if problems:
        raise BundleError(f"cannot save bundle {path}: " + "; ".join(problems))
    payload = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "arch": {
            "name": ARCH,
            "impl": ARCH_IMPL,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "members": members,
            "tta": tta,
        },
        "classes": classes,
        "positive_class": str(positive_class),
        "input": {"size": transform_spec.image_size, "channels": transform_spec.in_channels},
        "transform_spec": transform_spec.to_dict(),
        "threshold": float(threshold),
        "threshold_selection": to_plain(
            _threshold_selection(threshold_method, threshold_params, threshold_chosen_on), "threshold_selection"
        ),
        "manifest_hash": str(manifest_hash),
        "parent_bundle_sha256": parent_bundle_sha256,
        "init": to_plain(init_record, "init"),
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_config": to_plain(train_config, "train_config"),
        "extra": to_plain(extra, "extra"),
    }
    payload = {**to_plain(payload), integrity.DIGEST_KEY: integrity.weights_digest(state), "state_dict": state}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        raise OutputError(
            f"cannot write bundle {path.name} in {path.parent}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}; "
            "check free space and permissions"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote model bundle %s", path)
    from cxr_cad.model.card import write_model_card  # model_card.md beside every bundle (docs/model.md)

    write_model_card(path, payload)
    return path


def load_bundle(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> Bundle:
    """Load a bundle with ``weights_only=True``; the model comes back in eval mode.

    Raises:
        BundleError: the file is missing, corrupt/truncated, not a cxr_cad bundle, of a newer
            format version, or declares something this code cannot honour (the message says what).
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(
            f"model bundle {path} does not exist; pass the .pt file written by "
            "`cxr-cad train` (model.pt in the run folder)"
        )
    if not path.is_file():
        raise BundleError(f"model bundle {path} is not a file")
    d = torch_load_file(path, what="cxr_cad model bundle", error=BundleError)
    if not isinstance(d, dict) or d.get("format") != BUNDLE_FORMAT:
        hint = ""
        if isinstance(d, dict) and d and all(isinstance(v, torch.Tensor) for v in d.values()):
            hint = (
                " It looks like a bare state dict (e.g. ImageNet weights); use it for training with "
                "`--init imagenet:PATH`, not as a model bundle."
            )
        raise BundleError(f"{path} is a torch file but not a cxr_cad model bundle.{hint}")
    version = d.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{path}: bundle has no integer format_version")
    if version > BUNDLE_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version} is newer than this cxr_cad supports "
            f"({BUNDLE_VERSION}); upgrade cxr_cad to use it"
        )
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise BundleError(f"{path}: bundle lacks {missing}; it is incomplete or was not written by save_bundle")
    try:
        spec = TransformSpec.from_dict(d["transform_spec"])
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from exc
    classes, positive = d["classes"], d["positive_class"]
    arch, state = d["arch"], d["state_dict"]
    problems = []
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) != len(classes)
    ):
        problems.append(f"classes must be a list of >= 2 distinct names, got {classes!r}")
    elif positive not in classes:
        problems.append(f"positive class {positive!r} is not one of the classes {classes}")
    if not isinstance(arch, dict) or arch.get("name") != ARCH:
        problems.append(
            f"architecture {arch.get('name') if isinstance(arch, dict) else arch!r} is not supported (only {ARCH})"
        )
    elif arch.get("in_channels") != spec.in_channels or (
        isinstance(classes, list) and arch.get("num_classes") != len(classes)
    ):
        problems.append(
            f"architecture {arch} disagrees with the transform spec ({spec.in_channels} channel(s)) "
            f"or the {len(classes) if isinstance(classes, list) else '?'} classes"
        )
    members, tta = (arch.get("members", 1), arch.get("tta", [])) if isinstance(arch, dict) else (1, [])
    if isinstance(members, bool) or not isinstance(members, int) or not 1 <= members <= 64:
        problems.append(f"arch.members must be an integer in [1, 64], got {members!r}")
    if not isinstance(tta, list) or not set(tta) <= {"hflip"}:
        problems.append(f"arch.tta {tta!r} is not supported (only [] or ['hflip'])")
    thr = d["threshold"]
    if not isinstance(thr, (int, float)) or isinstance(thr, bool) or not (math.isfinite(thr) and 0 <= thr <= 1):
        problems.append(f"threshold {thr!r} is not a probability in [0, 1]")
    if not isinstance(d["threshold_selection"], dict) or not isinstance(d["threshold_selection"].get("method"), str):
        problems.append("threshold_selection has no 'method'")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        problems.append("state_dict is not a mapping of names to tensors")
    if problems:
        raise BundleError(f"{path}: cannot honour this bundle: " + "; ".join(problems))
    integrity.check_image_size(spec.image_size, str(path), BundleError)
    model = build_model(len(classes), spec.in_channels, members=members, hflip="hflip" in tta)
    own = model.state_dict()
    bad = sorted(set(own) ^ set(state))
    bad += [
        f"{k} shape {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise BundleError(
            f"{path}: state dict does not match the declared architecture {ARCH} "
            f"({spec.in_channels} channel(s), {len(classes)} classes): {bad[:6]}"
            f"{' ...' if len(bad) > 6 else ''}"
        )
    if integrity.DIGEST_KEY in d:  # bundles written before the digest existed load without it
        integrity.check_digest(state, d[integrity.DIGEST_KEY], str(path), BundleError)
    integrity.check_finite(state, str(path), BundleError)
    model.load_state_dict(state, strict=True)
    model.to(map_location).eval()
    meta = {k: v for k, v in d.items() if k != "state_dict"}
    sel = d["threshold_selection"]
    return Bundle(
        model=model,
        classes=list(classes),
        positive_class=positive,
        positive_index=classes.index(positive),
        transform_spec=spec,
        threshold=float(thr),
        threshold_method=sel["method"],
        manifest_hash=str(d["manifest_hash"]),
        versions=dict(d["versions"]) if isinstance(d["versions"], dict) else {},
        created=str(d["created"]),
        sha256=file_sha256(path),
        meta=meta,
        path=str(path),
        threshold_selection=sel,
        parent_bundle_sha256=d.get("parent_bundle_sha256"),
        train_config=d.get("train_config"),
    )

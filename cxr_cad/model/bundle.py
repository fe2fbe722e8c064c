"""The model bundle: one file, plain types only, loadable with ``torch.load(weights_only=True)``.

Layout (format ``cxr_cad.model_bundle``, version :data:`BUNDLE_VERSION`) is documented in
docs/model.md. ``load_bundle`` refuses, with a message that says why, any file it cannot
honour: not a file, not a torch file / corrupt / truncated, not a cxr_cad bundle, a newer
format version, unknown transform keys, an architecture that is not registered
(:mod:`cxr_cad.model.registry`), a state dict that does not fit the declared architecture, a
positive class that is not one of the classes.
"""

from __future__ import annotations

import dataclasses
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

from cxr_cad.config.sections import name_problem
from cxr_cad.config.transforms import TransformSpec
from cxr_cad.core.atomic import atomic_write
from cxr_cad.core.provenance import sha256_file, software_versions
from cxr_cad.errors import BundleError, OutputError
from cxr_cad.model import integrity
from cxr_cad.model.networks import ProbabilityAverage, build_model, find_arch, unwrap_model
from cxr_cad.model.plain import threshold_selection, to_plain
from cxr_cad.model.registry import ARCHITECTURES, DEFAULT_ARCH, arch_names
from cxr_cad.model.torchfile import torch_load_file

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "cxr_cad.model_bundle"
#: 2: transform spec version 2 (per-image intensity scaling), ``arch.members`` (ensemble of
#: that many networks, probabilities averaged) and ``arch.tta`` (``["hflip"]``: flipped input
#: averaged in). Version-1 bundles load unchanged: one network, no TTA, spec version 1.
#: ``arch.name`` is any registered network (:func:`cxr_cad.model.registry.arch_names`).
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
    arch: str = DEFAULT_ARCH  # the registered network (cxr_cad.model.registry)

    def positive_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax probability of the positive class, shape ``(N,)``, from ``(N, K)`` logits."""
        return torch.softmax(logits.float(), dim=1)[:, self.positive_index]


@dataclass(frozen=True)
class BundleOptions:
    """Everything :func:`save_bundle` stores beside the weights.

    Attributes:
        classes: class names in logit order; ``positive_class`` must be one of them.
        transform_spec: the exact eval chain.
        threshold: decision threshold on the positive-class probability, in [0, 1].
        threshold_method: how it was chosen (``"youden"``, ``"sensitivity"``, ``"fixed"``, ...)
            or a dict ``{"method", "params", "chosen_on"}``.
        manifest_hash: hash of the training manifest (``manifest.manifest_hash``).
        extra: any further plain-type metadata (stored under ``"extra"``).
        threshold_params: parameters of the method (e.g. ``{"target": 0.9}``).
        threshold_chosen_on: the validation set the threshold was chosen on (e.g.
            ``{"manifest_hash": ..., "n": 120, "description": "inner validation split"}``).
        parent_bundle_sha256: sha256 of the bundle this model was initialised from.
        train_config: the resolved training config (plain types).
        init_record: the ``init_model`` record.
        arch: the registered network the model is; None: recognised from the model.
    """

    classes: list[str]
    positive_class: str
    transform_spec: TransformSpec
    threshold: float
    threshold_method: str | dict
    manifest_hash: str
    extra: dict | None = None
    threshold_params: dict | None = None
    threshold_chosen_on: Any = None
    parent_bundle_sha256: str | None = None
    train_config: dict | None = None
    init_record: dict | None = None
    arch: str | None = None


def _check_options(opts: BundleOptions) -> list[str]:
    classes = [str(c) for c in opts.classes]
    problems = []
    if len(classes) < 2 or len(set(classes)) != len(classes):
        problems.append(f"classes must be >= 2 distinct names, got {classes}")
    if opts.positive_class not in classes:
        problems.append(f"positive_class {opts.positive_class!r} is not one of {classes}")
    thr = opts.threshold
    if not (isinstance(thr, (int, float, np.floating)) and math.isfinite(thr) and 0 <= thr <= 1):
        problems.append(f"threshold must be a probability in [0, 1], got {thr!r}")
    return problems


def _describe_model(net: nn.Module, opts: BundleOptions) -> tuple[dict, list[str]]:
    """The bundle's ``arch`` record of ``net`` and what disagrees with ``opts``."""
    members, tta, first = 1, [], net
    if isinstance(net, ProbabilityAverage):  # an ensemble and/or hflip TTA (arch.members, arch.tta)
        members, tta, first = len(net.members), (["hflip"] if net.hflip else []), net.members[0]
    found = find_arch(first)
    name = opts.arch if opts.arch is not None else (found.name if found is not None else "?")
    if found is None or found.name != name:
        what = found.name if found is not None else f"none of the registered networks ({', '.join(arch_names())})"
        return {}, [f"the model is {what}, not the declared architecture {name!r}"]
    state = first.state_dict()
    in_channels = int(state[found.stem_weight].shape[1])
    num_classes = int(state[found.head_keys[0]].shape[0])
    problems = []
    if num_classes != len(opts.classes):
        problems.append(f"the model has {num_classes} outputs but {len(opts.classes)} classes were given")
    if in_channels != opts.transform_spec.in_channels:
        problems.append(
            f"the model has {in_channels} input channel(s), the transform spec {opts.transform_spec.in_channels}"
        )
    record = {
        "name": found.name,
        "impl": found.impl,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "members": members,
        "tta": tta,
    }
    return record, problems


def _payload(opts: BundleOptions, arch: dict, state: dict[str, torch.Tensor]) -> dict:
    spec = opts.transform_spec
    selection = threshold_selection(opts.threshold_method, opts.threshold_params, opts.threshold_chosen_on)
    payload = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "arch": arch,
        "classes": [str(c) for c in opts.classes],
        "positive_class": str(opts.positive_class),
        "input": {"size": spec.image_size, "channels": spec.in_channels},
        "transform_spec": spec.to_dict(),
        "threshold": float(opts.threshold),
        "threshold_selection": to_plain(selection, "threshold_selection"),
        "manifest_hash": str(opts.manifest_hash),
        "parent_bundle_sha256": opts.parent_bundle_sha256,
        "init": to_plain(opts.init_record, "init"),
        "versions": software_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_config": to_plain(opts.train_config, "train_config"),
        "extra": to_plain(opts.extra, "extra"),
    }
    return {**to_plain(payload), integrity.DIGEST_KEY: integrity.weights_digest(state), "state_dict": state}


def save_bundle(
    path: str | os.PathLike[str], model: nn.Module, options: BundleOptions | None = None, **fields: Any
) -> Path:
    """Write ``model`` and everything needed to use it as one bundle file (atomic, fsynced).

    The metadata is a :class:`BundleOptions`, passed as ``options`` or as its fields by keyword
    (``save_bundle(path, model, classes=..., positive_class=..., ...)``); keywords given with
    ``options`` replace its fields. The runs that save a bundle write its ``model_card.md``
    (:func:`cxr_cad.modelcard.write_card_for_bundle`); this function writes only the bundle.

    Returns the path written. Raises BundleError (values that cannot be stored or do not
    agree, a model that is not the declared registered network) or OutputError (the file
    cannot be written).
    """
    path = Path(path)
    opts = BundleOptions(**fields) if options is None else dataclasses.replace(options, **fields)
    net = unwrap_model(model)
    state = {
        k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in net.state_dict().items()
    }
    arch, problems = _describe_model(net, opts)
    problems = _check_options(opts) + problems
    bad = integrity.first_non_finite(state)
    if bad is not None:
        problems.append(f"weight tensor {bad!r} holds NaN or infinite values (a diverged training run)")
    if problems:
        raise BundleError(f"cannot save bundle {path}: " + "; ".join(problems))
    payload = _payload(opts, arch, state)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot write bundle {path.name}: cannot create {path.parent}: {exc.strerror or exc}"
        ) from exc
    atomic_write(path, lambda fh: torch.save(payload, fh), hint="check free space and permissions")
    log.info("wrote model bundle %s", path)
    return path


def _read_bundle(path: Path) -> dict:
    """The file's dict, after the checks that need no architecture (BundleError otherwise)."""
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
    return d


def _arch_problems(arch: Any, spec: TransformSpec, classes: Any) -> list[str]:
    if not isinstance(arch, dict) or arch.get("name") not in ARCHITECTURES:
        name = arch.get("name") if isinstance(arch, dict) else arch
        return [f"architecture {name!r} is not supported (registered: {', '.join(arch_names())})"]
    problems = []
    if arch.get("in_channels") != spec.in_channels or (
        isinstance(classes, list) and arch.get("num_classes") != len(classes)
    ):
        problems.append(
            f"architecture {arch} disagrees with the transform spec ({spec.in_channels} channel(s)) "
            f"or the {len(classes) if isinstance(classes, list) else '?'} classes"
        )
    members, tta = arch.get("members", 1), arch.get("tta", [])
    if isinstance(members, bool) or not isinstance(members, int) or not 1 <= members <= 64:
        problems.append(f"arch.members must be an integer in [1, 64], got {members!r}")
    if not isinstance(tta, list) or not set(tta) <= {"hflip"}:
        problems.append(f"arch.tta {tta!r} is not supported (only [] or ['hflip'])")
    return problems


def _header_problems(d: dict, spec: TransformSpec) -> list[str]:
    """What the metadata declares that this code cannot honour."""
    classes, positive = d["classes"], d["positive_class"]
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
    else:  # names end up in reports, CSV cells and DICOM text: docs/report.md#names
        problems += [f"classes: {why}" for why in map(name_problem, classes) if why]
    problems += _arch_problems(d["arch"], spec, classes)
    thr = d["threshold"]
    if not isinstance(thr, (int, float)) or isinstance(thr, bool) or not (math.isfinite(thr) and 0 <= thr <= 1):
        problems.append(f"threshold {thr!r} is not a probability in [0, 1]")
    if not isinstance(d["threshold_selection"], dict) or not isinstance(d["threshold_selection"].get("method"), str):
        problems.append("threshold_selection has no 'method'")
    state = d["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        problems.append("state_dict is not a mapping of names to tensors")
    return problems


def _build_checked(d: dict, spec: TransformSpec, path: Path) -> nn.Module:
    """The declared network with the file's weights, after the shape, digest and finiteness checks."""
    arch, state, n_classes = d["arch"], d["state_dict"], len(d["classes"])
    model = build_model(
        n_classes,
        spec.in_channels,
        members=arch.get("members", 1),
        hflip="hflip" in arch.get("tta", []),
        arch=arch["name"],
    )
    own = model.state_dict()
    bad = sorted(set(own) ^ set(state))
    bad += [
        f"{k} shape {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise BundleError(
            f"{path}: state dict does not match the declared architecture {arch['name']} "
            f"({spec.in_channels} channel(s), {n_classes} classes): {bad[:6]}"
            f"{' ...' if len(bad) > 6 else ''}"
        )
    if integrity.DIGEST_KEY in d:  # bundles written before the digest existed load without it
        integrity.check_digest(state, d[integrity.DIGEST_KEY], str(path), BundleError)
    integrity.check_finite(state, str(path), BundleError)
    model.load_state_dict(state, strict=True)
    return model


def load_bundle(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> Bundle:
    """Load a bundle with ``weights_only=True``; the model comes back in eval mode.

    Raises:
        BundleError: the file is missing, corrupt/truncated, not a cxr_cad bundle, of a newer
            format version, or declares something this code cannot honour (the message says
            what; an architecture that is not registered names the registered ones).
    """
    path = Path(path)
    d = _read_bundle(path)
    try:
        spec = TransformSpec.from_dict(d["transform_spec"])
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from exc
    problems = _header_problems(d, spec)
    if problems:
        raise BundleError(f"{path}: cannot honour this bundle: " + "; ".join(problems))
    integrity.check_image_size(spec.image_size, str(path), BundleError)
    model = _build_checked(d, spec, path)
    model.to(map_location).eval()
    classes, sel = list(d["classes"]), d["threshold_selection"]
    return Bundle(
        model=model,
        classes=classes,
        positive_class=d["positive_class"],
        positive_index=classes.index(d["positive_class"]),
        transform_spec=spec,
        threshold=float(d["threshold"]),
        threshold_method=sel["method"],
        manifest_hash=str(d["manifest_hash"]),
        versions=dict(d["versions"]) if isinstance(d["versions"], dict) else {},
        created=str(d["created"]),
        sha256=sha256_file(path),
        meta={k: v for k, v in d.items() if k != "state_dict"},
        path=str(path),
        threshold_selection=sel,
        parent_bundle_sha256=d.get("parent_bundle_sha256"),
        train_config=d.get("train_config"),
        arch=str(d["arch"]["name"]),
    )

"""ImageNet weights for the registered networks, and loading torchvision-format state dicts.

ImageNet weights (``init="imagenet"``) are torchvision's checkpoint of the network's registry
entry (:mod:`cxr_cad.model.registry`; ``resnet18-f37072fd.pth`` for the default ResNet18).
They are found, in this order:

1. ``init="imagenet:/path/to/<file>.pth"`` (or ``source=path``);
2. the environment variable ``CXR_CAD_IMAGENET_WEIGHTS=/path/to/file``;
3. the torch.hub cache, ``$TORCH_HOME/hub/checkpoints/<file>.pth`` (default
   ``~/.cache/torch/hub/checkpoints``), shared with torchvision;
4. a download over HTTPS into that cache (``torch.hub.download_url_to_file``), unless
   ``CXR_CAD_OFFLINE=1``. A download keeps at most one partial file on disk
   (``<file>.partial``, written by torch.hub as ``<file>.partial.<id>.partial`` until the last
   byte): downloads of the same file (torchrun ranks, parallel jobs) wait for each other on a
   lock, and what a killed download left (``<file>.partial*``) is removed before the next starts.

A file whose name carries a torch.hub hash (``<name>-<hex>.pth``) must have a SHA-256
starting with that hex, like ``torch.hub`` checks it; downloads are always checked against
the entry's published prefix. torchvision's names are mapped onto the MONAI network's by the
entry's key map, and the RGB stem is adapted to gray input. When no weights can be had,
:class:`~cxr_cad.errors.WeightsError` says how to pass a local file; there is never a silent
fallback to random weights.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from cxr_cad.core.provenance import sha256_file
from cxr_cad.errors import WeightsError
from cxr_cad.model.integrity import check_finite
from cxr_cad.model.networks import adapt_stem, find_arch, unwrap_model
from cxr_cad.model.registry import DEFAULT_ARCH, ArchSpec, get_arch
from cxr_cad.model.torchfile import torch_load_file

log = logging.getLogger(__name__)

_DEFAULT = get_arch(DEFAULT_ARCH)
#: The default network's checkpoint (kept for callers of the single-network API).
IMAGENET_URL = _DEFAULT.weights_url
IMAGENET_FILENAME = _DEFAULT.weights_filename
IMAGENET_HASH_PREFIX = _DEFAULT.weights_sha256_prefix
ENV_WEIGHTS = "CXR_CAD_IMAGENET_WEIGHTS"
ENV_OFFLINE = "CXR_CAD_OFFLINE"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")
HEAD_KEYS = _DEFAULT.head_keys

__all__ = [
    "ENV_OFFLINE",
    "ENV_WEIGHTS",
    "IMAGENET_HASH_PREFIX",
    "IMAGENET_URL",
    "check_hash_prefix",
    "extract_state_dict",
    "imagenet_cache_path",
    "load_imagenet_weights",
    "load_state_dict_into",
    "resolve_imagenet_source",
    "torch_load_file",
]


def imagenet_cache_path(arch: str = DEFAULT_ARCH) -> Path:
    """Where torch.hub keeps the network's ImageNet checkpoint (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / get_arch(arch).weights_filename


def how_to_pass_weights(arch: str = DEFAULT_ARCH) -> str:
    """The sentence every 'no ImageNet weights' error ends with."""
    spec = get_arch(arch)
    name = spec.weights_filename
    return (
        f"Download {spec.weights_url} on a machine with internet access (its SHA-256 starts with "
        f"{spec.weights_sha256_prefix}) and pass it with `--init imagenet:/path/to/{name}`, "
        f"or set {ENV_WEIGHTS}=/path/to/{name}, or copy it to {imagenet_cache_path(arch)}; "
        "use `--init none` to train from random weights on purpose"
    )


def check_hash_prefix(path: Path, prefix: str | None = None, *, arch: str = DEFAULT_ARCH) -> str:
    """Verify the SHA-256 prefix (given, or the torch.hub ``-<hex>.`` in the name); return the hash.

    Raises:
        WeightsError: the file's SHA-256 does not start with the expected prefix.
    """
    digest = sha256_file(path)
    if prefix is None:
        m = _HASH_IN_NAME.search(path.name)
        prefix = m.group(1) if m else None
    if prefix is not None and not digest.startswith(prefix):
        raise WeightsError(
            f"{path}: SHA-256 {digest[:16]}... does not start with {prefix} (the hash in its name): the file "
            f"is corrupt, truncated or not the expected checkpoint. Delete it and fetch it again. "
            f"{how_to_pass_weights(arch)}"
        )
    return digest


def partial_files(dst: Path) -> list[Path]:
    """The partial downloads of ``dst`` on disk (``<name>.partial*``: this module's and torch.hub's)."""
    return sorted(Path(p) for p in glob.glob(glob.escape(str(dst)) + ".partial*"))


def _download_lock(dst: Path) -> FileLock:
    """An inter-process lock for downloads of ``dst``, kept in the temp folder (not the cache)."""
    key = hashlib.sha256(str(dst.absolute()).encode()).hexdigest()[:16]
    return FileLock(str(Path(tempfile.gettempdir()) / f"cxr-cad-weights-{key}.lock"))


def _download_imagenet(dst: Path, spec: ArchSpec, *, progress: bool) -> None:
    """Download the entry's checkpoint to ``dst`` (one partial file + hash check + os.replace),
    one process at a time; partial files of killed downloads are removed first."""
    if os.environ.get(ENV_OFFLINE, "") not in ("", "0"):
        raise WeightsError(
            f"ImageNet weights are not in {dst} and {ENV_OFFLINE} is set, so they are not "
            f"downloaded. {how_to_pass_weights(spec.name)}"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _download_lock(dst):
        if dst.is_file():  # another process downloaded it while this one waited
            return
        for stale in partial_files(dst):
            log.info("removing %s, left by an interrupted download", stale.name)
            stale.unlink(missing_ok=True)
        _fetch(dst, spec, progress=progress)


def _fetch(dst: Path, spec: ArchSpec, *, progress: bool) -> None:
    tmp = dst.with_name(f"{dst.name}.partial")
    log.info("downloading ImageNet %s weights from %s to %s", spec.name, spec.weights_url, dst)
    try:
        torch.hub.download_url_to_file(spec.weights_url, str(tmp), hash_prefix=None, progress=progress)
        check_hash_prefix(tmp, spec.weights_sha256_prefix, arch=spec.name)
        os.replace(tmp, dst)
    except WeightsError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:  # URLError, HTTPError, SSL, timeouts are OSErrors
        raise WeightsError(
            f"could not download ImageNet weights from {spec.weights_url}: {exc}. {how_to_pass_weights(spec.name)}"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def resolve_imagenet_source(
    source: str | os.PathLike[str] = "download", *, progress: bool = True, arch: str = DEFAULT_ARCH
) -> Path:
    """The local file holding the network's ImageNet checkpoint (see the module docstring for the order).

    Raises:
        WeightsError: the given file is missing, or nothing local and the download failed.
    """
    if str(source) != "download":
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsError(f"ImageNet weights file {path} does not exist. {how_to_pass_weights(arch)}")
        return path
    env = os.environ.get(ENV_WEIGHTS, "")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise WeightsError(f"{ENV_WEIGHTS}={env} is not a file. {how_to_pass_weights(arch)}")
        return path
    cached = imagenet_cache_path(arch)
    if not cached.is_file():
        _download_imagenet(cached, get_arch(arch), progress=progress)
    return cached


def extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict of a torchvision-format checkpoint (bare, or under 'state_dict'/'model')."""
    if isinstance(obj, dict) and obj.get("format") == "cxr_cad.model_bundle":
        raise WeightsError(
            f"{path} is a cxr_cad bundle, not a torchvision state dict; pass it as "
            f"`--init {path}` to initialise from a previous bundle"
        )
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    # DDP / torch.compile prefixes
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in obj.items()}


def _spec_of(model: nn.Module, arch: str | None) -> ArchSpec:
    if arch is not None:
        return get_arch(arch)
    spec = find_arch(model)
    if spec is None:
        raise WeightsError("the model is none of the registered networks; build it with build_network")
    return spec


def _fit_problems(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], skip: set[str]) -> list[str]:
    problems = []
    missing = sorted(k for k in own if k not in state and k not in skip)
    unexpected = sorted(k for k in state if k not in own)
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    for k, v in state.items():
        if k in own and k not in skip and tuple(v.shape) != tuple(own[k].shape):
            problems.append(f"{k}: shape {tuple(v.shape)} != model {tuple(own[k].shape)}")
    return problems


def load_state_dict_into(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    load_head: bool,
    arch: str | None = None,
    torchvision_names: bool = False,
) -> dict:
    """Copy a state dict into ``model`` (stem adapted to the model's input channels).

    Args:
        load_head: False keeps the model's own (freshly initialised) classifier.
        arch: the registered network ``model`` is (recognised from the model when None).
        torchvision_names: ``state`` uses torchvision's names (mapped by the entry's key map).

    Raises:
        WeightsError: missing/unexpected keys or shapes that do not fit, listed together.
    """
    spec = _spec_of(model, arch)
    net = unwrap_model(model)
    own = net.state_dict()
    state = spec.map_state_dict(state) if torchvision_names else dict(state)
    stem = spec.stem_weight
    in_channels = own[stem].shape[1]
    conv1 = "as is"
    if stem in state:
        src_channels = state[stem].shape[1] if state[stem].ndim == 4 else None
        state[stem] = adapt_stem(state[stem], in_channels, spec.gray_stem)
        if src_channels != in_channels:
            conv1 = "summed over RGB" if in_channels == 1 else "gray replicated to RGB / 3"
    skip = set() if load_head else set(spec.head_keys)
    problems = _fit_problems(own, state, skip)
    if problems:
        raise WeightsError(
            f"{source} does not fit a torchvision-format {spec.name} with {in_channels} input "
            f"channel(s): " + "; ".join(problems)
        )
    check_finite({k: v for k, v in state.items() if k not in skip}, source, WeightsError)
    new = {k: (state[k] if k not in skip else own[k]).to(own[k].dtype) for k in own}
    net.load_state_dict(new, strict=True)
    return {"loaded_keys": len(own) - len(skip), "head": "loaded" if load_head else "reinitialised", "conv1": conv1}


def load_imagenet_weights(
    model: nn.Module, source: str | os.PathLike[str] = "download", *, progress: bool = True, arch: str | None = None
) -> dict:
    """Load torchvision's ImageNet weights of the model's network (classifier left as initialised).

    Args:
        source: ``"download"`` (env var / torch.hub cache / download) or a path to a
            torchvision-format checkpoint.
        arch: the registered network ``model`` is (recognised from the model when None).

    Returns:
        a record ``{"init": "imagenet", "source", "sha256", ...}`` for the run log.

    Raises:
        WeightsError: the weights cannot be obtained, are corrupt, or do not fit.
    """
    spec = _spec_of(model, arch)
    path = resolve_imagenet_source(source, progress=progress, arch=spec.name)
    digest = check_hash_prefix(path, arch=spec.name)
    state = spec.map_state_dict(extract_state_dict(torch_load_file(path, what="weights file"), path))
    head = state.get(spec.head_keys[0])
    if head is not None and head.shape[0] != 1000:
        log.warning(
            "%s: the classifier has %d outputs, not ImageNet's 1000; is this really the ImageNet checkpoint?",
            path.name,
            head.shape[0],
        )
    info = load_state_dict_into(model, state, source=str(path), load_head=False, arch=spec.name)
    return {
        "init": "imagenet",
        "source": str(path),
        "sha256": digest,
        "verified_imagenet": digest.startswith(spec.weights_sha256_prefix),
        **info,
    }

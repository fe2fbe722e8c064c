"""Initial weights: torchvision-format ImageNet ResNet18, a weights file, a previous bundle.

ImageNet weights (``init="imagenet"``) are torchvision's ``resnet18-f37072fd.pth``
(:data:`IMAGENET_URL`). They are found, in this order:

1. ``init="imagenet:/path/to/resnet18-f37072fd.pth"`` (or ``source=path``);
2. the environment variable ``CXR_CAD_IMAGENET_WEIGHTS=/path/to/file``;
3. the torch.hub cache, ``$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth``
   (default ``~/.cache/torch/hub/checkpoints``), shared with torchvision;
4. a download over HTTPS into that cache (``torch.hub.download_url_to_file``), unless
   ``CXR_CAD_OFFLINE=1``.

A file whose name carries a torch.hub hash (``<name>-<hex>.pth``) must have a SHA-256
starting with that hex, like ``torch.hub`` checks it; downloads are always checked
against ``f37072fd``. When no weights can be had, :class:`~cxr_cad.errors.WeightsError`
says how to pass a local file; there is never a silent fallback to random weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr_cad.errors import InitSpecError, WeightsError
from cxr_cad.model.resnet import adapt_conv1, build_resnet18, unwrap_model

log = logging.getLogger(__name__)

IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
IMAGENET_FILENAME = "resnet18-f37072fd.pth"
IMAGENET_HASH_PREFIX = "f37072fd"
ENV_WEIGHTS = "CXR_CAD_IMAGENET_WEIGHTS"
ENV_OFFLINE = "CXR_CAD_OFFLINE"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")
HEAD_KEYS = ("fc.weight", "fc.bias")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (streamed in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def imagenet_cache_path() -> Path:
    """Where torch.hub keeps the ImageNet checkpoint (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILENAME


def how_to_pass_weights() -> str:
    """The sentence every 'no ImageNet weights' error ends with."""
    return (
        f"Download {IMAGENET_URL} on a machine with internet access (its SHA-256 starts with "
        f"{IMAGENET_HASH_PREFIX}) and pass it with `--init imagenet:/path/to/{IMAGENET_FILENAME}`, "
        f"or set {ENV_WEIGHTS}=/path/to/{IMAGENET_FILENAME}, or copy it to {imagenet_cache_path()}; "
        "use `--init none` to train from random weights on purpose"
    )


def check_hash_prefix(path: Path, prefix: str | None = None) -> str:
    """Verify the SHA-256 prefix (given, or the torch.hub ``-<hex>.`` in the name); return the hash.

    Raises:
        WeightsError: the file's SHA-256 does not start with the expected prefix.
    """
    digest = file_sha256(path)
    if prefix is None:
        m = _HASH_IN_NAME.search(path.name)
        prefix = m.group(1) if m else None
    if prefix is not None and not digest.startswith(prefix):
        raise WeightsError(
            f"{path}: SHA-256 {digest[:16]}... does not start with {prefix} (the hash in its name): the file "
            f"is corrupt, truncated or not the expected checkpoint. Delete it and fetch it again. "
            f"{how_to_pass_weights()}"
        )
    return digest


def _download_imagenet(dst: Path, *, progress: bool) -> None:
    """Download :data:`IMAGENET_URL` to ``dst`` (tmp file + hash check + os.replace)."""
    if os.environ.get(ENV_OFFLINE, "") not in ("", "0"):
        raise WeightsError(
            f"ImageNet weights are not in {dst} and {ENV_OFFLINE} is set, so they are not "
            f"downloaded. {how_to_pass_weights()}"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.partial-{os.getpid()}")
    log.info("downloading ImageNet ResNet18 weights from %s to %s", IMAGENET_URL, dst)
    try:
        torch.hub.download_url_to_file(IMAGENET_URL, str(tmp), hash_prefix=None, progress=progress)
        check_hash_prefix(tmp, IMAGENET_HASH_PREFIX)
        os.replace(tmp, dst)
    except WeightsError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:  # URLError, HTTPError, SSL, timeouts are OSErrors
        raise WeightsError(
            f"could not download ImageNet weights from {IMAGENET_URL}: {exc}. {how_to_pass_weights()}"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def resolve_imagenet_source(source: str | os.PathLike = "download", *, progress: bool = True) -> Path:
    """The local file holding the ImageNet checkpoint (see the module docstring for the order).

    Raises:
        WeightsError: the given file is missing, or nothing local and the download failed.
    """
    if str(source) != "download":
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsError(f"ImageNet weights file {path} does not exist. {how_to_pass_weights()}")
        return path
    env = os.environ.get(ENV_WEIGHTS, "")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise WeightsError(f"{ENV_WEIGHTS}={env} is not a file. {how_to_pass_weights()}")
        return path
    cached = imagenet_cache_path()
    if not cached.is_file():
        _download_imagenet(cached, progress=progress)
    return cached


def torch_load_file(path: Path, *, what: str, error: type[Exception] = WeightsError) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file.

    Before loading, a zip-format file's entries are checked against their CRC-32s
    (:func:`cxr_cad.model.integrity.check_zip_crc`; ``torch.load`` does not check them). A
    file that holds pickled Python objects is refused with a plain sentence saying so
    (torch's own message goes on to explain how to load it unsafely, which we never do).

    Raises:
        ``error``: not a readable torch file (corrupt, truncated, or not plain data).
    """
    from cxr_cad.model.integrity import check_zip_crc

    check_zip_crc(path, what, error)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message goes on with advice to re-run torch.load unsafely: never echo it
        text = str(exc)
        m = re.search(r"GLOBAL ([\w.]+)", text)
        if m:
            raise error(
                f"{path}: not a readable {what}: refused, it is not plain data; it holds pickled "
                f"Python objects (it references {m.group(1)}), which cxr_cad never loads because "
                "loading them can run code. Use a file written by cxr-cad, or a plain tensor "
                "state dict"
            ) from None
        if "weights only load failed" in text.lower() or "weights_only" in text:
            raise error(
                f"{path}: not a readable {what}: refused, it is not a plain-data torch file "
                "(corrupt, truncated, or pickled Python objects that cxr_cad never loads)"
            ) from None
        raise error(
            f"{path}: not a readable {what} (corrupt, truncated, or not a torch file): {_first_line(exc)}"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise error(
            f"{path}: not a readable {what} (corrupt, truncated, or not a torch file saved with "
            f"plain types): {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


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


def load_state_dict_into(model: nn.Module, state: dict[str, torch.Tensor], *, source: str, load_head: bool) -> dict:
    """Copy a torchvision-format ResNet18 state dict into ``model`` (conv1 adapted).

    ``load_head=False`` keeps the model's own (freshly initialised) ``fc``.

    Raises:
        WeightsError: missing/unexpected keys or shapes that do not fit, listed together.
    """
    net = unwrap_model(model)
    own = net.state_dict()
    state = dict(state)
    in_channels = own["conv1.weight"].shape[1]
    conv1 = "as is"
    if "conv1.weight" in state:
        src_channels = state["conv1.weight"].shape[1] if state["conv1.weight"].ndim == 4 else None
        state["conv1.weight"] = adapt_conv1(state["conv1.weight"], in_channels)
        if src_channels != in_channels:
            conv1 = "summed over RGB" if in_channels == 1 else "gray replicated to RGB / 3"
    skip = set() if load_head else set(HEAD_KEYS)
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
    if problems:
        raise WeightsError(
            f"{source} does not fit a torchvision-format ResNet18 with {in_channels} input "
            f"channel(s): " + "; ".join(problems)
        )
    from cxr_cad.model.integrity import check_finite

    check_finite({k: v for k, v in state.items() if k not in skip}, source, WeightsError)
    new = {k: (state[k] if k not in skip else own[k]).to(own[k].dtype) for k in own}
    net.load_state_dict(new, strict=True)
    return {"loaded_keys": len(own) - len(skip), "head": "loaded" if load_head else "reinitialised", "conv1": conv1}


def load_imagenet_weights(model: nn.Module, source: str | os.PathLike = "download", *, progress: bool = True) -> dict:
    """Load torchvision ImageNet ResNet18 weights into ``model`` (``fc`` left as initialised).

    Args:
        source: ``"download"`` (env var / torch.hub cache / download) or a path to a
            torchvision-format checkpoint.

    Returns:
        a record ``{"init": "imagenet", "source", "sha256", ...}`` for the run log.

    Raises:
        WeightsError: the weights cannot be obtained, are corrupt, or do not fit.
    """
    path = resolve_imagenet_source(source, progress=progress)
    digest = check_hash_prefix(path)
    state = extract_state_dict(torch_load_file(path, what="weights file"), path)
    if "fc.weight" in state and state["fc.weight"].shape[0] != 1000:
        log.warning(
            "%s: fc has %d outputs, not ImageNet's 1000; is this really the ImageNet checkpoint?",
            path.name,
            state["fc.weight"].shape[0],
        )
    info = load_state_dict_into(model, state, source=str(path), load_head=False)
    return {
        "init": "imagenet",
        "source": str(path),
        "sha256": digest,
        "verified_imagenet": digest.startswith(IMAGENET_HASH_PREFIX),
        **info,
    }


def _seeded_model(num_classes: int, in_channels: int, seed: int) -> nn.Module:
    """build_resnet18 with its random init drawn from ``seed`` (global RNG state restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_resnet18(num_classes, in_channels)


def init_model(
    init: str | os.PathLike,
    num_classes: int,
    in_channels: int = 1,
    *,
    seed: int = 0,
    classes: list[str] | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """Build a ResNet18 and initialise it.

    Args:
        init: ``"imagenet"`` (see module docstring), ``"imagenet:/path/file.pth"``,
            ``"none"`` (random, seeded), or a path to a previous cxr_cad bundle (retraining)
            or to a torchvision-format state dict.
        num_classes: number of classes K of the new model.
        in_channels: 1 or 3.
        seed: seed of the random initialisation (the new ``fc`` included); the global
            torch RNG is left as it was.
        classes: the new model's class names; a bundle's ``fc`` is kept only when its
            classes are exactly these (same order), otherwise re-initialised.

    Returns:
        ``(model, init_record)``; for a bundle the record carries ``parent_bundle_sha256``.

    Raises:
        InitSpecError: ``init`` is none of the forms above (a :class:`UsageError`: exit 2).
        WeightsError: weights unavailable, corrupt, non-finite or not fitting (never falls back
            to random).
    """
    model = _seeded_model(num_classes, in_channels, seed)
    spec = str(init)
    if spec == "none":
        return model, {"init": "none", "seed": int(seed)}
    if spec == "imagenet" or spec.startswith("imagenet:"):
        source = spec.split(":", 1)[1] if ":" in spec else "download"
        if not source:
            raise WeightsError(f"--init imagenet: needs a path after the colon. {how_to_pass_weights()}")
        return model, {**load_imagenet_weights(model, source, progress=progress), "seed": int(seed)}
    path = Path(spec).expanduser()
    if not path.is_file():
        raise InitSpecError(
            f"--init {spec!r}: not 'imagenet', 'imagenet:/path', 'none', or an existing bundle / weights file"
        )
    obj = torch_load_file(path, what="weights file or bundle")
    if isinstance(obj, dict) and obj.get("format") == "cxr_cad.model_bundle":
        from cxr_cad.model.bundle import load_bundle

        parent = load_bundle(path)
        if parent.transform_spec.in_channels != in_channels:
            raise WeightsError(
                f"{path}: the parent bundle has {parent.transform_spec.in_channels} input "
                f"channel(s), the new model {in_channels}; use the same in_channels"
            )
        same_head = classes is not None and list(classes) == list(parent.classes)
        state = parent.model.state_dict()
        info = load_state_dict_into(model, state, source=str(path), load_head=same_head)
        return model, {
            "init": "bundle",
            "source": str(path),
            "parent_bundle_sha256": parent.sha256,
            "parent_classes": list(parent.classes),
            "seed": int(seed),
            **info,
        }
    digest = check_hash_prefix(path)
    info = load_state_dict_into(model, extract_state_dict(obj, path), source=str(path), load_head=False)
    return model, {"init": "weights_file", "source": str(path), "sha256": digest, "seed": int(seed), **info}

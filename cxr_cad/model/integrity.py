"""Integrity of model weights: a digest written at save and verified at every load, finite values,
intact zip entries, and a cap on the input size a bundle may ask for.

* :func:`weights_digest`: SHA-256 over every tensor of a state dict (name, dtype, shape and
  raw bytes, in sorted name order). :func:`~cxr_cad.model.bundle.save_bundle` stores it as
  ``weights_sha256``; :func:`~cxr_cad.model.bundle.load_bundle` recomputes and compares it
  (bundles written before the digest existed load without it, checked by their zip CRCs).
* :func:`check_zip_crc`: a torch file is a zip archive whose entries carry CRC-32s that
  ``torch.load`` never checks; a flipped bit in a weight passes ``torch.load`` silently.
* :func:`check_finite`: NaN or infinite weights are refused with the first offending tensor.
* :data:`MAX_IMAGE_SIZE`: the largest ``transform_spec.image_size`` accepted, the same cap
  training configs have (``model.image_size`` in [32, 2048]); a larger one costs tens of GB.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Mapping

import torch

#: Largest model input side (pixels) a training config or a bundle may declare.
MAX_IMAGE_SIZE = 2048
#: Name of the digest in a bundle.
DIGEST_KEY = "weights_sha256"


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a state dict: for each tensor in sorted name order, its name, dtype,
    shape and contiguous CPU bytes. Independent of the file layout (zip, pickle protocol)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def first_non_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor (sorted order) holding NaN or infinity, else None."""
    for name in sorted(state):
        t = state[name]
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_finite(state: Mapping[str, torch.Tensor], source: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``source`` and the tensor when any weight is NaN or infinite."""
    bad = first_non_finite(state)
    if bad is not None:
        raise error(
            f"{source}: weight tensor {bad!r} holds NaN or infinite values; the weights are "
            "corrupt or come from a diverged training run and are refused"
        )


def check_digest(state: Mapping[str, torch.Tensor], expected: object, source: str, error: type[Exception]) -> None:
    """Raise ``error`` when the recomputed :func:`weights_digest` differs from ``expected``."""
    if not isinstance(expected, str) or len(expected) != 64:
        raise error(f"{source}: the bundle's {DIGEST_KEY} is not a SHA-256 hex digest; the file is corrupt")
    actual = weights_digest(state)
    if actual != expected:
        raise error(
            f"{source}: the weights do not match the digest written when the bundle was saved "
            f"({actual[:12]}... != {expected[:12]}...); the file is corrupt: copy it again from its "
            "source or retrain"
        )


def check_zip_crc(path: str | os.PathLike, what: str, error: type[Exception]) -> None:
    """Raise ``error`` when a zip-format torch file has an entry whose CRC-32 does not match.

    Legacy (non-zip) torch files are not checked here."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise error(f"{path}: not a readable {what}: the zip archive is damaged ({exc}); copy it again") from exc
    if bad is not None:
        raise error(
            f"{path}: not a readable {what}: entry {bad!r} fails its CRC-32 check, so its bytes "
            "were changed after saving (disk or copy corruption); copy it again from its source"
        )


def check_image_size(size: object, source: str, error: type[Exception]) -> None:
    """Raise ``error`` unless ``size`` is an integer in [32, :data:`MAX_IMAGE_SIZE`]."""
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= MAX_IMAGE_SIZE:
        raise error(
            f"{source}: transform_spec.image_size {size!r} is outside [32, {MAX_IMAGE_SIZE}] px, the "
            "range training accepts; the bundle is corrupt or was edited"
        )

"""TorchScript export through MONAI's ``save_net_with_metadata``.

The traced module is saved with the export record as MONAI metadata (``meta_values``), the
format MONAI bundles use for ``models/model.ts``; ``monai.data.load_net_with_metadata``
reads both back.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from cxr_cad.errors import OutputError

log = logging.getLogger(__name__)


def export_torchscript(
    model: torch.nn.Module, path: str | Path, *, in_channels: int, image_size: int, meta: dict
) -> Path:
    """Trace ``model`` (eval, fp32) and save it with ``meta`` as TorchScript at ``path``."""
    from monai.data import save_net_with_metadata

    path = Path(path)
    example = torch.zeros(2, in_channels, image_size, image_size)
    with warnings.catch_warnings():  # torch.jit is in maintenance; tracing a plain CNN is still exact
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(model.float().eval(), example, check_trace=True)
        try:
            save_net_with_metadata(traced, str(path), meta_values=meta, include_config_vals=False)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc}") from exc
    log.info("wrote TorchScript model %s", path)
    return path

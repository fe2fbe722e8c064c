"""Training checkpoints: one file per run folder, replaced atomically after every epoch.

``checkpoint.pt`` holds everything a rerun needs to continue exactly where the last
finished epoch left off: model, optimizer, scheduler and GradScaler state, the epoch just
finished, the best epoch so far (its weights and validation predictions), the early
stopping counter, the RNG states and the config fingerprint. It only holds tensors and
plain Python values, so it is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_cad.config import TrainConfig
from cxr_cad.core.atomic import atomic_write
from cxr_cad.errors import OutputError
from cxr_cad.training.optim import Training

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states as weights_only-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured."""
    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(out_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (see module docstring) to ``out_dir/checkpoint.pt`` atomically."""
    path = Path(out_dir) / CHECKPOINT_NAME
    obj = {"version": CHECKPOINT_VERSION, **state}
    atomic_write(
        path,
        lambda fh: torch.save(obj, fh),
        hint="check the folder's permissions and free space (finished epochs are kept)",
    )
    log.debug("checkpoint written after epoch %d", state.get("epoch", -1))
    return path


def load_checkpoint(out_dir: Path) -> dict[str, Any] | None:
    """The checkpoint in ``out_dir`` or None when there is none.

    Raises OutputError when the file exists but cannot be read (the message says to
    remove it to start over).
    """
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise OutputError(
            f"{path} cannot be read ({exc.__class__.__name__}: {exc}); delete it to start the training over"
        ) from exc
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise OutputError(
            f"{path} is not a cxr_cad checkpoint of version {CHECKPOINT_VERSION}; delete it to start the training over"
        )
    return state


def new_state() -> dict[str, Any]:
    """The per-epoch state of a fresh run (what ``checkpoint.pt`` carries besides the weights)."""
    return {
        "epoch": 0,
        "best_epoch": None,
        "best_auc": float("-inf"),
        "best_loss": float("inf"),
        "best_state": None,
        "best_probs": None,
        "bad_epochs": 0,
        "history": [],
        "stopped_early": False,
    }


def restore(saved: dict[str, Any], model: torch.nn.Module, training: Training, state: dict[str, Any]) -> None:
    """Load a checkpoint's weights, optimizer, schedule, scaler and RNG states; update ``state``."""
    model.load_state_dict(saved["model"])
    training.optimizer.load_state_dict(saved["optimizer"])
    training.scheduler.load_state_dict(saved["scheduler"])
    if training.scaler is not None and saved.get("scaler"):
        training.scaler.load_state_dict(saved["scaler"])
    set_rng_states(saved["rng"])
    state.update({k: saved[k] for k in state if k in saved})
    if "best_loss" not in saved:  # a checkpoint written before the loss tie-break: the best epoch's loss
        best = [r for r in state["history"] if r.get("epoch") == state["best_epoch"]]
        state["best_loss"] = float(best[0]["val_loss"]) if best else float("inf")


def checkpoint_state(
    state: dict[str, Any], model: torch.nn.Module, training: Training, cfg: TrainConfig
) -> dict[str, Any]:
    """Everything ``checkpoint.pt`` holds after an epoch (see :mod:`cxr_cad.training.checkpoint`)."""
    return {
        **state,
        "model": model.state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(),
        "scaler": training.scaler.state_dict() if training.scaler else None,
        "rng": rng_states(),
        "fingerprint": cfg.fingerprint(),
    }

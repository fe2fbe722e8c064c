"""Where and how the model runs: device, precision, memory format, seeding, torchrun/DDP.

Precision policy (``precision="auto"``):

* CUDA: float16/bfloat16 autocast (AMP) — bf16 where the GPU supports it, else fp16 with a
  GradScaler in training.
* CPU with native bf16 matrix units (AMX ``amx_bf16`` or ``avx512_bf16`` in /proc/cpuinfo):
  bf16 autocast + channels-last (about 3x fp32 eager for ResNet18 on such CPUs).
* anything else: fp32.

The environment variable ``CXR_CAD_PRECISION`` (``fp32``, ``bf16`` or ``fp16``) replaces
``auto`` for every run of the process: ``CXR_CAD_PRECISION=fp32`` makes a machine with
native bf16 compute as one without, ``=bf16`` the reverse (bf16 autocast runs on any x86
CPU, slowly). A precision set explicitly (``--precision``) wins over it.

The choice is recorded (``RuntimeInfo.to_dict``) in every run folder.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch

from cxr_cad.config.choices import PRECISIONS
from cxr_cad.errors import ConfigError

log = logging.getLogger(__name__)

#: Environment variable that replaces ``precision: auto`` (see the module docstring).
PRECISION_ENV = "CXR_CAD_PRECISION"


def precision_override() -> str | None:
    """The precision ``CXR_CAD_PRECISION`` asks for (None when unset or empty).

    Raises ConfigError naming the variable for any other value than fp32, bf16 or fp16."""
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if not value:
        return None
    allowed = tuple(p for p in PRECISIONS if p != "auto")
    if value not in allowed:
        raise ConfigError(f"{PRECISION_ENV}={value!r}: must be one of {', '.join(allowed)} (or unset)")
    return value


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has AMX-BF16 or AVX512-BF16 (Linux /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"amx_bf16", "avx512_bf16"} & flags)
    except OSError:
        pass
    return False


@dataclass(frozen=True)
class RuntimeInfo:
    """The resolved execution settings of a run."""

    device: str  # "cpu", "cuda", "cuda:1"
    precision: str  # "fp32" | "bf16" | "fp16"
    channels_last: bool
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["torch_num_threads"] = torch.get_num_threads()
        d["cpu_native_bf16"] = cpu_has_native_bf16()
        if self.device.startswith("cuda") and torch.cuda.is_available():
            d["cuda_device_name"] = torch.cuda.get_device_name(self.torch_device)
        if precision_override() is not None:
            d["precision_env"] = f"{PRECISION_ENV}={precision_override()}"
        return d


def resolve_runtime(device: str = "auto", precision: str = "auto") -> RuntimeInfo:
    """Resolve ``device`` ("auto"/"cpu"/"cuda"/"cuda:N") and ``precision`` into a RuntimeInfo
    (``auto`` precision: ``CXR_CAD_PRECISION`` when set, else the policy of the module docstring).

    Under torchrun (``WORLD_SIZE`` > 1) each rank takes ``cuda:LOCAL_RANK`` when CUDA is used.
    Raises ConfigError for an unknown precision or device, or an unavailable CUDA device.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
        if device == "cuda":
            device = f"cuda:{local_rank if world_size > 1 else torch.cuda.current_device()}"
    elif device != "cpu":
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")

    if precision == "auto":
        precision = precision_override() or "auto"
    if precision == "auto":
        if device.startswith("cuda"):
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ConfigError("fp16 autocast is for CUDA; on CPU use bf16 or fp32")
    channels_last = precision != "fp32" or device.startswith("cuda")
    return RuntimeInfo(
        device=device,
        precision=precision,
        channels_last=channels_last,
        world_size=world_size,
        rank=rank,
        local_rank=local_rank,
    )


def autocast(info: RuntimeInfo):
    """The autocast context for ``info`` (a no-op context for fp32)."""
    dtype = info.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=info.torch_device.type, dtype=dtype)


def prepare_model(model: torch.nn.Module, info: RuntimeInfo) -> torch.nn.Module:
    """Move ``model`` to the device and memory format of ``info`` (in place; returned)."""
    model.to(info.torch_device)
    if info.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # documented; not in torch's stubs
    return model


def to_device(batch: torch.Tensor, info: RuntimeInfo) -> torch.Tensor:
    """Move an image batch (N, C, H, W) to the device, channels-last when the model is."""
    batch = batch.to(info.torch_device, non_blocking=True)
    if info.channels_last and batch.dim() == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (training entry points only; transforms own their RNGs)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def init_distributed(info: RuntimeInfo) -> bool:
    """Initialise the default process group under torchrun (gloo on CPU, NCCL on CUDA).

    Returns True when a group was created here (the caller then calls :func:`cleanup_distributed`).
    """
    import torch.distributed as dist

    if not info.distributed or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if info.device.startswith("cuda") else "gloo"
    if info.device.startswith("cuda"):
        torch.cuda.set_device(info.torch_device)
    dist.init_process_group(backend=backend)
    log.info("distributed: rank %d of %d (%s)", info.rank, info.world_size, backend)
    return True


def cleanup_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: RuntimeInfo) -> None:
    import torch.distributed as dist

    if info.distributed and dist.is_available() and dist.is_initialized():
        dist.barrier()

"""The on-disk cache of ``predict --backend auto`` (:mod:`cxr_cad.inference.backend`): where it is
(:func:`cache_root`) and the folder of one machine and bundle (:func:`cache_folder`, a hash of
:func:`cache_key`: bundle SHA-256, device, torch thread count, software versions, CPU model and
flags)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from cxr_cad import runtime
from cxr_cad.core.provenance import software_versions

__all__ = ["CACHE_ENV", "CACHE_PACKAGES", "cache_folder", "cache_key", "cache_root", "cpu_identity"]

CACHE_ENV = "CXR_CAD_BACKEND_CACHE"
CACHE_PACKAGES = ("torch", "onnxruntime", "openvino", "cxr_cad")


def cache_root() -> Path:
    """``$CXR_CAD_BACKEND_CACHE``, else the user cache folder's ``cxr_cad/backends``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cxr_cad" / "backends"


def cpu_identity() -> dict[str, str]:
    """CPU model name and flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    info = {"model": "", "flags": ""}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not info["model"]:
                    info["model"] = value.strip()
                elif key == "flags" and not info["flags"]:
                    info["flags"] = " ".join(sorted(value.split()))
    except OSError:
        pass
    return info


def cache_key(bundle_sha256: str, info: runtime.RuntimeInfo) -> dict[str, Any]:
    """What a cached choice depends on (its folder name is a hash of this)."""
    return {
        "bundle_sha256": bundle_sha256,
        "device": info.device,
        "cuda_device": torch.cuda.get_device_name(info.torch_device) if info.device.startswith("cuda") else "",
        "threads": torch.get_num_threads(),
        "versions": software_versions(CACHE_PACKAGES),
        "cpu": cpu_identity(),
    }


def cache_folder(bundle_sha256: str, info: runtime.RuntimeInfo) -> Path:
    key = json.dumps(cache_key(bundle_sha256, info), sort_keys=True)
    return cache_root() / f"{bundle_sha256[:16]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

"""Input checks, the undefined-metric warning and small shared helpers (no I/O)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from cxr_cad.errors import ConfigError


class UndefinedMetricWarning(UserWarning):
    """A statistic is undefined for these data (one class only, empty group, zero denominator).

    The function that warns returns NaN for that statistic; it never invents a value.
    """


def warn_undefined(message: str, *, stacklevel: int = 3) -> None:
    """Emit :class:`UndefinedMetricWarning` with ``message``."""
    warnings.warn(message, UndefinedMetricWarning, stacklevel=stacklevel)


def warn_one_class(name: str, y: np.ndarray, undefined: str) -> tuple[int, int, bool]:
    """Count the classes of 0/1 labels ``y``; warn when one is missing.

    Returns ``(n_pos, n_neg, missing)``; with ``missing`` True an :class:`UndefinedMetricWarning`
    ``"<name>: needs both classes, got ... cases; <undefined>"`` was emitted, pointing at the
    caller of ``name``.
    """
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    missing = n_pos == 0 or n_neg == 0
    if missing:
        warn_undefined(
            f"{name}: needs both classes, got {n_pos} positive and {n_neg} negative cases; {undefined}", stacklevel=4
        )
    return n_pos, n_neg, missing


def check_binary(
    y_true: Any, y_score: Any, *, name: str = "y_score", probabilities: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``y_true`` (0/1 or bool) and a score array of the same length.

    Returns ``(y_true as int8 array, score as float64 array)``.
    Raises ``ValueError`` for other labels, mismatched lengths, non-finite scores or (with
    ``probabilities=True``) scores outside [0, 1].
    """
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"y_true and {name} must be 1-D arrays; got shapes {y.shape} and {s.shape}")
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} values but {name} has {s.shape[0]}")
    if y.dtype == bool:
        y = y.astype(np.int8)
    elif y.size:
        if y.dtype.kind not in "iuf":
            raise ValueError(
                f"y_true must hold 0/1 (1 = positive class); got dtype {y.dtype}. "
                "Map class names to 0/1 with the configured positive_class first."
            )
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            raise ValueError(
                f"y_true must hold only 0 and 1 (1 = positive class); found {np.unique(y[bad])[:5].tolist()}"
            )
        y = y.astype(np.int8)
    else:
        y = y.astype(np.int8)
    if s.size and not np.isfinite(s).all():
        raise ValueError(
            f"{name} has {int((~np.isfinite(s)).sum())} non-finite values (NaN/inf); score or drop those images first"
        )
    if probabilities and s.size and (s.min() < 0 or s.max() > 1):
        raise ValueError(f"{name} must be probabilities in [0, 1]; found range [{s.min():.4g}, {s.max():.4g}]")
    return y, s


def check_alpha(alpha: float) -> float:
    """``alpha`` must lie in (0, 1); returns it as float. Raises ``ConfigError`` (a setting)."""
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), e.g. 0.05 for a 95% interval; got {alpha}")
    return alpha


def jsonable(obj: Any) -> Any:
    """Recursively turn metric results into JSON-safe Python objects.

    Dataclasses with ``to_dict`` are expanded, numpy scalars/arrays become Python
    numbers/lists, and NaN/inf become ``None`` (strict JSON has no NaN).
    """
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return jsonable(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj

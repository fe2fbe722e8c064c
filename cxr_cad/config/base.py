"""The base of every typed configuration object (pydantic v2).

Every options object a user can write (``TrainConfig`` and its sections, ``TransformSpec``,
``PredictOptions``, ``ReportOptions``, workflow files) derives from :class:`StrictModel`:
frozen, unknown fields forbidden, and every validation problem reported at once, each with
its location (``optim.lr: ...``), as one :class:`~cxr_cad.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from cxr_cad.errors import ConfigError

__all__ = ["StrictModel", "validation_problems", "parse_model"]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Frozen, extra fields forbidden; construct with :func:`parse_model` to get a ConfigError."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


def _location(loc: tuple[int | str, ...], prefix: str) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]" if parts else f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts)


def validation_problems(exc: ValidationError, *, prefix: str = "") -> list[str]:
    """One human sentence per pydantic error: ``"optim.lr: Input should be greater than 0 (got -1)"``."""
    out = []
    for err in exc.errors(include_url=False):
        where = _location(tuple(err.get("loc", ())), prefix) or "(top level)"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        got = err.get("input")
        shown = "" if err.get("type") in ("extra_forbidden", "missing") else f" (got {got!r})"
        out.append(f"{where}: {msg}{shown}"[:300])
    return out


def parse_model(
    cls: type[M], data: Mapping[str, Any] | None = None, *, source: str | None = None, prefix: str = ""
) -> M:
    """``cls.model_validate(data)``, with every problem raised together as a ConfigError."""
    try:
        return cls.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, prefix=prefix), source=source) from None

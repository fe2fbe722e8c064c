"""The base of every typed configuration object (pydantic v2).

Every options object a user can write (``TrainConfig`` and its sections, ``TransformSpec``,
``PredictOptions``, ``ReportOptions``, workflow files) derives from :class:`StrictModel`:
frozen, unknown fields forbidden, and every validation problem reported at once, each with
its location (``optim.lr: ...``), as one :class:`~cxr_cad.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from cxr_cad.errors import ConfigError

__all__ = ["StrictModel", "validation_problems", "parse_model", "plain"]

M = TypeVar("M", bound=BaseModel)


#: True while pydantic validates (nested models are built by calling their ``__init__``).
_INSIDE_VALIDATION: ContextVar[bool] = ContextVar("cxr_cad_inside_validation", default=False)


def plain(value: Any) -> Any:
    """``value`` with models as dicts, tuples as lists and mappings as dicts, recursively (YAML/JSON-ready)."""
    if isinstance(value, StrictModel):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class StrictModel(BaseModel):
    """A frozen options model, unknown fields forbidden.

    ``Model(a=1)``, :meth:`replace` and :func:`parse_model` all raise one
    :class:`~cxr_cad.errors.ConfigError` listing every problem with its location (a bad value the
    user chose is never pydantic's ``ValidationError`` or a bare ``ValueError``). ``error_source``
    names the object in that error; ``error_prefix`` starts every location (``"predict"``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
    error_source: ClassVar[str | None] = None
    error_prefix: ClassVar[str] = ""

    def __init__(self, /, **data: Any) -> None:
        if _INSIDE_VALIDATION.get():  # a nested section: pydantic collects its errors with their location
            super().__init__(**data)
            return
        token = _INSIDE_VALIDATION.set(True)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(validation_problems(exc, prefix=self.error_prefix), source=self.error_source) from None
        finally:
            _INSIDE_VALIDATION.reset(token)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """pydantic's, raising ValidationError (:func:`parse_model` turns it into a ConfigError
        with the source and location prefix)."""
        token = _INSIDE_VALIDATION.set(True)
        try:
            return super().model_validate(obj, **kwargs)
        finally:
            _INSIDE_VALIDATION.reset(token)

    def to_dict(self) -> dict[str, Any]:
        """Plain types (str/int/float/bool/None/list/dict; tuples as lists), in field order."""
        return {name: plain(getattr(self, name)) for name in type(self).model_fields}

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated (``dataclasses.replace`` for models).

        Raises:
            ConfigError: a changed value is invalid (every problem listed).
        """
        data = {name: getattr(self, name) for name in type(self).model_fields}
        try:
            return type(self).model_validate({**data, **changes})
        except ValidationError as exc:
            raise ConfigError(validation_problems(exc, prefix=self.error_prefix), source=self.error_source) from None


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

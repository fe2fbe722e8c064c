"""What every options model shares: :class:`ConfigModel` and the value types of YAML/CLI settings.

A setting arrives as YAML (``1e-3`` is a string in YAML 1.1), as a command-line string
(``"0.01"``, ``"none"``, ``"NORMAL,PNEUMONIA"``, ``"[0.5, 99.5]"``) or as a Python value. The
annotated types below turn each of those into the declared type, and refuse what the
hand-written checks refused before (a ``true`` where a number belongs). Validation itself is
pydantic's; :func:`cxr_cad.config.base.parse_model` reports every problem with its location.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Annotated, Any, ClassVar, Self

from pydantic import BeforeValidator, ConfigDict, Field, Strict, ValidationError
from pydantic_core import PydanticCustomError

from cxr_cad.config.base import StrictModel, validation_problems
from cxr_cad.errors import ConfigError

__all__ = [
    "ConfigModel",
    "problem",
    "plain",
    "section_default",
    "Int",
    "Float",
    "Number",
    "OptInt",
    "OptStr",
    "StrictBool",
    "StrTuple",
    "FloatTuple",
    "NumberPair",
]


def problem(message: str) -> PydanticCustomError:
    """A validation error whose text is ``message`` (raise it inside a validator)."""
    return PydanticCustomError("cxr_config", "{message}", {"message": message})


def section_default(cls: type[ConfigModel]) -> Any:
    """``Field(default_factory=cls)``: a section whose every option takes its default."""
    return Field(default_factory=cls)


def plain(value: Any) -> Any:
    """``value`` with tuples turned into lists and mappings into dicts, recursively (YAML/JSON-ready)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


#: True while pydantic validates (nested models are built by calling their ``__init__``).
_INSIDE_VALIDATION: ContextVar[bool] = ContextVar("cxr_cad_inside_validation", default=False)


class ConfigModel(StrictModel):
    """A frozen options model: direct construction raises ConfigError too; dict round trip.

    ``Model(a=1)`` and :func:`~cxr_cad.config.base.parse_model` both list every problem in
    one :class:`~cxr_cad.errors.ConfigError` (a bad value the user chose is never a bare
    ``ValueError``). ``error_source`` names the object in that error.
    """

    model_config = ConfigDict(coerce_numbers_to_str=True)
    error_source: ClassVar[str | None] = None

    def __init__(self, /, **data: Any) -> None:
        if _INSIDE_VALIDATION.get():  # a nested section: pydantic collects its errors with their location
            super().__init__(**data)
            return
        token = _INSIDE_VALIDATION.set(True)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(validation_problems(exc), source=self.error_source) from None
        finally:
            _INSIDE_VALIDATION.reset(token)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """pydantic's, raising ValidationError (:func:`~cxr_cad.config.base.parse_model` turns
        it into a ConfigError with the source and location prefix)."""
        token = _INSIDE_VALIDATION.set(True)
        try:
            return super().model_validate(obj, **kwargs)
        finally:
            _INSIDE_VALIDATION.reset(token)

    def to_dict(self) -> dict[str, Any]:
        """Plain types (str/int/float/bool/None/list/dict; tuples as lists), in field order."""
        return {name: plain(_dump(getattr(self, name))) for name in type(self).model_fields}

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated (``dataclasses.replace`` for models).

        Raises:
            ConfigError: a changed value is invalid (every problem listed).
        """
        data = {name: getattr(self, name) for name in type(self).model_fields}
        try:
            return type(self).model_validate({**data, **changes})
        except ValidationError as exc:
            raise ConfigError(validation_problems(exc), source=self.error_source) from None


def _dump(value: Any) -> Any:
    return value.to_dict() if isinstance(value, ConfigModel) else value


def _not_bool(kind: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise problem(f"must be {kind}, not true/false")
        return value

    return BeforeValidator(check)


def _none_words(value: Any) -> Any:
    """``"none"``/``"null"`` (any case) mean None for an optional setting given as text."""
    if isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    return value


def _split_list(value: Any) -> Any:
    """``"a,b"`` or ``"[a, b]"`` (command-line text) -> ``["a", "b"]``."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        return [v.strip() for v in text.split(",") if v.strip()]
    return value


def _numbers_only(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise problem("must be a number")
    return value


#: A whole number (``"3"`` and ``3.0`` accepted, ``true`` refused).
Int = Annotated[int, _not_bool("a whole number")]
#: A number (``"1e-3"`` accepted, ``true`` refused).
Float = Annotated[float, _not_bool("a number")]
#: A number given as a number (no text, no true/false): augmentation settings.
Number = Annotated[float, BeforeValidator(_numbers_only)]
OptInt = Annotated[Int | None, BeforeValidator(_none_words)]
OptStr = Annotated[str | None, BeforeValidator(_none_words)]
#: true/false only (no ``"yes"``, no 1).
StrictBool = Annotated[bool, Strict()]
StrTuple = Annotated[tuple[str, ...], BeforeValidator(_split_list)]
FloatTuple = Annotated[tuple[Float, ...], BeforeValidator(_split_list)]
#: (low, high) numbers.
NumberPair = Annotated[tuple[Float, Float], BeforeValidator(_split_list)]

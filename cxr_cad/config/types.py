"""What every options model shares: :class:`ConfigModel` and the value types of YAML/CLI settings.

A setting arrives as YAML (``1e-3`` is a string in YAML 1.1), as a command-line string
(``"0.01"``, ``"none"``, ``"NORMAL,PNEUMONIA"``, ``"[0.5, 99.5]"``) or as a Python value. The
annotated types below turn each of those into the declared type, and refuse what the
hand-written checks refused before (a ``true`` where a number belongs). Validation itself is
pydantic's; :func:`cxr_cad.config.base.parse_model` reports every problem with its location.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, Strict
from pydantic_core import PydanticCustomError

from cxr_cad.config.base import StrictModel, plain

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
    "Channels",
    "PercentilePair",
]


def problem(message: str) -> PydanticCustomError:
    """A validation error whose text is ``message`` (raise it inside a validator)."""
    return PydanticCustomError("cxr_config", "{message}", {"message": message})


def section_default(cls: type[ConfigModel]) -> Any:
    """``Field(default_factory=cls)``: a section whose every option takes its default."""
    return Field(default_factory=cls)


class ConfigModel(StrictModel):
    """A settings model of a config/workflow file: :class:`~cxr_cad.config.base.StrictModel`
    (ConfigError on construction, ``to_dict``, ``replace``) whose numbers given as text are
    coerced like YAML values."""

    model_config = ConfigDict(coerce_numbers_to_str=True)


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


def _percentile_pair(lo_hi: tuple[float, ...]) -> tuple[float, ...]:
    if len(lo_hi) != 2 or not 0.0 <= lo_hi[0] < lo_hi[1] <= 100.0:
        raise problem("must be [lower, upper] with 0 <= lower < upper <= 100")
    return lo_hi


def _channels(n: int) -> int:
    if n not in (1, 3):
        raise problem("must be 1 or 3")
    return n


#: Input channels of the network: 1 (gray) or 3 (gray replicated to RGB).
Channels = Annotated[Int, AfterValidator(_channels), Field(json_schema_extra={"enum": [1, 3]})]

#: Intensity percentiles ``(lower, upper)`` in [0, 100] (``model.intensity_percentiles``, the transform spec's).
PercentilePair = Annotated[FloatTuple, AfterValidator(_percentile_pair)]

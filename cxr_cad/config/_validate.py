"""Validation machinery shared by the config sections: problem collection, the
validate-on-construction mixin, and YAML/CLI value coercion to the annotated types.

Every check appends a human sentence to a problem list; nothing raises until all problems
of a section are known, then :class:`~cxr_cad.errors.ConfigError` lists them together.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from cxr_cad.errors import ConfigError


def _check(problems: list[str], ok: bool, msg: str) -> None:
    if not ok:
        problems.append(msg)


class _Section:
    """Mixin: validation on construction, dict round trip."""

    def problems(self) -> list[str]:  # overridden
        return []

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, _Section):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Mapping):
                v = dict(v)
            out[f.name] = v
        return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Convert a YAML/CLI value to the annotated type. Returns (ok, value)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return (type(None) in args), None
        for arg in args:
            if arg is type(None):
                continue
            ok, conv = _coerce(value, arg)
            if ok:
                return True, conv
        return False, value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(tp)
        item_tp = args[0]
        out = []
        for v in value:
            ok, conv = _coerce(v, item_tp)
            if not ok:
                return False, value
            out.append(conv)
        return True, tuple(out)
    if tp is bool:
        if isinstance(value, bool):
            return True, value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return True, value.lower() in ("true", "yes", "1")
        return False, value
    if tp is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, str):
            try:
                return True, int(value)
            except ValueError:
                return False, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return True, str(value)
        return False, value
    return True, value


def _build(cls: type, d: Mapping[str, Any], *, prefix: str) -> tuple[Any, list[str]]:
    hints = typing.get_type_hints(cls)
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key not in hints:
            problems.append(f"unknown option {prefix}{key} (known: {', '.join(sorted(hints))})")
            continue
        ok, conv = _coerce(value, hints[key])
        if ok:
            kwargs[key] = conv
        else:
            problems.append(f"{prefix}{key} must be {_type_name(hints[key])}, not {value!r}")
    try:
        obj = cls(**kwargs)
    except ConfigError as exc:
        return None, problems + exc.problems
    return obj, problems

"""Did you mean: :func:`suggest_keys` adds the closest valid key to each "unknown key" problem of
a workflow file (or of a ``--config`` file, given its model), or names the section the key
belongs in (``train.image_size`` -> ``model.image_size``)."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from cxr_cad.config import TrainConfig
from cxr_cad.workflow.sections import WorkflowFile

__all__ = ["suggest_keys"]

_UNKNOWN_KEY = re.compile(r"^(?P<loc>[A-Za-z0-9_.\[\]-]+): unknown key \(check the spelling\)$")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (through Optional/Annotated), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _keys_at(root: Mapping[str, type[BaseModel] | None], parts: Sequence[str]) -> list[str]:
    """The valid keys of the mapping at ``parts`` below ``root`` ({key: model or None})."""
    fields: Mapping[str, Any] = root
    for part in parts:
        model = fields.get(part)
        if model is None:
            return []
        fields = {name: _model_of(f.annotation) for name, f in model.model_fields.items()}
    return list(fields)


def _root_of(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    return {name: _model_of(f.annotation) for name, f in model.model_fields.items()}


def _workflow_root() -> dict[str, type[BaseModel] | None]:
    root = _root_of(WorkflowFile)
    root["train"] = TrainConfig  # the train section is checked by TrainConfig
    return root


def suggest_keys(problems: Sequence[str], root: type[BaseModel] | None = None) -> list[str]:
    """``problems`` with the closest valid key added to each "unknown key" problem.

    ``root``: the model the locations start from (e.g. :class:`~cxr_cad.config.TrainConfig` for
    a ``--config`` file); None = a workflow file. A key that is not close to any key of its
    section but is a key of another section is pointed there (``train.image_size`` -> ``model.image_size``).
    """
    tree = _workflow_root() if root is None else _root_of(root)
    out = []
    for problem in problems:
        m = _UNKNOWN_KEY.match(problem)
        if not m:
            out.append(problem)
            continue
        parts = m.group("loc").split(".")
        section, key = parts[:-1], parts[-1]
        elsewhere = [name for name, model in tree.items() if model is not None and key in _keys_at(tree, [name])]
        close = difflib.get_close_matches(key, _keys_at(tree, section), n=1, cutoff=0.6)
        if elsewhere and len(section) == 1:  # a key of another section: model.image_size given as train.image_size
            problem += f"; {key} belongs in the {elsewhere[0]} section: did you mean {elsewhere[0]}.{key}?"
        elif close:
            problem += f"; did you mean {'.'.join([*section, close[0]])}?"
        out.append(problem)
    return out

"""What a workflow file is changed by before it is validated: ``${ENV}`` references
(:func:`expand_env`) and ``--set KEY=VALUE`` items (:func:`parse_set`, :func:`apply_sets`)."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cxr_cad.core.yamlfile import load_yaml_text
from cxr_cad.errors import ConfigError

__all__ = ["apply_sets", "expand_env", "parse_set"]

_YAML11_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of a nested structure.

    An unset variable without a default becomes ``""``; a string that was only such a
    reference becomes ``None`` (= not given)."""
    env = os.environ if environ is None else environ
    if isinstance(value, str):
        whole = _ENV_RE.fullmatch(value.strip())
        out = _ENV_RE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
        if whole and out == "":
            return None
        return out
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    return value


def parse_set(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``["train.epochs=3", "data.train=/x"]`` -> ``[("train.epochs", 3), ("data.train", "/x")]``.

    Values are read as YAML (``3`` is an int, ``true`` a bool, ``[a, b]`` a list,
    ``null`` None). Raises ConfigError listing every malformed item."""
    out, problems = [], []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.epochs=3")
            continue
        try:
            value = load_yaml_text(text, "command line") if text.strip() else None
        except ConfigError as exc:  # not YAML, or an alias bomb (cxr_cad.core.yamlfile limits)
            problems.append(f"--set {item!r}: value is not valid YAML or too large ({exc.problems[0]})")
            continue
        if isinstance(value, str) and _YAML11_FLOAT_RE.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" as text; a user means the number
        out.append((key, value))
    if problems:
        raise ConfigError(problems, "command line")
    return out


def apply_sets(doc: dict, sets: Sequence[tuple[str, Any]]) -> dict:
    """Return a deep copy of ``doc`` with dotted-key values set (intermediate mappings created)."""
    out = copy.deepcopy(doc)
    for key, value in sets:
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out
